"""A frozen node (its agent SIGSTOPped: a hung machine, a half-open partition) is declared dead by
missing heartbeats, fenced by the launcher (its process group SIGKILLed, so it can never come back
into an old generation) and replaced; with --no-replace the job shrinks instead. Either way the job
ends within a bound, with every sample used exactly once (bit-identical with a replacement)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ledgers import assert_exactly_once
from procs import REPO, SCRIPTS, kill_job, new_job_id, run_ftrain, wait_until

pytestmark = pytest.mark.timeout(400)
JOB = [str(SCRIPTS / "ledger_job.py"), "--steps", "40"]


def agent_pid(job: str, node_id: str) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"agent" in argv and job.encode() in argv and node_id.encode() in argv:
            return int(entry)
    return None


def run_and_freeze(tmp_path: Path, name: str, *launch_args: str) -> tuple[dict, str, float, list[dict], str]:
    job = new_job_id(name)
    out, events = tmp_path / f"{name}.pt", tmp_path / f"{name}.events"
    command = [sys.executable, "-m", "ftrain", "launch", "--nodes", "3", "--job-id", job, "--events-file", str(events),
               *launch_args, "--", *JOB, "--step-sleep", "0.15", "--out", str(out)]
    process = subprocess.Popen(command, cwd=str(REPO), env=dict(os.environ, FTRAIN_JOB_ID=job),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    frozen = None
    try:
        assert wait_until(lambda: events.exists() and '"generation"' in events.read_text(), timeout=120)
        time.sleep(2.0)  # a few steps in
        formed = next(json.loads(line) for line in events.read_text().splitlines() if '"generation"' in line)
        holder = re.search(r" on ([^;]+);", formed["message"]).group(1).split(", ")[1]  # rank 1's node, not a spare
        frozen = agent_pid(job, holder)
        assert frozen is not None
        os.kill(frozen, signal.SIGSTOP)
        started = time.monotonic()
        output = process.communicate(timeout=240)[0]
        took = time.monotonic() - started
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if frozen is not None:
            try:
                os.kill(frozen, signal.SIGCONT)
            except ProcessLookupError:
                pass
        kill_job(job)
    assert process.returncode == 0, output[-6000:]
    assert frozen is not None and not os.path.exists(f"/proc/{frozen}/cmdline") or \
        open(f"/proc/{frozen}/stat").read().split()[2] == "Z", "the frozen agent was not fenced"
    return torch.load(out), output, took, [json.loads(line) for line in events.read_text().splitlines()], holder


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    job, out = new_job_id("ref"), tmp_path_factory.mktemp("ref") / "ref.pt"
    result = run_ftrain(["launch", "--nodes", "3", "--job-id", job, "--", *JOB, "--out", str(out)], job, timeout=200)
    assert result.returncode == 0, result.stdout[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("spares", [(), ("--spares", "1")], ids=["replaced", "spare"])
def test_a_frozen_agent_is_fenced_and_replaced(tmp_path: Path, reference: dict, spares: tuple[str, ...]) -> None:
    ref = reference
    result, output, took, events, node = run_and_freeze(tmp_path, "frozen", *spares)
    for key in ref["params"]:
        assert torch.equal(ref["params"][key], result["params"][key]), key
    assert f"node {node} was declared dead but its agent still runs: fencing it" in output, output[-4000:]
    assert any(e["kind"] == "failure" and f"{node} lost" in e["message"] for e in events)
    # bound: heartbeat timeout (10 s) + replacement start + restore + the rest of the job (~40 x 0.15 s)
    assert took < 90, f"took {took:.0f} s"
    print(f"\nfrozen agent: job done {took:.1f} s after the SIGSTOP")


def test_a_frozen_agent_without_replacement_shrinks_the_job(tmp_path: Path) -> None:
    result, output, took, _, _ = run_and_freeze(tmp_path, "shrink", "--no-replace", "--min-nodes", "2")
    assert "fencing it" in output
    assert result["world_sizes"][0] == 3 and result["world_sizes"][-1] == 2
    assert_exactly_once(result)
    assert took < 90, f"took {took:.0f} s"
