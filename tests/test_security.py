"""Security: mutual TLS, token everywhere, job isolation of shard reads, malformed input."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest

from ftrain.agent.store import AgentServicer, ShardStore
from ftrain.config import PROTOCOL_VERSION, JobSettings
from ftrain.coordinator.server import Coordinator
from ftrain.proto.ftrain.v1 import agent_pb2 as apb, agent_pb2_grpc, coordinator_pb2 as pb, coordinator_pb2_grpc
from ftrain.rpc import bind, make_server, token_metadata
from procs import SCRIPTS, new_job_id, run_ftrain

pytestmark = pytest.mark.timeout(180)
TOKEN = "s3cret-token-value"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory)


def make_cert(directory: Path, ca: str, name: str) -> None:
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=directory)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=directory)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    make_ca(directory, "ca")
    make_cert(directory, "ca", "node")
    make_ca(directory, "rogue-ca")
    make_cert(directory, "rogue-ca", "rogue")
    return directory


def tls_env(certs: Path, name: str = "node", ca: str = "ca") -> dict[str, str]:
    return {"FTRAIN_TLS_CERT": str(certs / f"{name}.pem"), "FTRAIN_TLS_KEY": str(certs / f"{name}.key"),
            "FTRAIN_TLS_CA": str(certs / f"{ca}.pem")}


def test_job_runs_over_mutual_tls(certs: Path, tmp_path: Path) -> None:
    job = new_job_id("tls")
    out = tmp_path / "tls.pt"
    result = run_ftrain(["launch", "--nodes", "2", "--job-id", job, "--tls-cert", str(certs / "node.pem"),
                         "--tls-key", str(certs / "node.key"), "--tls-ca", str(certs / "ca.pem"),
                         "--inject", "kill-rank:1@step=6", "--", str(SCRIPTS / "ledger_job.py"), "--steps", "12",
                         "--out", str(out)], job, timeout=150)
    assert result.returncode == 0, result.stdout[-5000:]
    assert out.exists()


def test_tls_coordinator_refuses_plaintext_and_foreign_certificates(certs: Path, monkeypatch) -> None:
    for key, value in tls_env(certs).items():
        monkeypatch.setenv(key, value)
    coordinator = Coordinator(JobSettings(job_id="tls-test"), TOKEN, port=0).start()
    try:
        plain = coordinator_pb2_grpc.CoordinatorStub(grpc.insecure_channel(coordinator.address))
        with pytest.raises(grpc.RpcError) as error:
            plain.GetStatus(pb.StatusRequest(), metadata=token_metadata(TOKEN), timeout=3)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        rogue_credentials = grpc.ssl_channel_credentials(
            root_certificates=(certs / "ca.pem").read_bytes(), private_key=(certs / "rogue.key").read_bytes(),
            certificate_chain=(certs / "rogue.pem").read_bytes())
        rogue = coordinator_pb2_grpc.CoordinatorStub(grpc.secure_channel(coordinator.address, rogue_credentials))
        with pytest.raises(grpc.RpcError) as error:
            rogue.GetStatus(pb.StatusRequest(), metadata=token_metadata(TOKEN), timeout=3)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        from ftrain.rpc import open_channel

        good = coordinator_pb2_grpc.CoordinatorStub(open_channel(coordinator.address))
        assert json.loads(good.GetStatus(pb.StatusRequest(), metadata=token_metadata(TOKEN), timeout=5).json)
    finally:
        coordinator.stop()


def test_tls_shard_data_plane_refuses_plaintext_and_foreign_certificates(certs: Path, monkeypatch) -> None:
    import numpy as np

    from ftrain.agent.dataplane import ShardDataServer
    from ftrain.snapshot import dataplane as dp
    from ftrain.snapshot.erasure import shard_checksum

    data = np.arange(1 << 20, dtype=np.uint32).view(np.uint8)
    for key, value in tls_env(certs).items():
        monkeypatch.setenv(key, value)
    server = ShardDataServer(ShardStore(), TOKEN, lambda: "job-tls").start()
    try:
        dp.DataPlaneClient(TOKEN, "job-tls").put(server.address, "s1", 0, 1, data, shard_checksum(data))
        assert server.store.get("s1", 0) is not None  # mutual TLS works
        for key in ("FTRAIN_TLS_CERT", "FTRAIN_TLS_KEY", "FTRAIN_TLS_CA"):
            monkeypatch.delenv(key)
        with pytest.raises(OSError):  # plaintext: the server's TLS handshake fails, nothing is stored
            dp.DataPlaneClient(TOKEN, "job-tls").put(server.address, "s2", 0, 1, data, shard_checksum(data),
                                                     timeout=5.0)
        for key, value in tls_env(certs, name="rogue").items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("FTRAIN_TLS_CA", str(certs / "ca.pem"))
        with pytest.raises(OSError):  # a certificate the job's CA did not sign
            dp.DataPlaneClient(TOKEN, "job-tls").put(server.address, "s3", 0, 1, data, shard_checksum(data),
                                                     timeout=5.0)
        assert server.store.get("s2", 0) is None and server.store.get("s3", 0) is None
    finally:
        server.stop()


@pytest.fixture()
def coordinator():
    c = Coordinator(JobSettings(job_id="sec-test"), TOKEN, port=0).start()
    yield c
    c.stop()


def test_malformed_messages_and_wrong_versions_get_clear_errors(coordinator: Coordinator) -> None:
    channel = grpc.insecure_channel(coordinator.address)
    raw = channel.unary_unary("/ftrain.v1.Coordinator/ReportSnapshot", request_serializer=None,
                              response_deserializer=None)
    with pytest.raises(grpc.RpcError) as error:
        raw(b"\xff\xfe not a protobuf \x00\x01", metadata=token_metadata(TOKEN), timeout=5)
    assert error.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    with pytest.raises(grpc.RpcError) as error:
        stub.RegisterAgent(pb.RegisterAgentRequest(job_id="sec-test", address="127.0.0.1:1", nproc=1,
                                                   protocol_version=PROTOCOL_VERSION + 1),
                           metadata=token_metadata(TOKEN), timeout=5)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "same ftrain version" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        stub.RegisterAgent(pb.RegisterAgentRequest(job_id="another-job", address="127.0.0.1:1", nproc=1),
                           metadata=token_metadata(TOKEN), timeout=5)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as error:
        stub.RegisterAgent(pb.RegisterAgentRequest(job_id="sec-test", address="127.0.0.1:1", nproc=0),
                           metadata=token_metadata(TOKEN), timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = stub.GetStatus(pb.StatusRequest(), metadata=token_metadata(TOKEN), timeout=5).json
    assert json.loads(status)["state"] == "running"  # the coordinator survived all of it
    assert TOKEN not in status


def test_agent_refuses_shards_of_another_job_and_oversized_chunks() -> None:
    store = ShardStore()
    store.put("s1-g0-r0", 0, 1, bytearray(b"abc"), 0)
    server = make_server(TOKEN)
    agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(store, "job-a", ["node0"]), server)
    port = bind(server, "127.0.0.1", 0)
    server.start()
    try:
        stub = agent_pb2_grpc.AgentStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        with pytest.raises(grpc.RpcError) as error:
            list(stub.GetShard(apb.GetShardRequest(job_id="job-b", blob_id="s1-g0-r0", index=0),
                               metadata=token_metadata(TOKEN), timeout=5))
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as error:
            list(stub.GetShard(apb.GetShardRequest(job_id="job-a", blob_id="s1-g0-r0", index=0), timeout=5))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        chunk = apb.ShardChunk(job_id="job-a", blob_id="x", index=0, step=1, offset=10, total_len=4, data=b"12345")
        with pytest.raises(grpc.RpcError) as error:
            stub.PutShard(iter([chunk]), metadata=token_metadata(TOKEN), timeout=5)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "overruns" in error.value.details()
    finally:
        server.stop(0)


METHODS = ["RegisterAgent", "Heartbeat", "ReportTrainerExit", "JoinGeneration", "WatchGeneration", "ReportFailure",
           "ReportSnapshot", "WaitCommitted", "ReportProgress", "ClaimFault", "ReportFinished", "ReportUserError"]


def test_random_bytes_on_every_rpc_never_crash_the_coordinator(coordinator: Coordinator) -> None:
    """Fuzz: arbitrary bytes as the request of every method; each call ends with a status (never a
    hang), and the coordinator keeps serving afterwards."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    channel = grpc.insecure_channel(coordinator.address)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(method=st.sampled_from(METHODS), payload=st.binary(max_size=200))
    def fuzz(method: str, payload: bytes) -> None:
        call = channel.unary_unary(f"/ftrain.v1.Coordinator/{method}", request_serializer=None,
                                   response_deserializer=None)
        try:
            call(payload, metadata=token_metadata(TOKEN), timeout=3)
        except grpc.RpcError as error:
            assert error.code() != grpc.StatusCode.UNAVAILABLE, "the coordinator went away"

    fuzz()
    stub = coordinator_pb2_grpc.CoordinatorStub(channel)
    assert json.loads(stub.GetStatus(pb.StatusRequest(), metadata=token_metadata(TOKEN), timeout=5).json)
