"""Network partition of one node: each node (agent + trainers) runs in its own network namespace
joined to a bridge; node 1's link is cut mid-run (its processes keep running, packets vanish).
The coordinator finds it dead by missing heartbeats, the survivors abandon the collectives they
were blocked in, a replacement node joins in a fresh namespace, and the job finishes
bit-identical to the failure-free run. Needs root and iproute2 (`ip netns`)."""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.conftest import check_against_reference
from procs import SCRIPTS, coordinator_status, new_job_id, run_ftrain, stop_processes

pytestmark = pytest.mark.timeout(300)
TOKEN = "partition-test-token"
STEPS, SLEEP = 40, 0.08


def ip(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns, "ip"] if ns else ["ip"]) + list(args)
    subprocess.run(cmd, check=True, capture_output=True)


class Network:
    """A bridge in the root namespace and one namespace (veth + address) per node."""

    def __init__(self) -> None:
        self.tag = f"ft{random.randrange(10**4):04d}"
        self.subnet = f"10.{random.randrange(100, 200)}.{random.randrange(0, 250)}"
        self.bridge = f"{self.tag}br"
        self.namespaces: list[str] = []
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    @property
    def host(self) -> str:
        return f"{self.subnet}.1"

    def node(self, index: int) -> tuple[str, str]:
        ns, outer, inner = f"{self.tag}n{index}", f"{self.tag}v{index}", f"{self.tag}i{index}"
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        self.namespaces.append(ns)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", ns)
        ip("link", "set", outer, "master", self.bridge)
        ip("link", "set", outer, "up")
        address = f"{self.subnet}.{10 + index}"
        ip("addr", "add", f"{address}/24", "dev", inner, ns=ns)
        ip("link", "set", inner, "up", ns=ns)
        ip("link", "set", "lo", "up", ns=ns)
        return ns, address

    def cut(self, index: int) -> None:
        ip("link", "set", f"{self.tag}i{index}", "down", ns=f"{self.tag}n{index}")

    def close(self) -> None:
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


@pytest.fixture()
def network():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")
    try:
        net = Network()
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot create network namespaces here: {error.stderr.decode()[:200]}")
    yield net
    net.close()


def test_partitioned_node_is_replaced_and_the_job_stays_bit_identical(network: Network, tmp_path: Path) -> None:
    job_args = ["--steps", str(STEPS), "--step-sleep", str(SLEEP)]
    ref_job = new_job_id("ref")
    ref = run_ftrain(["launch", "--nodes", "3", "--job-id", ref_job, "--", str(SCRIPTS / "ledger_job.py"), *job_args,
                      "--out", str(tmp_path / "ref.pt")], ref_job, timeout=200)
    assert ref.returncode == 0, ref.stdout[-3000:]

    job = new_job_id("partition")
    env = dict(os.environ, FTRAIN_TOKEN=TOKEN, FTRAIN_JOB_ID=job, PYTHONUNBUFFERED="1", FTRAIN_CONNECT_TIMEOUT="20")
    coordinator_address = f"{network.host}:{29400 + random.randrange(500)}"
    log = open(tmp_path / "job.log", "w")
    processes: list[subprocess.Popen] = []

    def agent(index: int) -> subprocess.Popen:
        ns, address = network.node(index)
        process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "ftrain", "agent", "--coordinator", coordinator_address,
             "--host", address, "--node-id", f"node{index}", "--job-id", job, "--",
             str(SCRIPTS / "ledger_job.py"), *job_args, "--out", str(tmp_path / "final.pt")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        return process

    try:
        host, port = coordinator_address.split(":")
        coordinator = subprocess.Popen(
            [sys.executable, "-m", "ftrain", "coordinator", "--host", host, "--port", port, "--nodes", "3",
             "--job-id", job, "--heartbeat-timeout", "3"], env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append(coordinator)
        survivors = [agent(0), agent(1), agent(2)]
        deadline = time.monotonic() + 150
        while not ((state := coordinator_status(coordinator_address, TOKEN)) and state["last_committed_step"] >= 10):
            assert time.monotonic() < deadline and coordinator.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
            time.sleep(0.1)
        network.cut(1)
        cut_at = time.monotonic()
        detected = None
        while detected is None:
            state = coordinator_status(coordinator_address, TOKEN)
            if state and any(m["node"] == "node1" and not m["alive"] for m in state["members"]):
                detected = time.monotonic() - cut_at
            assert time.monotonic() < deadline, (tmp_path / "job.log").read_text()[-3000:]
            time.sleep(0.1)
        agent(3)  # the replacement, in a fresh namespace
        recovered = None
        while recovered is None:
            state = coordinator_status(coordinator_address, TOKEN)
            if state and state["generation"] >= 1 and state["world_size"] == 3:
                recovered = time.monotonic() - cut_at
            assert time.monotonic() < deadline, (tmp_path / "job.log").read_text()[-3000:]
            time.sleep(0.1)
        for process in (survivors[0], survivors[2], processes[-1]):
            assert process.wait(timeout=120) == 0, (tmp_path / "job.log").read_text()[-4000:]
        assert coordinator.wait(timeout=60) == 0
    finally:
        stop_processes(processes, job)
        log.close()
    log_text = (tmp_path / "job.log").read_text()
    # the survivors' trainers keep pulsing while the group they shared with the cut node is freed
    # (its destructor waits on that node for the collective timeout, on a reaper thread only)
    assert "frozen" not in log_text, log_text[-4000:]
    check_against_reference(tmp_path, "network partition of one node", detected, recovered)
