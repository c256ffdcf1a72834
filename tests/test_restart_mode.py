"""Restart recovery (`ftrain launch --recovery restart`) for torchrun-style scripts: every failure
restarts every trainer from the top of its script, with torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT of a rendezvous store fresh for the generation), so a script
that calls dist.init_process_group() and builds its own FSDP2 or DDP runs unchanged; ftrain.init
adopts that group and each rank snapshots its own shards. Compared with plain torchrun, and with
the same job without the failure (bit-identical)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from procs import REPO, SCRIPTS, kill_job, new_job_id, run_ftrain, run_torchrun, wait_until

pytestmark = pytest.mark.timeout(400)
SCRIPT = str(SCRIPTS / "fsdp2_job.py")
STEPS = 20


def launch(tmp_path: Path, name: str, *launch_args: str, nodes: int = 4, script_args: tuple[str, ...] = (),
           env: dict[str, str] | None = None, steps: int = STEPS) -> tuple[dict, str]:
    out = tmp_path / f"{name}.pt"
    job = new_job_id(name)
    result = run_ftrain(["launch", "--nodes", str(nodes), "--job-id", job, "--recovery", "restart", *launch_args,
                         "--", SCRIPT, "--steps", str(steps), *script_args, "--out", str(out)], job, timeout=300,
                        env=env)
    assert result.returncode == 0, result.stdout[-8000:]
    return torch.load(out), result.stdout


def torchrun(tmp_path: Path, name: str, *script_args: str, nproc: int = 4, steps: int = STEPS) -> dict:
    out = tmp_path / f"{name}.pt"
    run_torchrun(SCRIPT, ["--steps", str(steps), *script_args], out, nproc, teardown_abort_ok=True)
    return torch.load(out)


def assert_identical(a: dict, b: dict, ledger: bool = True) -> None:
    assert a["params"].keys() == b["params"].keys()
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), \
            f"{key}: max diff {(a['params'][key] - b['params'][key]).abs().max():.3g}"
    if ledger:
        assert a["ledger"] == b["ledger"]


def assert_same_optimizer_state(a: dict, b: dict) -> None:
    """Two optimizer state dicts keyed by parameter names (get_optimizer_state_dict's layout)."""
    assert a["state"].keys() == b["state"].keys() and a["state"]
    for name, entry in a["state"].items():
        assert entry.keys() == b["state"][name].keys(), name
        for key, value in entry.items():
            assert torch.equal(value, b["state"][name][key]), f"{name} {key}"
    assert [g["params"] for g in a["param_groups"]] == [g["params"] for g in b["param_groups"]]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The failure-free run; its durable checkpoints too (the tier never changes the training)."""
    root = tmp_path_factory.mktemp("ref")
    result, output = launch(root, "ref", "--checkpoint-dir", str(root / "ckpt"), "--checkpoint-every", "10")
    assert result["generation"] == 0 and result["resumed_from"] is None, output[-3000:]
    return result, root / "ckpt"


@pytest.fixture(scope="module")
def reference(reference_run: tuple[dict, Path]) -> dict:
    return reference_run[0]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP's note on loading in one process
def test_fsdp2_checkpoint_in_dcp_format_holds_the_whole_model(reference_run: tuple[dict, Path]) -> None:
    """Each rank's own shards, put together: the DCP copy of the last checkpoint is the model the
    job gathered with get_model_state_dict(full_state_dict=True), exactly."""
    from torch.distributed.checkpoint import format_utils

    from ftrain.snapshot import durable

    result, directory = reference_run
    checkpoint, _ = durable.newest_complete(str(directory))
    assert checkpoint is not None and checkpoint.step == STEPS and checkpoint.world_size == 4
    whole_pt = directory / "whole.pt"
    format_utils.dcp_to_torch_save(str(Path(checkpoint.path) / "dcp"), str(whole_pt))
    whole = torch.load(whole_pt, weights_only=False)
    assert whole["model"].keys() == result["params"].keys()
    for name, tensor in result["params"].items():
        assert torch.equal(whole["model"][name], tensor), name
    assert whole["ftrain"]["step"] == STEPS
    # the AdamW state too, keyed by parameter names as torch's get_optimizer_state_dict keys it
    assert_same_optimizer_state(whole["optimizer"], result["optim"])


def test_fsdp2_checkpoint_resumes_on_another_world_size_as_torchrun_resumes_it(tmp_path: Path) -> None:
    """`--resume` of a 4-rank FSDP2 checkpoint on 2 ranks: DCP reshards the parameters and the
    AdamW state, and the job goes on exactly as plain torchrun does when it resumes the
    checkpoint's DCP copy with torch's own recipe (get_state_dict, dcp.load, set_state_dict) on 2
    ranks; every sample is used once. Dropout is off: which rank's RNG a resharded rank continues
    with is ftrain's choice, not torch's."""
    from ftrain.snapshot import durable
    from ledgers import assert_exactly_once

    directory, no_dropout = tmp_path / "ckpt", ("--dropout", "0")
    launch(tmp_path, "four", "--checkpoint-dir", str(directory), "--checkpoint-every", "10", steps=10,
           script_args=no_dropout)
    checkpoint, _ = durable.newest_complete(str(directory))
    assert checkpoint is not None and (checkpoint.step, checkpoint.world_size) == (10, 4) and checkpoint.dcp
    resumed, output = launch(tmp_path, "two", "--resume", str(directory), nodes=2, script_args=no_dropout)
    assert (resumed["world_size"], resumed["resumed_from"], resumed["generation"]) == (2, 10, 0), output[-3000:]
    reference = torchrun(tmp_path, "two-torchrun", *no_dropout, "--load-dcp", checkpoint.dcp, "--from-step", "10",
                         "--from-world", "4", nproc=2)
    assert_identical(reference, resumed, ledger=False)  # the reference counts only the steps it ran
    assert_same_optimizer_state(reference["optim"], resumed["optim"])
    assert_exactly_once({"samples": 512, "batch_size": 16, "seed": 5, "world_sizes": [4] * 10 + [2] * (STEPS - 10),
                         "ledger": resumed["ledger"]})


def test_an_fsdp2_resume_on_another_world_size_falls_back_to_the_newest_checkpoint_with_a_dcp_copy(
        tmp_path: Path) -> None:
    """With `--checkpoint-dcp-every 2` every other checkpoint has a DCP copy. A 4-rank FSDP2 job
    SIGKILLed whole once a checkpoint without one is complete, resumed on 2 ranks: that
    checkpoint's per-rank files cannot be resharded, so once its restores failed the job resumes
    the older checkpoint that has a copy, and ends exactly as plain torchrun resumed from it."""
    from ftrain.snapshot import durable

    directory, no_dropout = tmp_path / "ckpt", ("--dropout", "0")
    job = new_job_id("killed-fsdp2")
    command = [sys.executable, "-m", "ftrain", "launch", "--nodes", "4", "--job-id", job, "--recovery", "restart",
               "--checkpoint-dir", str(directory), "--checkpoint-every", "10", "--checkpoint-dcp-every", "2", "--",
               SCRIPT, "--steps", "200", *no_dropout, "--step-sleep", "0.3", "--out", str(tmp_path / "never.pt")]
    process = subprocess.Popen(command, cwd=str(REPO), env=dict(os.environ, FTRAIN_JOB_ID=job),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def newest_lacks_a_copy() -> bool:
        checkpoint, _ = durable.newest_complete(str(directory), verify=False)
        return checkpoint is not None and not checkpoint.dcp and bool(durable.older_complete(str(directory),
                                                                                               checkpoint.step))
    try:
        found = wait_until(lambda: newest_lacks_a_copy() or process.poll() is not None, timeout=240, interval=0.05)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher, coordinator, agents and trainers at once
        except ProcessLookupError:
            pass
        kill_job(job)
        output = process.communicate()[0]
    assert found and process.returncode == -signal.SIGKILL, output[-3000:]
    newest, _ = durable.newest_complete(str(directory))
    assert newest is not None and not newest.dcp and newest.world_size == 4, newest
    older = [c for c in durable.older_complete(str(directory), newest.step) if c.dcp]
    assert older, "no older checkpoint with a DCP copy"
    events = tmp_path / "events"
    resumed, output = launch(tmp_path, "two", "--resume", str(directory), "--events-file", str(events), nodes=2,
                             script_args=no_dropout, steps=older[0].step + 10)
    assert (resumed["world_size"], resumed["resumed_from"]) == (2, older[0].step), output[-3000:]
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert kinds.count("resume-fallback") == 1 and "restore-failed" in kinds, kinds
    # the failed restores' processes, which ask to join again before their agents restart them, never
    # form a generation of their own (it held dead ranks until the pulse check killed them)
    assert "failure" not in kinds, kinds
    reference = torchrun(tmp_path, "two-torchrun", *no_dropout, "--load-dcp", older[0].dcp, "--from-step",
                         str(older[0].step), "--from-world", "4", nproc=2, steps=older[0].step + 10)
    assert_identical(reference, resumed, ledger=False)  # the reference counts only the steps it ran
    assert_same_optimizer_state(reference["optim"], resumed["optim"])


def test_fsdp2_script_under_ftrain_equals_plain_torchrun(tmp_path: Path, reference: dict) -> None:
    assert_identical(torchrun(tmp_path, "torchrun"), reference)


@pytest.mark.parametrize("fault", ["kill-node:2@step=8", "kill-rank:1@step=11"])
def test_fsdp2_job_restarted_after_a_failure_is_bit_identical(tmp_path: Path, reference: dict, fault: str) -> None:
    events = tmp_path / "events"
    result, output = launch(tmp_path, "fault", "--inject", fault, "--events-file", str(events),
                            env={"FTRAIN_LOG_LEVEL": "INFO"})
    assert_identical(reference, result)
    assert result["generation"] >= 1 and result["resumed_from"] is not None  # a fresh process, restored
    # rank 0's restarted process read its own blob back whole from its node's shared memory
    assert result["full_copy_restores"] == 1 and result["shm_restores"] == 1
    served = [tuple(map(int, m)) for m in re.findall(r"served (\d+) shard\(s\) and (\d+) whole cop", output)]
    assert len(served) >= 4, output[-3000:]  # every agent's count, as it exits
    assert sum(whole for _, whole in served) == 0  # no whole copy went over the network
    if fault.startswith("kill-rank"):  # every restarted rank restored from its own node: nothing fetched at all
        assert sum(shards for shards, _ in served) == 0, served
    text = events.read_text()
    assert '"restart"' in text and "restarting every trainer" in text
    assert "failures 1, recoveries 1" in output, output[-3000:]


def test_torchrun_style_ddp_script_survives_a_lost_node_bit_identically(tmp_path: Path) -> None:
    # 2 ranks: the script's own DDP reduces the first step after a restart in its initial bucket
    # order (it rebuilds its buckets after one backward), and with 3+ ranks gloo's ring then sums an
    # element in another order (1 ulp); two addends sum alike in any order (see README)
    clean, _ = launch(tmp_path, "ddp", script_args=("--ddp",), nodes=2)
    assert_identical(torchrun(tmp_path, "ddp-torchrun", "--ddp", nproc=2), clean)
    result, output = launch(tmp_path, "ddp-fault", "--inject", "kill-node:1@step=9", script_args=("--ddp",), nodes=2)
    assert_identical(clean, result)
    assert result["generation"] >= 1, output[-3000:]


def test_own_process_group_needs_restart_mode(tmp_path: Path) -> None:
    """A script that makes its own group under in-process recovery fails at once, saying what to do."""
    job = new_job_id("own")
    result = run_ftrain(["launch", "--nodes", "1", "--job-id", job, "--", SCRIPT, "--steps", "2", "--out",
                         str(tmp_path / "x.pt")], job, timeout=120)
    assert result.returncode != 0
    assert "environment variable RANK expected" in result.stdout or "--recovery restart" in result.stdout, \
        result.stdout[-3000:]


@pytest.mark.slow
def test_fsdp2_six_nodes_two_lost_at_once(tmp_path: Path) -> None:
    clean, _ = launch(tmp_path, "six", "--ec", "4+2", nodes=6)
    result, output = launch(tmp_path, "six-lost", "--ec", "4+2", "--inject", "kill-node:1@step=9", "--inject",
                            "kill-node:4@step=9", nodes=6)
    assert_identical(clean, result)
    assert "survives 2 node losses" in output, output[-3000:]
