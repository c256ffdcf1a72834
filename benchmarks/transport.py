"""CPU cost of moving one snapshot shard to an agent: the shard data plane vs gRPC streaming.

Both run in this one process against a real agent shard store on 127.0.0.1 (a ShardDataServer
and a gRPC AgentServicer over the same ShardStore), so the CPU figure (getrusage of the process)
counts sender and receiver together. Puts alternate between the transports, `--rounds` times.

Run: python benchmarks/transport.py [--size-mib 10] [--puts 20] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np

from ftrain.agent.dataplane import ShardDataServer
from ftrain.agent.store import AgentServicer, ShardStore
from ftrain.proto.ftrain.v1 import agent_pb2_grpc
from ftrain.rpc import bind, make_server
from ftrain.snapshot.erasure import shard_checksum
from ftrain.snapshot.transfer import AgentPool

TOKEN, JOB = "bench-token", "bench-transport"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(pool: AgentPool, address: str, store: ShardStore, data: np.ndarray, crc: int, puts: int,
            first_step: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per put; the store drops old shards as an agent does after commits."""
    pool.put_shard(address, "warm", 0, first_step, data, crc)
    cpu, wall = cpu_seconds(), time.perf_counter()
    for i in range(puts):
        step = first_step + 1 + i
        pool.put_shard(address, f"s{step}", 0, step, data, crc)
        store.drop_older_than(step - 1)
    return (cpu_seconds() - cpu) / puts * 1e3, (time.perf_counter() - wall) / puts * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=float, default=10.0)
    parser.add_argument("--puts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    store = ShardStore()
    data_server = ShardDataServer(store, TOKEN, lambda: JOB).start()
    server = make_server(TOKEN)
    agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(store, JOB, ["bench"], data_server.address), server)
    address = f"127.0.0.1:{bind(server, '127.0.0.1', 0)}"
    server.start()
    data = np.random.default_rng(0).integers(0, 256, int(args.size_mib * 2**20), dtype=np.uint8)
    crc = shard_checksum(data)
    results: dict[str, list[tuple[float, float]]] = {"data plane (tcp)": [], "gRPC streams": []}
    step = 0
    try:
        for _ in range(args.rounds):
            for label, transport in (("data plane (tcp)", "tcp"), ("gRPC streams", "grpc")):
                os.environ["FTRAIN_SHARD_TRANSPORT"] = transport
                pool = AgentPool(TOKEN, JOB)
                results[label].append(measure(pool, address, store, data, crc, args.puts, step))
                step += args.puts + 1
                pool.close()
    finally:
        os.environ.pop("FTRAIN_SHARD_TRANSPORT", None)
        server.stop(0)
        data_server.stop()
    base = statistics.median(c for c, _ in results["data plane (tcp)"])
    print(f"one {args.size_mib:g} MiB shard put to an agent on 127.0.0.1, sender + receiver CPU, "
          f"median of {args.rounds} rounds x {args.puts} puts")
    print(f"{'transport':20}{'CPU ms':>9}{'wall ms':>9}{'CPU ratio':>11}")
    for label, values in results.items():
        cpu = statistics.median(c for c, _ in values)
        wall = statistics.median(w for _, w in values)
        print(f"{label:20}{cpu:>9.2f}{wall:>9.2f}{cpu / base:>10.2f}x")


if __name__ == "__main__":
    main()
