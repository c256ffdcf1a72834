"""Erasure-coded snapshots in real jobs: multi-node loss, too many losses, corrupted shards."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ftrain.snapshot.placement import place_blobs
from procs import SCRIPTS, new_job_id, run_ftrain

pytestmark = pytest.mark.timeout(300)


def launch(tmp_path: Path, name: str, nodes: int, *extra: str, steps: int = 25, expect: int = 0):
    out = tmp_path / f"{name}.pt"
    job = new_job_id(name)
    result = run_ftrain(["launch", "--nodes", str(nodes), "--job-id", job, *extra, "--",
                         str(SCRIPTS / "ledger_job.py"), "--steps", str(steps), "--out", str(out)], job, timeout=280)
    assert result.returncode == expect, result.stdout[-8000:]
    return (torch.load(out) if out.exists() else None), result.stdout


def assert_identical(a: dict, b: dict) -> None:
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), f"parameter {key} differs from the failure-free run"


@pytest.fixture(scope="module")
def reference6(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return launch(tmp_path_factory.mktemp("ref6"), "ref6", 6)[0]


def test_two_nodes_lost_at_once_recover_bit_identical(reference6: dict, tmp_path: Path) -> None:
    result, output = launch(tmp_path, "two", 6, "--ec", "4+2", "--inject", "kill-node:1@step=10",
                            "--inject", "kill-node:2@step=10")
    assert result["generation"] >= 1 and result["world_size"] == 6
    assert_identical(reference6, result)


def test_three_nodes_lost_stops_with_clear_error(tmp_path: Path) -> None:
    _, output = launch(tmp_path, "three", 6, "--ec", "4+2", "--inject", "kill-node:1@step=10",
                       "--inject", "kill-node:2@step=10", "--inject", "kill-node:3@step=10", expect=1)
    assert "unrecoverable" in output and "Last committed step" in output and "lost shards" in output, output[-4000:]


def test_corrupted_shard_is_detected_and_rebuilt_from_parity(tmp_path: Path) -> None:
    nodes = [f"node{i}" for i in range(4)]
    holder = place_blobs(nodes, nodes, 2, 1)[2][0]  # the node holding data shard 0 of rank 2's blob
    reference, _ = launch(tmp_path, "ref4", 4)
    result, output = launch(tmp_path, "corrupt", 4, "--ec", "2+1", "--inject",
                            f"corrupt-shard:{nodes.index(holder)}@step=8", "--inject", "kill-node:2@step=14")
    assert "failed its checksum" in output and "rebuilt around bad shards" in output, output[-4000:]
    assert_identical(reference, result)
