"""`ftrain status` against a running `ftrain launch` job: 80-column table, --json keys, errors."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from ftrain.status import StatusError, fetch_status, format_status
from procs import REPO, SCRIPTS, kill_job, new_job_id

TOKEN = "status-test-token-93ab"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status_cli(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FTRAIN_TOKEN"}
    if token is not None:
        env["FTRAIN_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "ftrain", "status", *args], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def job():
    """A 2-node job that keeps training while the tests look at it; killed at the end."""
    script = SCRIPTS / "steady_job.py"
    job_id = new_job_id("status")
    port = _free_port()
    env = dict(os.environ, FTRAIN_JOB_ID=job_id, FTRAIN_TOKEN=TOKEN)
    process = subprocess.Popen(
        [sys.executable, "-m", "ftrain", "launch", "--nodes", "2", "--job-id", job_id, "--coordinator-port", str(port),
         "--metrics-port", "0", "--timeout", "240", "--", str(script), "--samples", "128", "--steps", "2000"],
        env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while True:
            try:
                status = fetch_status(address, TOKEN, timeout_s=2.0)
                if status["generation"] >= 0 and status["last_committed_step"] >= 2:
                    break
            except StatusError:
                pass
            assert process.poll() is None, "the job exited before it could be inspected"
            assert time.monotonic() < deadline, "the job did not start training in time"
            time.sleep(0.5)
        yield {"address": address, "job_id": job_id}
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
        kill_job(job_id)


@pytest.mark.timeout(240)
def test_table_fits_80_columns(job: dict) -> None:
    result = status_cli("--coordinator", job["address"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.rstrip("\n").splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    text = result.stdout
    assert f"job {job['job_id']}  running" in text
    assert "generation 0  world size 2  last committed step" in text
    assert "snapshot every 1 step: stall" in text
    header = next(line for line in lines if line.startswith("NODE"))
    assert header.split() == ["NODE", "STATE", "RANKS", "STEP", "BEAT", "AGENT", "METRICS"]
    rows = {line.split()[0]: line.split() for line in lines[lines.index(header) + 1:] if line.startswith("node")}
    assert set(rows) == {"node0", "node1"}
    assert rows["node0"][1:3] == ["alive", "0"] and rows["node1"][1:3] == ["alive", "1"]
    assert rows["node0"][6].startswith("127.0.0.1:")  # each agent's metrics endpoint (a free port)
    assert "RECENT EVENTS" in text and "generation 0 formed" in text
    assert TOKEN not in text + result.stderr


@pytest.mark.timeout(240)
def test_json_keys_and_metrics_endpoints(job: dict) -> None:
    result = status_cli("--coordinator", job["address"], "--json")
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout
    status = json.loads(result.stdout)
    assert status["generation"] == 0 and status["world_size"] == 2
    assert isinstance(status["last_committed_step"], int) and status["last_committed_step"] >= 2
    for key in ("state", "members", "events", "stragglers", "snapshot_stall_s", "snapshot_interval_s", "failures",
                "recoveries", "lost_steps"):
        assert key in status, key
    assert status["snapshot_stall_s"] > 0 and status["snapshot_interval_s"] > 0
    members = {m["node"]: m for m in status["members"]}
    assert set(members) == {"node0", "node1"}
    for member in members.values():
        # the endpoint the agent reported answers with this node's own figures
        text = urllib.request.urlopen(f"http://{member['metrics']}/metrics", timeout=5).read().decode()
        assert "ftrain_trainer_step{local_rank=\"0\"}" in text
        assert TOKEN not in text


@pytest.mark.timeout(240)
def test_wrong_token_is_refused(job: dict) -> None:
    result = status_cli("--coordinator", job["address"], token="not-the-token")
    assert result.returncode == 1
    assert "refused the job token" in result.stderr
    assert result.stdout == "" and TOKEN not in result.stderr


@pytest.mark.timeout(60)
def test_missing_token_and_bad_address() -> None:
    result = status_cli("--coordinator", "127.0.0.1:29400", token=None)
    assert result.returncode == 2 and "FTRAIN_TOKEN" in result.stderr
    result = status_cli("--coordinator", "no-port-here")
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


@pytest.mark.timeout(60)
def test_unreachable_coordinator() -> None:
    result = status_cli("--coordinator", f"127.0.0.1:{_free_port()}")
    assert result.returncode == 1
    assert "cannot reach coordinator" in result.stderr


@pytest.mark.timeout(30)
def test_long_values_still_fit_80_columns() -> None:
    long_host = "worker-17.a-really-long-job-name.training-namespace.svc.cluster.local"
    status = {
        "job_id": "a-job-with-a-very-long-name-" + "x" * 60, "state": "running", "message": "", "generation": 12,
        "pending_generation": True, "world_size": 1024, "last_committed_step": 123456789, "mode": "sync",
        "ec": "4+2", "snapshot_every": 10, "snapshot_stall_s": 0.000123, "snapshot_interval_s": 3.5,
        "failures": 3, "recoveries": 3, "lost_steps": 17, "uptime_s": 99999.0,
        "stragglers": [{"rank": r, "slowdown": 1.5} for r in range(40)],
        "members": [{"node": f"ftrain-job-worker-{i}-attempt-3", "address": f"{long_host}:29500", "nproc": 8,
                     "alive": i % 2 == 0, "slot": i, "heartbeat_age_s": 0.5, "ranks": list(range(8 * i, 8 * i + 8)),
                     "step": 123456789, "metrics": f"{long_host}:9400"} for i in range(3)],
        "events": [{"time": 1700000000.0, "kind": "collective-failed", "message": "x" * 300 + "\nsecond line"}],
    }
    text = format_status(status)
    assert all(len(line) <= 80 for line in text.splitlines())
    rows = [line.split() for line in text.splitlines() if line.startswith("ftrain-job")]
    assert [row[0][-12:] for row in rows] == [f"-{i}-attempt-3" for i in range(3)]  # ids stay distinguishable
    assert all(row[5].endswith("29500") and row[6].endswith(":9400") for row in rows)  # ports stay visible
    assert [row[2] for row in rows] == ["0-7", "8-15", "16-23"]  # rank ranges are compressed
    assert [row[1] for row in rows] == ["alive", "dead", "alive"]
    events = text.split("RECENT EVENTS\n")[1].splitlines()
    assert len(events) == 1 and events[0].endswith("...")  # one line per event, cut to fit


@pytest.mark.timeout(30)
def test_durable_tier_line() -> None:
    base = {"job_id": "j", "state": "running", "members": [], "events": []}
    assert "durable" not in format_status(base)
    status = dict(base, checkpoint={"dir": "/ckpt", "last_step": 200, "in_flight_step": 300,
                                    "last_problem": "checkpoint of step 100 abandoned: node node1 could not write "
                                                    "rank 1's file: OSError: [Errno 28] No space left on device",
                                    "resumed_from": 50})
    lines = [line for line in format_status(status).splitlines() if line.startswith("durable")]
    assert lines[0] == "durable: last step 200 in /ckpt; writing step 300; resumed from step 50"
    assert lines[1].startswith("durable: checkpoint of step 100 abandoned") and len(lines[1]) <= 80
    fresh = dict(base, checkpoint={"dir": "/c", "last_step": -1, "in_flight_step": None, "last_problem": ""})
    assert [line for line in format_status(fresh).splitlines() if line.startswith("durable")] == \
        ["durable: no checkpoint written yet in /c"]


@pytest.mark.timeout(30)
def test_snapshot_memory_line() -> None:
    members = [{"node": "node0", "alive": True, "shard_bytes": 3 * 2**20},
               {"node": "node1", "alive": True, "shard_bytes": 5 * 2**20},
               {"node": "node2", "alive": False, "shard_bytes": 9 * 2**20}]  # a dead node's memory is gone
    text = format_status({"job_id": "j", "state": "running", "members": members, "events": []})
    assert "snapshot memory on the agents: 8.0 MiB (most: 5.0 MiB on node1)" in text.splitlines()
