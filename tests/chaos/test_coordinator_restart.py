"""The coordinator is SIGKILLed mid-run and restarted: agents re-register with their slots, last
generation and held shards, the coordinator rebuilds membership and the snapshot catalog from
them, and training continues to the same bit-identical result."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.conftest import check_against_reference
from procs import SCRIPTS, coordinator_status, free_port, new_job_id, run_ftrain, stop_processes

pytestmark = pytest.mark.timeout(300)
TOKEN = "restart-test-token"
STEPS, SLEEP = 40, 0.08


def test_coordinator_killed_and_restarted(tmp_path: Path) -> None:
    job_args = ["--steps", str(STEPS), "--step-sleep", str(SLEEP)]
    ref_job = new_job_id("ref")
    ref = run_ftrain(["launch", "--nodes", "3", "--job-id", ref_job, "--", str(SCRIPTS / "ledger_job.py"),
                      *job_args, "--out", str(tmp_path / "ref.pt")], ref_job, timeout=200)
    assert ref.returncode == 0, ref.stdout[-3000:]

    job = new_job_id("restart")
    port = free_port()
    env = dict(os.environ, FTRAIN_TOKEN=TOKEN, FTRAIN_JOB_ID=job, PYTHONUNBUFFERED="1")
    coordinator_cmd = [sys.executable, "-m", "ftrain", "coordinator", "--port", str(port), "--nodes", "3",
                       "--job-id", job]
    log = open(tmp_path / "job.log", "w")
    processes: list[subprocess.Popen] = []
    try:
        coordinator = subprocess.Popen(coordinator_cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append(coordinator)
        for i in range(3):
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "ftrain", "agent", "--coordinator", f"127.0.0.1:{port}", "--node-id",
                 f"node{i}", "--job-id", job, "--", str(SCRIPTS / "ledger_job.py"), *job_args,
                 "--out", str(tmp_path / "final.pt")], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        deadline = time.monotonic() + 120
        while True:
            state = coordinator_status(f"127.0.0.1:{port}", TOKEN)
            if state and state["last_committed_step"] >= 10:
                break
            assert time.monotonic() < deadline, (tmp_path / "job.log").read_text()[-3000:]
            time.sleep(0.1)
        killed_at = time.monotonic()
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()
        time.sleep(1.0)
        coordinator = subprocess.Popen(coordinator_cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append(coordinator)
        restarted = None
        while restarted is None and time.monotonic() < deadline + 60:
            state = coordinator_status(f"127.0.0.1:{port}", TOKEN)
            if state and state["generation"] >= 1 and state["world_size"] == 3:
                restarted = time.monotonic() - killed_at
            time.sleep(0.1)
        assert restarted is not None, (tmp_path / "job.log").read_text()[-4000:]
        for process in processes[1:4]:
            assert process.wait(timeout=120) == 0, (tmp_path / "job.log").read_text()[-4000:]
        assert coordinator.wait(timeout=30) == 0
    finally:
        stop_processes(processes, job)
        log.close()
    check_against_reference(tmp_path, "coordinator killed + restarted", None, restarted)
