"""Process helpers for tests: run ftrain commands and clean up every process of a job by PID."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ftrain.status import StatusError, fetch_status

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "tests" / "scripts"


def job_pids(job_id: str) -> list[int]:
    """PIDs of processes that belong to `job_id` (by environment or command line)."""
    pids = []
    marker_env = f"FTRAIN_JOB_ID={job_id}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if job_id.encode() in cmdline or marker_env in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def kill_job(job_id: str) -> None:
    for pid in job_pids(job_id):
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def new_job_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run_ftrain(args: list[str], job_id: str, timeout: float, env: dict[str, str] | None = None,
               cwd: str | None = None) -> subprocess.CompletedProcess:
    """Runs `python -m ftrain ARGS` (with --job-id for launch); always kills what is left of the job."""
    full_env = dict(os.environ, **(env or {}))
    full_env["FTRAIN_JOB_ID"] = job_id
    process = subprocess.Popen([sys.executable, "-m", "ftrain", *args], env=full_env, cwd=cwd or str(REPO),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"ftrain {' '.join(args)} timed out after {timeout} s; output:\n{output[-6000:]}")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_job(job_id)
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def run_torchrun(script: str, args: list[str], out: Path, nproc: int = 2, timeout: float = 240,
                 teardown_abort_ok: bool = False) -> None:
    """Runs `torchrun --nproc-per-node N SCRIPT ARGS --out OUT` (gloo on loopback, no ftrain variables),
    the reference a test compares ftrain with; kills what is left of it. `teardown_abort_ok`: torch
    2.13 can abort a gloo worker during interpreter teardown, after the script's last line (a GIL race
    in its destructors): accepted when OUT was written by then."""
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    for key in [k for k in env if k.startswith("FTRAIN_")]:
        env.pop(key)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
               "127.0.0.1", "--master-port", str(free_port()), script, *args, "--out", str(out)]
    process = subprocess.Popen(command, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    ok = process.returncode == 0 or (teardown_abort_ok and out.exists() and "SIGABRT" in output)
    assert ok, output[-6000:]


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def coordinator_status(address: str, token: str) -> dict | None:
    """The coordinator's status JSON, or None while it is unreachable (e.g. being restarted)."""
    try:
        return fetch_status(address, token, timeout_s=2.0)
    except StatusError:
        return None


def stop_processes(processes: list[subprocess.Popen], job_id: str) -> None:
    """Kills what is left of hand-started coordinator/agent processes (a process that leads its own
    session is killed with its whole group: agent + trainers), reaps them, then sweeps the job by PID."""
    for process in processes:
        if process.poll() is None:
            try:
                if os.getpgid(process.pid) == process.pid:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
            except ProcessLookupError:
                pass
    for process in processes:
        process.wait()
    kill_job(job_id)
