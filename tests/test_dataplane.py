"""Shard data plane: a real ShardDataServer on 127.0.0.1 with a real ShardStore, driven by the
real client (and by raw sockets for malformed input)."""
from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
import struct

import numpy as np
import pytest

from ftrain.agent.dataplane import ShardDataServer
from ftrain.agent.store import AgentServicer, ShardStore
from ftrain.proto.ftrain.v1 import agent_pb2 as apb, agent_pb2_grpc
from ftrain.rpc import bind, make_server, open_channel
from ftrain.snapshot import dataplane as dp
from ftrain.snapshot.erasure import shard_checksum
from ftrain.snapshot.transfer import AgentPool, ShardCorrupted

pytestmark = pytest.mark.timeout(120)
TOKEN = "data-plane-token"
JOB = "job-dp"


@pytest.fixture()
def server():
    store = ShardStore()
    data_server = ShardDataServer(store, TOKEN, lambda: JOB).start()
    yield data_server
    data_server.stop()


def payload(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def test_put_then_get_returns_the_same_bytes_and_reuses_the_connection(server: ShardDataServer) -> None:
    client = dp.DataPlaneClient(TOKEN, JOB)
    data = payload(3 * 2**20 + 17)
    client.put(server.address, "s1-g0-r0", 2, 1, data, shard_checksum(data), b"info")
    stored = server.store.get("s1-g0-r0", 2)
    assert stored is not None and stored.step == 1 and stored.blob_info == b"info"
    got, crc = client.get(server.address, "s1-g0-r0", 2)
    assert np.array_equal(got, data) and crc == shard_checksum(data)
    assert len(client._idle[server.address]) == 1  # one kept-alive connection served both requests
    with pytest.raises(dp.ShardTransferError) as error:
        client.get(server.address, "s9-g0-r0", 0)
    assert error.value.code == dp.NOT_FOUND
    client.close()


def test_a_pinned_step_outlives_the_retention_bound_and_the_steps_after_it_do_not(server: ShardDataServer) -> None:
    client = dp.DataPlaneClient(TOKEN, JOB)
    for step in (1, 2, 3, 4):  # step 1 is being written to a durable checkpoint
        data = payload(1000, step)
        client.put(server.address, f"s{step}", 0, step, data, shard_checksum(data))
    assert server.store.drop_older_than(4, pinned=[1]) == 2
    assert [step for step in (1, 2, 3, 4) if server.store.get(f"s{step}", 0) is not None] == [1, 4]
    assert server.store.drop_older_than(4) == 1 and server.store.get("s1", 0) is None  # written: unpinned
    client.close()


def test_evicted_buffers_are_reused_for_same_size_shards(server: ShardDataServer) -> None:
    client = dp.DataPlaneClient(TOKEN, JOB)
    first, second = payload(2**21, 1), payload(2**21, 2)
    client.put(server.address, "s1", 0, 1, first, shard_checksum(first))
    buffer = server.store.get("s1", 0).data
    assert server.store.drop_older_than(2) == 1
    client.put(server.address, "s2", 0, 2, second, shard_checksum(second))
    assert server.store.get("s2", 0).data is buffer  # the evicted shard's memory, reused
    assert bytes(server.store.get("s2", 0).data) == second.tobytes()
    client.close()


def test_a_corrupted_put_is_refused_and_nothing_is_stored(server: ShardDataServer) -> None:
    client = dp.DataPlaneClient(TOKEN, JOB)
    data = payload(2**20)
    with pytest.raises(dp.ShardTransferError) as error:
        client.put(server.address, "s1", 0, 1, data, shard_checksum(data) ^ 1)
    assert error.value.code == dp.DATA_LOSS and "crc mismatch" in str(error.value)
    assert server.store.get("s1", 0) is None
    client.put(server.address, "s1", 0, 1, data, shard_checksum(data))  # the same connection still works
    assert server.store.get("s1", 0) is not None
    client.close()


def test_wrong_token_and_wrong_job_are_refused(server: ShardDataServer) -> None:
    data = payload(1024)
    with pytest.raises(dp.ShardTransferError) as error:
        dp.DataPlaneClient("wrong", JOB).put(server.address, "s1", 0, 1, data, shard_checksum(data))
    assert error.value.code == dp.UNAUTHENTICATED
    with pytest.raises(dp.ShardTransferError) as error:
        dp.DataPlaneClient(TOKEN, "other-job").get(server.address, "s1", 0)
    assert error.value.code == dp.PERMISSION_DENIED and "other-job" in str(error.value)
    assert server.store.stats() == (0, 0)


def raw_request(address: str, data: bytes) -> bytes:
    host, port = dp.split_address(address)
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def reply_of(raw: bytes) -> apb.DataReply:
    magic, length = struct.unpack("<4sI", raw[:8])
    assert magic == dp.MAGIC
    reply = apb.DataReply()
    reply.ParseFromString(raw[8:8 + length])
    return reply


def test_malformed_frames_get_a_clear_error_and_the_server_keeps_serving(server: ShardDataServer) -> None:
    assert reply_of(raw_request(server.address, b"GET / HTTP/1.1\r\n\r\n")).code == dp.INVALID_ARGUMENT
    oversized = struct.pack("<4sI", dp.MAGIC, dp.MAX_FRAME_BYTES + 1)
    reply = reply_of(raw_request(server.address, oversized))
    assert reply.code == dp.INVALID_ARGUMENT and "limit" in reply.message
    garbage = struct.pack("<4sI", dp.MAGIC, 5) + b"\xff\xff\xff\xff\xff"
    assert reply_of(raw_request(server.address, garbage)).code == dp.INVALID_ARGUMENT
    too_big = dp.encode_frame(apb.DataRequest(token=TOKEN, job_id=JOB, op=dp.OP_PUT, blob_id="x", total_len=1 << 40))
    reply = reply_of(raw_request(server.address, too_big))
    assert reply.code == dp.INVALID_ARGUMENT and "over the" in reply.message
    short = dp.encode_frame(apb.DataRequest(token=TOKEN, job_id=JOB, op=dp.OP_PUT, blob_id="x", total_len=100))
    raw_request(server.address, short + b"only-some")  # the sender goes away mid-shard
    assert server.store.get("x", 0) is None
    data = payload(4096)
    dp.DataPlaneClient(TOKEN, JOB).put(server.address, "ok", 0, 1, data, shard_checksum(data))
    assert server.store.get("ok", 0) is not None


def test_random_bytes_never_stop_the_server(server: ShardDataServer) -> None:
    from hypothesis import HealthCheck, given, settings, strategies as st

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.binary(max_size=300), framed=st.booleans())
    def fuzz(data: bytes, framed: bool) -> None:
        raw_request(server.address, struct.pack("<4sI", dp.MAGIC, len(data)) + data if framed else data)

    fuzz()
    data = payload(4096)
    dp.DataPlaneClient(TOKEN, JOB).put(server.address, "after-fuzz", 0, 1, data, shard_checksum(data))
    assert server.store.get("after-fuzz", 0) is not None


