"""The coordinator under load: N simulated agents (nproc=1) against one real coordinator.

A real `ftrain.coordinator.server.Coordinator` runs in a process of its own on 127.0.0.1 (as
`ftrain launch` embeds it: TCPStore, gRPC server, ticker). A few worker processes simulate the
agents with grpc.aio, each agent as the real ones talk:
  - RegisterAgent (nproc=1), then a Heartbeat every second (node_id, one TrainerInfo, shard_bytes);
  - its trainer JoinGeneration's (the real client's 20 s long-poll, repeated on "wait"), then
    every second (1 step/s) sends a pulse ReportProgress and a ReportSnapshot of that step (a
    small BlobInfo, a compute time, wait_commit_s=0); an ack that is refused or names a newer
    generation, or a heartbeat reply naming one, sends it back to JoinGeneration.
Figures per N: heartbeat RPC latency p50/p99 (client side, measured by one more, quiet process
simulating --probe-agents of the N agents, so a saturated load generator does not count; the
load workers' own figures are printed too) next to a baseline measured by that process at the
same time under the same load (the gRPC health Check served by the same server: the cost of
ftrain's own work per heartbeat is the ratio); the coordinator process's CPU (from /proc); the
time generation 0 takes to form after the last agent registered; and after one agent stops
(heartbeats, pulses, steps), the time from the coordinator's `failure` event to the next
`generation` event (replace_timeout_s=0: the job shrinks at once), with the part the survivors
need to learn of it (their heartbeat or snapshot replies) shown apart.

Every process started here dies with this one (PR_SET_PDEATHSIG) and is terminated in a
`finally`, also on Ctrl-C or SIGTERM.

Run: python benchmarks/coordinator_load.py --agents 1000 5000 10000 --seconds 20
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOKEN = "coordinator-load-token"
JOB = "load"


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))]


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (and its reaped children), seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")


# -- the coordinator process -------------------------------------------------------------------
def coordinator_main(n: int, heartbeat_timeout: float, events_path: str, conn: Any, switch_interval: float,
                     timing_path: str) -> None:
    from ftrain.agent.agent import die_with_parent
    die_with_parent()
    if switch_interval > 0:  # an experiment: the interpreter's GIL switch interval in the coordinator process
        sys.setswitchinterval(switch_interval)
    from ftrain.config import JobSettings
    from ftrain.coordinator import server as server_mod
    from ftrain.coordinator.server import Coordinator

    timings: list[tuple[float, float, float]] = []  # (wall time, waited for the lock, whole handler) of heartbeats
    if timing_path:  # a diagnostic: where a heartbeat's time goes inside the coordinator
        original = server_mod.CoordinatorServicer.Heartbeat

        def timed(self: Any, request: Any, context: Any) -> Any:
            t0 = time.perf_counter()
            with self.s.cond:
                t1 = time.perf_counter()
                reply = original(self, request, context)
            timings.append((time.time(), t1 - t0, time.perf_counter() - t0))
            return reply

        server_mod.CoordinatorServicer.Heartbeat = timed  # type: ignore[method-assign]

    settings = JobSettings(job_id=JOB, target_nodes=n, min_nodes=1, replace_timeout_s=0.0,
                           heartbeat_dead_after_s=heartbeat_timeout)
    coordinator = Coordinator(settings, TOKEN, host="127.0.0.1", port=0)
    coordinator.state.open_events_file(events_path)
    coordinator.start()
    conn.send(coordinator.port)
    try:
        conn.recv()  # the parent says stop (or goes away: EOF)
    except EOFError:
        pass
    coordinator.stop(0.5)
    if timing_path:
        with open(timing_path, "w") as f:
            json.dump(timings, f)


# -- a worker process: many simulated agents -------------------------------------------------------
class Worker:
    def __init__(self, wid: int, agents: list[int], port: int, args: argparse.Namespace, ctl: dict[str, Any],
                 victim: int | None) -> None:
        self.wid, self.agents, self.port, self.args, self.ctl, self.victim = wid, agents, port, args, ctl, victim
        self.hb: list[tuple[float, float]] = []      # (wall time, latency s) of every heartbeat
        self.health: list[tuple[float, float]] = []  # the baseline: health Check
        self.noop: list[tuple[float, float]] = []    # an ftrain RPC that does nothing: ClaimFault of no fault
        self.unknown_hb: list[tuple[float, float]] = []  # a heartbeat of an unknown node
        self.registered: list[float] = []
        self.rejoin_sent: list[float] = []   # wall time a trainer (re-)joined after its generation moved
        self.joined: dict[int, list[float]] = {}  # generation -> wall times trainers got their assignment
        self.errors: dict[str, int] = {}
        self.rpcs = 0
        self.generation_seen: dict[int, int] = {}
        self.wakeups: dict[int, asyncio.Future[None]] = {}
        self.steps: dict[int, int] = {}  # agent -> its trainer's step (the heartbeat's last_step)
        self.protocol = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def stopping(self) -> bool:
        return self.ctl["stop"].is_set()

    def frozen(self, i: int) -> bool:
        return i == self.victim and self.ctl["freeze"].is_set()

    async def call(self, method: Any, request: Any, timeout: float) -> Any:
        import grpc
        while not self.stopping():
            try:
                self.rpcs += 1
                return await method(request, timeout=timeout, metadata=self.meta)
            except grpc.aio.AioRpcError as error:
                self.error(f"{method._method.decode().rsplit('/', 1)[-1]}:{error.code().name}")
                await asyncio.sleep(0.5 + random.random())
        return None

    async def run(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
        from ftrain.proto.ftrain.v1 import coordinator_pb2_grpc
        from ftrain.rpc import token_metadata

        self.pb = pb
        self.meta = token_metadata(TOKEN)
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=options + [("grpc.channel_id", c)])
                    for c in range(self.args.channels)]
        self.stubs = [coordinator_pb2_grpc.CoordinatorStub(ch) for ch in channels]
        health_stub = health_pb2_grpc.HealthStub(channels[0])
        self.register_slots = asyncio.Semaphore(self.args.register_concurrency)
        tasks = [asyncio.create_task(self.agent(k, i)) for k, i in enumerate(self.agents)]

        async def baseline() -> None:
            period = 1.0 / self.args.health_hz
            request = health_pb2.HealthCheckRequest(service="")
            claim = pb.FaultClaim(trainer_uid="probe", fault="none", rank=0, step=0)  # refused at once
            stub = self.stubs[0]
            turn = 0
            while not self.stopping():
                turn += 1
                t0 = time.perf_counter()
                try:
                    if turn % 3 == 2:  # a heartbeat of a node the coordinator does not know (answered at once)
                        await stub.Heartbeat(pb.HeartbeatRequest(node_id="probe-unknown"), timeout=30.0,
                                             metadata=self.meta)
                        self.unknown_hb.append((time.time(), time.perf_counter() - t0))
                    elif turn % 3:  # the gRPC health check: the baseline
                        await health_stub.Check(request, timeout=30.0)
                        self.health.append((time.time(), time.perf_counter() - t0))
                    else:  # an ftrain RPC that does nothing (an unknown fault's claim: token check, lock, refusal)
                        await stub.ClaimFault(claim, timeout=30.0, metadata=self.meta)
                        self.noop.append((time.time(), time.perf_counter() - t0))
                except grpc.aio.AioRpcError as error:
                    self.error(f"probe:{error.code().name}")
                await asyncio.sleep(max(0.0, period - (time.perf_counter() - t0)))

        if self.wid == self.args.workers:  # the probe process: it alone measures the baseline
            tasks.append(asyncio.create_task(baseline()))
        while not self.stopping():
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close(grace=None)

    async def sleep_until(self, i: int, deadline: float) -> None:
        """Sleeps until `deadline` (loop time) or until the agent's heartbeat saw a new generation."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.wakeups[i] = future
        handle = loop.call_later(max(0.0, deadline - loop.time()), lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            handle.cancel()
            self.wakeups.pop(i, None)

    async def agent(self, k: int, i: int) -> None:
        pb = self.pb
        stub = self.stubs[k % len(self.stubs)]
        node = f"node{i}"
        async with self.register_slots:
            reply = await self.call(stub.RegisterAgent, pb.RegisterAgentRequest(
                job_id=JOB, node_id=node, address=f"127.0.0.1:{20000 + i % 40000}", nproc=1, hostname=node,
                protocol_version=self.protocol, slot=-1, generation=-1, ec_backend="isal"), timeout=60.0)
        if reply is None:
            return
        self.registered.append(time.time())
        self.generation_seen[i] = -1
        heartbeats = asyncio.create_task(self.heartbeats(stub, i, node))
        try:
            await self.trainer(stub, i, node)
        finally:
            heartbeats.cancel()

    async def heartbeats(self, stub: Any, i: int, node: str) -> None:
        pb = self.pb
        loop = asyncio.get_running_loop()
        due = loop.time() + random.random()
        info = pb.TrainerInfo(local_rank=0, pid=100000 + i, state=pb.TRAINER_STATE_RUNNING, last_step=0)
        while not self.stopping():
            await asyncio.sleep(max(0.0, due - loop.time()))
            if self.frozen(i):
                return
            info.last_step = self.steps.get(i, 0)
            t0 = time.perf_counter()
            reply = await self.call(stub.Heartbeat, pb.HeartbeatRequest(node_id=node, trainers=[info],
                                                                        shard_bytes=1 << 20), timeout=30.0)
            if reply is not None:
                self.hb.append((time.time(), time.perf_counter() - t0))
                if not reply.known and reply.job_state == pb.JOB_STATE_RUNNING:  # declared dead: the real agent re-registers
                    self.error("heartbeat:unknown-node")
                    await self.call(stub.RegisterAgent, pb.RegisterAgentRequest(
                        job_id=JOB, node_id=node, address=f"127.0.0.1:{20000 + i % 40000}", nproc=1, hostname=node,
                        protocol_version=self.protocol, slot=-1, generation=-1, ec_backend="isal"), timeout=60.0)
                if reply.generation > self.generation_seen.get(i, -1):
                    self.generation_seen[i] = reply.generation
                    future = self.wakeups.get(i)
                    if future is not None and not future.done():
                        future.set_result(None)
            due = max(due + 1.0, loop.time())

    async def trainer(self, stub: Any, i: int, node: str) -> None:
        pb = self.pb
        loop = asyncio.get_running_loop()
        uid = f"{node}/0/{100000 + i}"
        generation, step = -1, 0
        while not self.stopping():
            if generation >= 0:
                self.rejoin_sent.append(time.time())
            while True:  # the real client's loop: a 20 s long-poll, repeated on "wait"
                a = await self.call(stub.JoinGeneration, pb.JoinRequest(
                    trainer_uid=uid, node_id=node, local_rank=0, known_generation=generation, wait_s=20.0),
                    timeout=30.0)
                if a is None or a.status != pb.ASSIGNMENT_STATUS_WAIT:
                    break
            if a is None or a.status != pb.ASSIGNMENT_STATUS_OK:
                return
            self.joined.setdefault(a.generation, []).append(time.time())
            generation, rank, world = a.generation, a.rank, a.world_size
            step = max(a.restore_step, 0)
            due = loop.time() + random.random()
            while not self.stopping():
                await self.sleep_until(i, due)
                if self.frozen(i):
                    return
                if self.generation_seen.get(i, -1) > generation:
                    break  # the heartbeat reply named a newer generation
                if loop.time() < due:
                    continue
                step += 1
                self.steps[i] = step
                await self.call(stub.ReportProgress, pb.ProgressReport(
                    trainer_uid=uid, generation=generation, rank=rank, step=step, pulse=True), timeout=30.0)
                blob = pb.BlobInfo(blob_id=f"s{step}-r{rank}-g{generation}", step=step, producer_rank=rank,
                                   producer_world_size=world, producer_trainer=uid, producer_node=node, size=4096,
                                   k=1, m=1, shard_len=4096, generation=generation,
                                   shards=[pb.ShardLocation(index=0, node_id=node),
                                           pb.ShardLocation(index=1, node_id=f"node{(i + 1) % self.args.n}")])
                ack = await self.call(stub.ReportSnapshot, pb.SnapshotReport(
                    trainer_uid=uid, generation=generation, rank=rank, step=step, blob=blob, compute_time_s=0.01,
                    steps_covered=1, snapshot_duration_s=0.001, wait_commit_s=0.0), timeout=30.0)
                if ack is None or not ack.accepted or ack.current_generation != generation:
                    break
                due = max(due + 1.0, loop.time())


def worker_main(wid: int, agents: list[int], port: int, args: argparse.Namespace, ctl: dict[str, Any],
                victim: int | None, results: Any) -> None:
    from ftrain.agent.agent import die_with_parent
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    from ftrain.config import PROTOCOL_VERSION
    worker = Worker(wid, agents, port, args, ctl, victim)
    worker.protocol = PROTOCOL_VERSION

    async def main() -> None:
        runner = asyncio.create_task(worker.run())
        reported = False
        while not runner.done():
            await asyncio.sleep(0.2)
            if not reported and len(worker.registered) == len(agents):
                results.put(("registered", wid, max(worker.registered)))
                reported = True
        await runner

    asyncio.run(main())
    results.put(("done", wid, {"hb": worker.hb, "health": worker.health, "noop": worker.noop, "unknown_hb": worker.unknown_hb, "rejoin_sent": worker.rejoin_sent,
                               "joined": worker.joined, "errors": worker.errors, "rpcs": worker.rpcs,
                               "registered": len(worker.registered)}))


# -- the driver ------------------------------------------------------------------------------------
def read_events(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def wait_event(path: str, match: Any, timeout: float, after: float = 0.0) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in read_events(path):
            if event["time"] >= after and match(event):
                return event
        time.sleep(0.1)
    return None


def run_one(n: int, args: argparse.Namespace, processes: list[mp.process.BaseProcess]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    args.n = n
    workdir = tempfile.mkdtemp(prefix="ftrain-load-")
    events = os.path.join(workdir, "events.jsonl")
    parent_conn, child_conn = ctx.Pipe()
    coordinator = ctx.Process(target=coordinator_main, args=(n, args.heartbeat_timeout, events, child_conn,
                                                                 args.switch_interval,
                                                                 os.path.join(workdir, "timing.json") if args.server_timing else ""),
                              name="coordinator", daemon=True)
    coordinator.start()
    processes.append(coordinator)
    if not parent_conn.poll(60):
        raise RuntimeError("the coordinator did not start within 60 s")
    port = parent_conn.recv()
    assert coordinator.pid is not None
    ctl = {"stop": ctx.Event(), "freeze": ctx.Event()}
    results = ctx.Queue()
    ids = list(range(n))
    probe_ids = ids[n - min(args.probe_agents, n // 2):]  # simulated by a quiet process: the latency figures
    load_ids = ids[:len(ids) - len(probe_ids)]
    victim = 0
    workers = []
    for w in range(args.workers + 1):
        mine = load_ids[w::args.workers] if w < args.workers else probe_ids
        p = ctx.Process(target=worker_main, args=(w, mine, port, args, ctl, victim if victim in mine else None, results),
                        name=f"load-worker-{w}", daemon=True)
        p.start()
        processes.append(p)
        workers.append(p)
    out: dict[str, Any] = {"agents": n}
    try:
        cpu0, wall0 = _cpu_s(coordinator.pid), time.monotonic()
        started = time.time()
        last_registered = 0.0
        got = 0
        deadline = time.monotonic() + args.form_timeout
        while got < args.workers + 1 and time.monotonic() < deadline:
            try:
                kind, _wid, value = results.get(timeout=1.0)
            except Exception:
                continue
            if kind == "registered":
                got += 1
                last_registered = max(last_registered, value)
        out["register_s"] = round(last_registered - started, 2) if got == args.workers + 1 else None
        gen0 = wait_event(events, lambda e: e["kind"] == "generation" and e.get("generation") == 0,
                          max(1.0, deadline - time.monotonic()))
        out["forming_cpu"] = round((_cpu_s(coordinator.pid) - cpu0) / (time.monotonic() - wall0), 2)
        if gen0 is None or got < args.workers + 1:
            out["gen0_form_s"] = None
            out["note"] = f"generation 0 not formed within --form-timeout {args.form_timeout:.0f} s"
            return out
        out["gen0_form_s"] = round(gen0["time"] - last_registered, 3)
        time.sleep(args.warmup)  # every trainer stepping
        m0 = time.time()
        cpu0, wall0 = _cpu_s(coordinator.pid), time.monotonic()
        time.sleep(args.seconds)
        out["steady_cpu"] = round((_cpu_s(coordinator.pid) - cpu0) / (time.monotonic() - wall0), 2)
        m1 = time.time()
        ctl["freeze"].set()
        frozen_at = time.time()
        failure = wait_event(events, lambda e: e["kind"] == "failure", args.heartbeat_timeout + 30, after=frozen_at)
        gen1 = None
        if failure is not None:
            gen1 = wait_event(events, lambda e: e["kind"] == "generation" and e.get("generation", 0) >= 1,
                              args.form_timeout, after=failure["time"])
        out["failure_detected_s"] = round(failure["time"] - frozen_at, 2) if failure else None
        out["regen_s"] = round(gen1["time"] - failure["time"], 3) if failure and gen1 else None
        out["regen_world"] = gen1.get("world_size") if gen1 else None
        time.sleep(1.0)
        ctl["stop"].set()
        data: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        probe: dict[str, Any] = {"hb": [], "health": [], "noop": []}
        while len(data) < args.workers + 1 and time.monotonic() < deadline:
            try:
                kind, wid, value = results.get(timeout=1.0)
            except Exception:
                continue
            if kind == "done":
                data.append(value)
                if wid == args.workers:
                    probe = value
        load_hb = [lat for d in data if d is not probe for t, lat in d["hb"] if m0 <= t <= m1]
        hb = [lat for t, lat in probe["hb"] if m0 <= t <= m1]
        health = [lat for t, lat in probe["health"] if m0 <= t <= m1]
        out["hb_count"] = len(hb)
        out["hb_rate"] = round((len(hb) + len(load_hb)) / (m1 - m0), 1)
        out["load_hb_p50_p99_ms"] = [round(1000 * _pct(load_hb, q), 1) for q in (0.5, 0.99)]
        out["hb_p50_ms"] = round(1000 * _pct(hb, 0.5), 2)
        out["hb_p99_ms"] = round(1000 * _pct(hb, 0.99), 2)
        noop = [lat for t, lat in probe.get("noop", []) if m0 <= t <= m1]
        out["noop_ftrain_rpc_p50_p99_ms"] = [round(1000 * _pct(noop, q), 2) for q in (0.5, 0.99)]
        unknown = [lat for t, lat in probe.get("unknown_hb", []) if m0 <= t <= m1]
        out["unknown_node_hb_p50_p99_ms"] = [round(1000 * _pct(unknown, q), 2) for q in (0.5, 0.99)]
        out["health_p50_ms"] = round(1000 * _pct(health, 0.5), 2)
        out["health_p99_ms"] = round(1000 * _pct(health, 0.99), 2)
        out["ratio_p50"] = round(out["hb_p50_ms"] / out["health_p50_ms"], 2) if health else None
        form_hb = [lat for t, lat in probe["hb"] if t < m0]
        out["hb_p99_ms_while_forming"] = round(1000 * _pct(form_hb, 0.99), 2)
        if failure is not None and gen1 is not None:
            rejoins = [t for d in data for t in d["rejoin_sent"] if failure["time"] <= t <= gen1["time"] + 0.5]
            out["survivors_learned_s"] = round(max(rejoins) - failure["time"], 3) if rejoins else None
            out["formed_after_last_rejoin_s"] = round(gen1["time"] - max(rejoins), 3) if rejoins else None
        errors: dict[str, int] = {}
        for d in data:
            for key, count in d["errors"].items():
                errors[key] = errors.get(key, 0) + count
        out["rpc_errors"] = errors
        if args.server_timing:
            parent_conn.send("stop")
            coordinator.join(timeout=30)
            with open(os.path.join(workdir, "timing.json")) as f:
                timing = [(w, h) for t, w, h in json.load(f) if m0 <= t <= m1]
            out["server_hb_lock_wait_p50_p99_ms"] = [round(1000 * _pct([w for w, _ in timing], q), 2) for q in (0.5, 0.99)]
            out["server_hb_handler_p50_p99_ms"] = [round(1000 * _pct([h for _, h in timing], q), 2) for q in (0.5, 0.99)]
        evs = read_events(events)
        out["failures"] = sum(1 for e in evs if e["kind"] == "failure")
        out["generations"] = sum(1 for e in evs if e["kind"] == "generation")
        return out
    finally:
        ctl["stop"].set()
        for p in workers:
            p.join(timeout=10)
        try:
            parent_conn.send("stop")
        except OSError:
            pass
        coordinator.join(timeout=10)
        for p in [*workers, coordinator]:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--seconds", type=float, default=20.0, help="steady-state measurement window")
    parser.add_argument("--warmup", type=float, default=3.0, help="after generation 0 formed, before measuring")
    parser.add_argument("--heartbeat-timeout", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2, help="load-generating processes")
    parser.add_argument("--probe-agents", type=int, default=20,
                        help="agents simulated by one more, quiet process that measures the latencies")
    parser.add_argument("--channels", type=int, default=8, help="gRPC channels (connections) per worker")
    parser.add_argument("--register-concurrency", type=int, default=64, help="RegisterAgent calls in flight per worker")
    parser.add_argument("--health-hz", type=float, default=20.0, help="baseline health checks per second (probe process)")
    parser.add_argument("--form-timeout", type=float, default=120.0, help="bound on registration + generation 0")
    parser.add_argument("--server-timing", action="store_true",
                        help="diagnostic: time each heartbeat inside the coordinator (lock wait, whole handler)")
    parser.add_argument("--switch-interval", type=float, default=0.0,
                        help="experiment: sys.setswitchinterval in the coordinator process (0: Python's 5 ms)")
    args = parser.parse_args()

    processes: list[mp.process.BaseProcess] = []

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    print(f"coordinator_load: agents {args.agents}, {args.seconds:.0f} s steady window, heartbeat timeout "
          f"{args.heartbeat_timeout} s, {args.workers} worker processes x {args.channels} channels, "
          f"{os.cpu_count()} CPUs", flush=True)
    rows = []
    try:
        for n in args.agents:
            t0 = time.monotonic()
            row = run_one(n, args, processes)
            row["run_s"] = round(time.monotonic() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for p in processes:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    print()
    print(f"{'agents':>7} {'hb p50/p99 ms':>15} {'health p50/p99 ms':>18} {'ratio':>6} {'hb/s':>7} {'coord CPU':>9} "
          f"{'gen0 s':>7} {'regen s':>8} {'learn s':>8}")
    for r in rows:
        def f(key: str, fmt: str = "{:.2f}") -> str:
            v = r.get(key)
            return "-" if v is None else fmt.format(v)
        print(f"{r['agents']:>7} {f('hb_p50_ms', '{:.1f}') + '/' + f('hb_p99_ms', '{:.1f}'):>15} "
              f"{f('health_p50_ms', '{:.1f}') + '/' + f('health_p99_ms', '{:.1f}'):>18} {f('ratio_p50'):>6} "
              f"{f('hb_rate', '{:.0f}'):>7} {f('steady_cpu'):>9} {f('gen0_form_s'):>7} {f('regen_s', '{:.3f}'):>8} "
              f"{f('survivors_learned_s'):>8}  {r.get('note', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
