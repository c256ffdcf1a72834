"""A real torchrun + DDP loop's idioms under ftrain, compared with the real thing.

Each comparison runs the same script (tests/scripts/loop_idioms.py) under `torchrun
--nproc-per-node 2` with its own DistributedDataParallel (gloo) and under `ftrain launch --nodes
2`, fed the same batches: gradient clipping must see DDP's averaged gradients, accumulation with
no_sync() must equal DDP's (also under torch.compile), GradScaler may skip steps, `break` ends the job, a long pause on one
rank is not a hang, and DataLoader workers keep exactly-once sampling across a lost node.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from procs import REPO, SCRIPTS, new_job_id, run_ftrain, run_torchrun

pytestmark = pytest.mark.timeout(400)
SCRIPT = str(SCRIPTS / "loop_idioms.py")


def torchrun(tmp_path: Path, name: str, *args: str, nproc: int = 2) -> dict:
    out = tmp_path / f"{name}.pt"
    run_torchrun(SCRIPT, list(args), out, nproc, teardown_abort_ok=True)
    return torch.load(out)


def launch(tmp_path: Path, name: str, *args: str, nodes: int = 2, launch_args: tuple[str, ...] = (),
           expect_ok: bool = True, timeout: float = 300) -> tuple[dict | None, str]:
    out = tmp_path / f"{name}.pt"
    job = new_job_id(name)
    events = tmp_path / f"{name}.events"
    result = run_ftrain(["launch", "--nodes", str(nodes), "--job-id", job, "--events-file", str(events),
                         *launch_args, "--", SCRIPT, *args, "--out", str(out)], job, timeout=timeout)
    if expect_ok:
        assert result.returncode == 0, result.stdout[-8000:]
    return (torch.load(out) if out.exists() else None), result.stdout


def read_events(tmp_path: Path, name: str) -> list[dict]:
    path = tmp_path / f"{name}.events"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def assert_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    for key in a["params"]:
        assert torch.allclose(a["params"][key], b["params"][key], atol=atol, rtol=0), \
            f"{key}: max diff {(a['params'][key] - b['params'][key]).abs().max():.3g}"


def assert_identical(a: dict, b: dict) -> None:
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), f"parameter {key} differs from the failure-free run"


@pytest.mark.parametrize("idiom", [("--clip", "0.5"), ("--clip", "0.5", "--accum", "4"),
                                   ("--clip", "0.5", "--accum", "2", "--compile")], ids=["clip", "accum", "compile"])
def test_clipping_and_accumulation_match_torchrun_ddp(tmp_path: Path, idiom: tuple[str, ...]) -> None:
    reference = torchrun(tmp_path, "ddp", *idiom)
    result, _ = launch(tmp_path, "ft", *idiom)
    assert max(reference["norms"]) > 0.5, "the clipping norm is never reached: the test would not see a difference"
    assert torch.allclose(torch.tensor(result["norms"]), torch.tensor(reference["norms"]), atol=1e-6, rtol=1e-6), \
        "the gradient norm each rank sees differs from DDP's"
    assert_close(result, reference)


def test_gradscaler_skips_steps_plain_and_fused(tmp_path: Path) -> None:
    for fused in ((), ("--fused",)):
        out = tmp_path / "plain.pt"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FTRAIN_")}
        done = subprocess.run([sys.executable, SCRIPT, "--amp", *fused, "--steps", "16", "--out", str(out)],
                              env=env, cwd=str(REPO), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        result = torch.load(out)
        assert result["skipped"], "GradScaler never skipped a step: init_scale too small for the test"
        assert all(torch.isfinite(p).all() for p in result["params"].values()), f"non-finite parameters ({fused})"


def test_amp_fused_workers_survive_kill_node_bit_identical_and_exactly_once(tmp_path: Path) -> None:
    args = ("--amp", "--fused", "--clip", "0.5", "--workers", "2", "--noise", "--steps", "30")
    reference, _ = launch(tmp_path, "ref", *args, nodes=3)
    assert reference["skipped"] and all(torch.isfinite(p).all() for p in reference["params"].values())
    result, _ = launch(tmp_path, "kill", *args, nodes=3, launch_args=("--inject", "kill-node:1@step=17"))
    assert result["generation"] >= 1, "the failure did not happen"
    assert_identical(reference, result)
    assert result["skipped"] == reference["skipped"]
    counts = result["counts"]
    assert set(counts.values()) == {1}, "a sample was used twice in one epoch"
    per_epoch = collections.Counter(key.split(":")[0] for key in counts)
    last = max(int(e) for e in per_epoch)
    assert all(per_epoch[str(e)] == result["samples"] for e in range(last)), f"an epoch lost samples: {per_epoch}"


def test_break_on_every_rank_ends_the_job_with_a_final_snapshot(tmp_path: Path) -> None:
    result, output = launch(tmp_path, "brk", "--break-at", "9", "--steps", "40")
    assert result["step"] == 10, "the step of the break counts as done"
    assert "last committed step 10" in output, output[-3000:]
    complete = [e for e in read_events(tmp_path, "brk") if e["kind"] == "job-complete"]
    assert complete and "finished at step 10" in complete[0]["message"]


def test_break_on_one_rank_only_fails_with_a_clear_message(tmp_path: Path) -> None:
    _, output = launch(tmp_path, "brk1", "--break-at", "6", "--break-rank", "0", "--steps", "40", expect_ok=False,
                       timeout=200)
    assert "every rank must leave the loop at the same step" in output.splitlines()[-1], output[-3000:]


def test_long_pause_is_not_a_hang_but_a_frozen_rank_is_caught_in_seconds(tmp_path: Path) -> None:
    result, _ = launch(tmp_path, "pause", "--pause-at", "4", "--pause-s", "60", "--steps", "8", timeout=300)
    assert result["generation"] == 0, "a 60 s pause on rank 0 was treated as a failure"
    _, _ = launch(tmp_path, "frozen", "--steps", "30", launch_args=("--inject", "hang-rank:1@step=10"), timeout=200)
    events = read_events(tmp_path, "frozen")
    injected = next(e for e in events if e["kind"] == "inject")
    caught = next(e for e in events if e.get("failure_kind") == "hang")
    assert caught["rank"] == 1 and "frozen" in caught["message"]
    assert caught["time"] - injected["time"] < 10.0, f"frozen rank caught after {caught['time'] - injected['time']:.1f} s"


def test_ported_torchrun_example_survives_kill_node(tmp_path: Path) -> None:
    job = new_job_id("example")
    result = run_ftrain(["launch", "--nodes", "3", "--job-id", job, "--inject", "kill-node:1@step=30", "--",
                         str(REPO / "examples" / "ddp_loop.py"), "--steps", "40"], job, timeout=240)
    assert result.returncode == 0, result.stdout[-6000:]
    assert "done at step 40" in result.stdout and "recoveries 1" in result.stdout, result.stdout[-3000:]