def test_a_stale_kept_alive_connection_is_retried_on_a_fresh_one() -> None:
    store = ShardStore()
    first = ShardDataServer(store, TOKEN, lambda: JOB).start()
    client = dp.DataPlaneClient(TOKEN, JOB)
    data = payload(2**20)
    client.put(first.address, "s1", 0, 1, data, shard_checksum(data))
    port = first.port
    first.stop()  # the agent restarts on the same port; the client's idle connection is now dead
    second = ShardDataServer(store, TOKEN, lambda: JOB, port=port).start()
    try:
        client.put(second.address, "s2", 0, 2, data, shard_checksum(data))
        assert store.get("s2", 0) is not None
    finally:
        second.stop()
        client.close()


def test_agent_pool_uses_the_advertised_data_plane_and_falls_back_to_grpc(monkeypatch) -> None:
    store = ShardStore()
    data_server = ShardDataServer(store, TOKEN, lambda: JOB).start()
    grpc_server = make_server(TOKEN)
    agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(store, JOB, ["node0"], data_server.address), grpc_server)
    port = bind(grpc_server, "127.0.0.1", 0)
    grpc_server.start()
    address = f"127.0.0.1:{port}"
    try:
        data = payload(5 * 2**20 + 3)
        pool = AgentPool(TOKEN, JOB)
        assert pool.data_address(address, 5.0) == data_server.address
        pool.put_shard(address, "s1", 0, 1, data, shard_checksum(data))
        assert np.array_equal(pool.get_shard(address, "s1", 0, shard_checksum(data)), data)
        assert data_server.address in pool.data._idle  # it went over the data plane
        with pytest.raises(ShardCorrupted):
            pool.get_shard(address, "s1", 0, shard_checksum(data) ^ 1)
        pool.close()

        monkeypatch.setenv(dp.ENV_TRANSPORT, "grpc")
        grpc_pool = AgentPool(TOKEN, JOB)
        assert grpc_pool.data_address(address, 5.0) == ""
        grpc_pool.put_shard(address, "s2", 0, 2, data, shard_checksum(data))
        assert np.array_equal(grpc_pool.get_shard(address, "s2", 0, shard_checksum(data)), data)
        assert not grpc_pool.data._idle  # gRPC streams only
        grpc_pool.close()

        monkeypatch.setenv(dp.ENV_TRANSPORT, "carrier-pigeon")
        with pytest.raises(ValueError, match="FTRAIN_SHARD_TRANSPORT"):
            AgentPool(TOKEN, JOB)
    finally:
        grpc_server.stop(0)
        data_server.stop()


