"""Process helpers for tests: run ftrain commands and clean up every process of a job by PID."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

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


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
