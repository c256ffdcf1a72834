"""A trainer with a wrong token is refused clearly; a missing coordinator fails fast and clearly."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import grpc
import pytest

from ftrain.config import JobSettings
from ftrain.coordinator.server import Coordinator
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb, coordinator_pb2_grpc
from ftrain.rpc import token_metadata
from procs import SCRIPTS

pytestmark = pytest.mark.timeout(120)


def trainer_env(coordinator: str, token: str) -> dict[str, str]:
    return dict(os.environ, FTRAIN_COORDINATOR=coordinator, FTRAIN_JOB_ID="auth-test", FTRAIN_NODE_ID="node0",
                FTRAIN_LOCAL_RANK="0", FTRAIN_TOKEN=token, FTRAIN_CONNECT_TIMEOUT="3")


def run_trainer(env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / "ledger_job.py"), "--out", str(tmp_path / "x.pt")],
                          env=env, capture_output=True, text=True, timeout=90)


def test_wrong_token_is_refused(tmp_path) -> None:
    coordinator = Coordinator(JobSettings(job_id="auth-test"), "right-token", port=0).start()
    try:
        result = run_trainer(trainer_env(coordinator.address, "wrong-token"), tmp_path)
        assert result.returncode != 0
        assert "refused the job token" in result.stderr and "FTRAIN_TOKEN" in result.stderr, result.stderr[-2000:]
        stub = coordinator_pb2_grpc.CoordinatorStub(grpc.insecure_channel(coordinator.address))
        with pytest.raises(grpc.RpcError) as error:
            stub.GetStatus(pb.StatusRequest(), metadata=token_metadata("wrong"), timeout=5)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as error:
            stub.GetStatus(pb.StatusRequest(), timeout=5)  # no token at all
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.GetStatus(pb.StatusRequest(), metadata=token_metadata("right-token"), timeout=5).json
    finally:
        coordinator.stop()


def test_missing_coordinator_fails_fast(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    result = run_trainer(trainer_env(f"127.0.0.1:{port}", "t"), tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "cannot reach coordinator" in result.stderr and "FTRAIN_CONNECT_TIMEOUT" in result.stderr, result.stderr[-2000:]
    assert elapsed < 60, f"took {elapsed:.0f} s: must be bounded by the connect timeout, not hang"
