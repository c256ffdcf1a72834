"""Standby trainers (`--standby-trainers`): each agent keeps a process per local rank with torch
imported; a trainer that died is replaced by turning that process into it, not by a cold start.
The agents' own lines say how each trainer was started, and the job stays bit-identical."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from procs import SCRIPTS, new_job_id, run_ftrain

pytestmark = pytest.mark.timeout(400)
INFO = {"FTRAIN_LOG_LEVEL": "INFO"}  # the agents' lines about how each trainer started


def launch(tmp_path: Path, name: str, script: str, *args: str, script_args: tuple[str, ...] = ()) -> tuple[dict, str]:
    out = tmp_path / f"{name}.pt"
    job = new_job_id(name)
    result = run_ftrain(["launch", "--nodes", "2", "--job-id", job, *args, "--", str(SCRIPTS / script), "--steps",
                         "16", *script_args, "--out", str(out)], job, timeout=300, env=INFO)
    assert result.returncode == 0, result.stdout[-8000:]
    return torch.load(out), result.stdout


def starts(output: str) -> tuple[int, int]:
    """(warm, cold) trainer starts over every agent, from their exit lines."""
    counts = [tuple(map(int, m)) for m in re.findall(r"started (\d+) trainer\(s\) warm from standbys and (\d+) cold",
                                                     output)]
    assert len(counts) == 2, output[-4000:]
    return sum(w for w, _ in counts), sum(c for _, c in counts)


@pytest.mark.parametrize("recovery, script, script_args", [
    ("inprocess", "ledger_job.py", ()),
    ("restart", "fsdp2_job.py", ("--ddp",)),  # a torchrun-style script: every trainer restarts
])
def test_a_killed_trainer_is_replaced_by_a_standby_bit_identically(tmp_path: Path, recovery: str, script: str,
                                                                     script_args: tuple[str, ...]) -> None:
    mode = ("--recovery", recovery)
    clean, _ = launch(tmp_path, "clean", script, *mode, script_args=script_args)
    # slowed (the math is the same), so the standbys, started once the first trainers are under way,
    # are ready long before the kill
    result, output = launch(tmp_path, "standby", script, *mode, "--standby-trainers", "--inject", "kill-rank:1@step=12",
                            script_args=(*script_args, "--step-sleep", "0.8"))
    for key in clean["params"]:
        assert torch.equal(clean["params"][key], result["params"][key]), key
    assert result["generation"] >= 1, output[-3000:]
    warm, cold = starts(output)
    # the first trainers start cold (nothing is ready yet); the replacements came from standbys
    assert cold == 2 and warm == (1 if recovery == "inprocess" else 2), output[-4000:]
    assert re.search(r"trainer 0 started warm, from standby pid \d+", output), output[-4000:]
    assert "failures 1, recoveries 1" in output, output[-3000:]
