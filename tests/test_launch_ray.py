"""`ftrain launch --backend ray`: agents as Ray actors on one local Ray instance (num_cpus=2, 127.0.0.1).

An agent actor killed with `ray.kill(actor, no_restart=False)` mid-run, or a node killed by
`kill-node` (which makes the actor exit so Ray restarts it), is restarted by Ray, rejoins as the
replacement, and the job ends with parameters equal (torch.equal) to the failure-free run.
One Ray instance for the whole module. Skipped when Ray is not installed, unless FTRAIN_REQUIRE_RAY=1.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ftrain.config import ConfigError, JobSettings, parse_fault
from procs import SCRIPTS, kill_job, new_job_id

pytestmark = pytest.mark.timeout(180)
STEPS = 200  # ~5 s of training after start-up: room to kill an actor mid-run
REQUIRE_ENV = "FTRAIN_REQUIRE_RAY"


def test_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from ftrain.launch import ray as ray_backend

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'ftrain\[ray\]'"):
        ray_backend.require_ray()


@pytest.fixture(scope="module")
def ray_instance():
    try:
        import ray
    except ImportError:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but Ray is not installed (pip install 'ftrain[ray]')")
        pytest.skip(f"Ray not installed (pip install 'ftrain[ray]'); set {REQUIRE_ENV}=1 to make this an error")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


class Run:
    """A RayLauncher running in a background thread of the test process."""

    def __init__(self, tmp_path: Path, name: str, *inject: str) -> None:
        from ftrain.launch.ray import RayLauncher

        self.job = new_job_id(name)
        self.out = tmp_path / f"{name}.pt"
        settings = JobSettings(job_id=self.job, target_nodes=3, min_nodes=3, replace_timeout_s=60.0,
                               inject=tuple(parse_fault(spec) for spec in inject)).validate()
        self.launcher = RayLauncher(settings, 1, [str(SCRIPTS / "ledger_job.py"), "--steps", str(STEPS),
                                                  "--out", str(self.out)],
                                    cpus_per_node=0.5, replace_delay_s=0.5, timeout_s=150, log_level="INFO")
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.launcher.run()

    def start(self) -> "Run":
        self.thread.start()
        return self

    def finish(self) -> dict:
        try:
            self.thread.join(timeout=170)
            assert not self.thread.is_alive(), "the ray job did not finish"
        finally:
            kill_job(self.job)  # bootstraps, agents and trainers left by a failed run
        state = self.launcher.coordinator.state
        assert self.code == 0, f"job {state.job_state}: {state.message}; events {list(state.events)[-8:]}"
        return torch.load(self.out)

    @property
    def committed(self) -> int:
        return self.launcher.coordinator.state.machine.catalog.newest_committed


def assert_replaced_by_same_actor(state, lost: str) -> None:
    """The lost node's actor (node ids are `ray{index}-{random}`) came back as a new, live node."""
    nodes = state.membership.nodes
    assert not nodes[lost].alive
    prefix = lost.rsplit("-", 1)[0] + "-"
    successors = [node_id for node_id, node in nodes.items() if node_id.startswith(prefix) and node.alive]
    assert len(successors) == 1 and successors[0] != lost, sorted(nodes)
    assert len(nodes) == 4, sorted(nodes)


def assert_identical(reference: dict, result: dict) -> None:
    assert reference["params"].keys() == result["params"].keys()
    for key in reference["params"]:
        assert torch.equal(reference["params"][key], result["params"][key]), f"{key} differs from the failure-free run"


@pytest.fixture(scope="module")
def reference(ray_instance, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = Run(tmp_path_factory.mktemp("rayref"), "rayref").start()
    result = run.finish()
    launcher = run.launcher
    assert launcher.strategy == "PACK"  # a one-machine cluster: PACK
    assert launcher.coordinator.host == "127.0.0.1"
    assert all(node.address.startswith("127.0.0.1:") for node in launcher.coordinator.state.machine.membership.nodes.values())
    assert result["generation"] == 0
    return result


def test_killed_actor_is_restarted_and_job_is_bit_identical(ray_instance, reference: dict, tmp_path: Path) -> None:
    from ftrain.launch.ray import RAY_NAMESPACE, actor_name

    ray = ray_instance
    run = Run(tmp_path, "raykill").start()
    deadline = time.monotonic() + 150
    while run.committed < 10 and run.thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert run.committed < STEPS, "the job finished before the kill"
    actor = ray.get_actor(actor_name(run.job, 1), namespace=RAY_NAMESPACE)
    old = ray.get(actor.info.remote(), timeout=30)
    ray.kill(actor, no_restart=False)
    result = run.finish()
    state = run.launcher.coordinator.state.machine
    assert state.failures >= 1 and state.recoveries >= 1
    assert result["generation"] >= 1 and result["world_size"] == 3
    assert_replaced_by_same_actor(state, old["node_id"])
    assert_identical(reference, result)


def test_kill_node_restarts_the_actor_bit_identical(ray_instance, reference: dict, tmp_path: Path) -> None:
    run = Run(tmp_path, "raynode", "kill-node:2@step=40").start()
    result = run.finish()
    state = run.launcher.coordinator.state.machine
    assert state.failures >= 1 and result["generation"] >= 1 and result["world_size"] == 3
    dead = [node_id for node_id, node in state.membership.nodes.items() if not node.alive]
    assert len(dead) == 1, dead
    assert_replaced_by_same_actor(state, dead[0])
    assert_identical(reference, result)