def test_unreachable_data_plane_is_an_os_error_with_the_address() -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):
        dp.DataPlaneClient(TOKEN, JOB).get(f"127.0.0.1:{port}", "s1", 0, timeout=2.0)
    with pytest.raises(ValueError, match="host:port"):
        dp.split_address("no-port")


def test_grpc_get_and_data_plane_get_see_the_same_store() -> None:
    store = ShardStore()
    data = payload(9 * 2**20)  # more than two gRPC chunks
    store.put("s1", 1, 1, bytearray(data.tobytes()), shard_checksum(data))
    grpc_server = make_server(TOKEN)
    agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(store, JOB, ["node0"]), grpc_server)
    port = bind(grpc_server, "127.0.0.1", 0)
    grpc_server.start()
    try:
        stub = agent_pb2_grpc.AgentStub(open_channel(f"127.0.0.1:{port}"))
        chunks = list(stub.GetShard(apb.GetShardRequest(job_id=JOB, blob_id="s1", index=1),
                                    metadata=(("x-ftrain-token", TOKEN),), timeout=10))
        assert b"".join(c.data for c in chunks) == data.tobytes()
        assert store.get("s1", 1).readers == 0  # released after streaming
    finally:
        grpc_server.stop(0)


def test_connections_beyond_the_cap_are_refused_without_a_thread() -> None:
    import time

    server = ShardDataServer(ShardStore(), TOKEN, lambda: JOB, max_connections=2).start()
    host, port = dp.split_address(server.address)
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while len(server._connections) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        get = dp.encode_frame(apb.DataRequest(token=TOKEN, job_id=JOB, op=dp.OP_GET, blob_id="s1"))
        reply = reply_of(raw_request(server.address, get))
        assert reply.code == dp.RESOURCE_EXHAUSTED and "at most 2" in reply.message
        idle.pop().close()  # a slot frees up once the server sees the close
        data = payload(4096)
        while True:
            try:
                dp.DataPlaneClient(TOKEN, JOB).put(server.address, "s1", 0, 1, data, shard_checksum(data))
                break
            except OSError:
                assert time.monotonic() < deadline, "the freed connection slot was never reused"
                time.sleep(0.05)
        assert server.store.get("s1", 0) is not None
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_a_full_store_refuses_a_shard_over_either_transport_and_keeps_serving(monkeypatch) -> None:
    """A shard that would take the agent past its snapshot memory limit is refused before any
    memory is taken (RESOURCE_EXHAUSTED, the data-plane connection stays in step); shards the
    store holds, those arriving and the whole copies outside it all count."""
    store = ShardStore(limit=3000)
    data_server = ShardDataServer(store, TOKEN, lambda: JOB).start()
    grpc_server = make_server(TOKEN)
    agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(store, JOB, ["node0"], data_server.address), grpc_server)
    port = bind(grpc_server, "127.0.0.1", 0)
    grpc_server.start()
    pool = AgentPool(TOKEN, JOB)
    io = ThreadPoolExecutor(2)
    try:
        address = f"127.0.0.1:{port}"
        first = payload(2000)
        assert pool.put_shards(io, [("node0", address)], "s1", 1, [first],
                               [shard_checksum(first)]) == []
        second = payload(1500, seed=1)
        problems = pool.put_shards(io, [("node0", address)], "s2", 2, [second],
                                   [shard_checksum(second)])  # over the data plane
        assert len(problems) == 1 and problems[0].full and "2000 of its 3000 bytes" in problems[0].why
        assert store.refused == 1 and store.stats() == (1, 2000)
        monkeypatch.setenv(dp.ENV_TRANSPORT, "grpc")
        direct = AgentPool(TOKEN, JOB)
        problems = direct.put_shards(io, [("node0", address)], "s2", 2, [second],
                                     [shard_checksum(second)])
        assert len(problems) == 1 and problems[0].full and "does not fit" in problems[0].why
        direct.close()
        small = payload(900, seed=2)
        assert pool.put_shards(io, [("node0", address)], "s2", 2, [small],
                               [shard_checksum(small)]) == []  # the same connection, still in step
        store.outside_bytes = 200  # e.g. restart mode's whole copies in /dev/shm
        assert pool.put_shards(io, [("node0", address)], "s3", 3, [payload(10)],
                               [shard_checksum(payload(10))])[0].full
        assert store.drop_older_than(0, skipped=[2]) == 1 and store.stats() == (1, 2000)
    finally:
        pool.close()
        io.shutdown()
        grpc_server.stop(0)
        data_server.stop()
