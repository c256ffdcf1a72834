"""The durable tier on real jobs: agents write committed snapshots to --checkpoint-dir in the
background; a job killed whole (launcher, agents, trainers: SIGKILL) resumes with `ftrain launch
--resume` bit-identically (same world size) or with every sample exactly once (fewer nodes); a
torn or corrupted checkpoint is never resumed from; an unwritable directory costs a warning and
a metric, never the training."""
from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import format_utils

from ftrain.snapshot import durable
from ledgers import assert_exactly_once
from procs import REPO, SCRIPTS, free_port, job_pids, kill_job, new_job_id, run_ftrain, wait_until

pytestmark = pytest.mark.timeout(400)
STEPS = 40
JOB = [str(SCRIPTS / "ledger_job.py"), "--steps", str(STEPS)]


def launch(tmp_path: Path, name: str, *launch_args: str, nodes: int = 3, script_args: tuple[str, ...] = ()) -> tuple[dict, str]:
    out = tmp_path / f"{name}.pt"
    job = new_job_id(name)
    result = run_ftrain(["launch", "--nodes", str(nodes), "--job-id", job, *launch_args, "--", *JOB, *script_args,
                         "--out", str(out)], job, timeout=240)
    assert result.returncode == 0, result.stdout[-6000:]
    return torch.load(out), result.stdout


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def assert_identical(a: dict, b: dict) -> None:
    for key in a["params"]:
        assert torch.equal(a["params"][key], b["params"][key]), f"parameter {key} differs from the uninterrupted run"
    assert a["ledger"] == b["ledger"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return launch(tmp_path_factory.mktemp("ref"), "ref")[0]


def watch_created(directory: Path) -> Callable[[float], list[str]]:
    """inotify on `directory` (which must exist): a function that waits up to its argument's
    seconds for entries to be created there and returns their names (polling would be too slow to
    catch a checkpoint of a small state while it is being written)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0 and libc.inotify_add_watch(fd, str(directory).encode(), 0x100) >= 0  # IN_CREATE

    def created(timeout: float) -> list[str]:
        if not select.select([fd], [], [], timeout)[0]:
            return []
        data, names = os.read(fd, 65536), []
        while data:
            _wd, _mask, _cookie, length = struct.unpack("iIII", data[:16])
            names.append(data[16:16 + length].rstrip(b"\0").decode())
            data = data[16 + length:]
        return names

    return created


@pytest.fixture(scope="module")
def killed_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint directory of a 3-node job SIGKILLed whole once two checkpoints are complete,
    while the next one is being written (a real torn checkpoint: `step-N.partial`). Steps of 1 s
    leave each checkpoint 10 s to complete before the next is due: under the full suite's load a
    checkpoint took more than 4 s, the next one was skipped as busy, and the job ended first. No
    DCP copy: its helper runs at nice 19 and starves under that load; the resumes here read the
    rank files (test_a_completed_job_... checks the copy)."""
    root = tmp_path_factory.mktemp("killed")
    directory = root / "ckpt"
    job = new_job_id("killed")
    command = [sys.executable, "-m", "ftrain", "launch", "--nodes", "3", "--job-id", job, "--checkpoint-dir",
               str(directory), "--checkpoint-every", "10", "--checkpoint-dcp-every", "0", "--", *JOB, "--step-sleep",
               "1.0", "--out",
               str(root / "never.pt")]
    process = subprocess.Popen(command, cwd=str(REPO), env=dict(os.environ, FTRAIN_JOB_ID=job),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert wait_until(lambda: directory.is_dir() or process.poll() is not None, timeout=120)
        created = watch_created(directory)
        deadline = time.monotonic() + 180
        writing: Path | None = None
        while writing is None and process.poll() is None and time.monotonic() < deadline:
            for name in created(1.0):
                if name.endswith(durable.PARTIAL) and len(complete(directory)) >= 2:
                    writing = directory / name
        assert writing is not None and process.poll() is None, "the job ended before a third checkpoint began"
        # with no DCP copy to write no agent starts its helper (its torch import stalled every step)
        assert not dcp_helpers(job), "an agent started its DCP helper for checkpoints that have no copy"
    finally:
        kill_group(process)  # the launcher, its coordinator, the agents and their trainers: all at once
        kill_job(job)
        output = process.communicate()[0]
    assert not (root / "never.pt").exists(), output[-3000:]
    assert writing.is_dir() and not (directory / writing.name.removesuffix(durable.PARTIAL)).exists(), output[-3000:]
    return directory


def dcp_helpers(job: str) -> list[int]:
    """PIDs of the job's DCP helper processes (`python -m ftrain.agent.dcp_export`)."""
    helpers = []
    for pid in job_pids(job):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"ftrain.agent.dcp_export" in f.read():
                    helpers.append(pid)
        except OSError:
            continue
    return helpers


def complete(directory: Path) -> list[str]:
    """The complete checkpoints' directory names, oldest first."""
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.endswith(durable.PARTIAL))


def torn(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(durable.PARTIAL))


def test_a_job_killed_whole_resumes_bit_identically(tmp_path: Path, reference: dict, killed_job: Path) -> None:
    checkpoint, passed = durable.newest_complete(str(killed_job))
    # the checkpoint the kill interrupted mid-write is passed over: the newest complete one is used
    assert checkpoint is not None and Path(checkpoint.path).name == complete(killed_job)[-1]
    assert 10 <= checkpoint.step < STEPS and checkpoint.world_size == 3
    assert passed == [f"{path}: incomplete (interrupted while being written)" for path in torn(killed_job)], passed
    result, output = launch(tmp_path, "resumed", "--resume", str(killed_job))
    assert_identical(reference, result)
    assert result["generation"] == 0 and result["step"] == STEPS and result["resumed_from"] == checkpoint.step
    assert reference["resumed_from"] is None
    assert f"resumed from the durable checkpoint of step {checkpoint.step}" in output, output[-3000:]


def test_a_job_killed_whole_resumes_on_fewer_nodes_with_every_sample_once(tmp_path: Path, killed_job: Path) -> None:
    checkpoint, _ = durable.newest_complete(str(killed_job))
    assert checkpoint is not None
    result, _ = launch(tmp_path, "resumed2", "--resume", str(killed_job), nodes=2)
    assert result["world_sizes"][:checkpoint.step] == [3] * checkpoint.step
    assert result["world_sizes"][checkpoint.step:] == [2] * (STEPS - checkpoint.step)
    assert_exactly_once(result)


def test_a_torn_or_corrupted_checkpoint_is_never_resumed_from(tmp_path: Path, reference: dict,
                                                              killed_job: Path) -> None:
    directory = tmp_path / "ckpt"
    shutil.copytree(killed_job, directory)
    assert len(complete(directory)) == 2, complete(directory)  # --checkpoint-keep 2
    older, newest = complete(directory)
    # the newest is corrupted on disk; a newer one was being written when the job died (killed_job)
    corrupted = directory / newest / durable.part_name(1)
    data = bytearray(corrupted.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupted.write_bytes(bytes(data))
    [interrupted] = torn(directory)  # left by the kill
    events = tmp_path / "events"
    result, output = launch(tmp_path, "fallback", "--resume", str(directory), "--events-file", str(events))
    assert_identical(reference, result)
    passed = [json.loads(line) for line in events.read_text().splitlines() if '"checkpoint-passed-over"' in line]
    assert [e["message"] for e in passed] == [f"{interrupted}: incomplete (interrupted while being written)",
                                              f"{corrupted} failed its checksum (corrupted)"]
    assert f"resumed from the durable checkpoint of step {int(older.split('-')[1])}" in output
    assert f"{corrupted} failed its checksum" in output  # the warning names the file


def test_resume_with_nothing_to_resume_from_fails_fast_with_the_reason(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    job = new_job_id("nothing")
    started = time.monotonic()
    result = run_ftrain(["launch", "--nodes", "1", "--job-id", job, "--resume", str(empty), "--", *JOB,
                         "--out", str(tmp_path / "x.pt")], job, timeout=60)
    assert result.returncode == 2 and time.monotonic() - started < 20
    assert f"--resume {empty}: no complete checkpoint there" in result.stdout, result.stdout


def metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.parametrize("trouble", ["read-only", "disk-full"])
def test_an_unwritable_checkpoint_dir_warns_and_training_goes_on(tmp_path: Path, reference: dict, trouble: str) -> None:
    mount = tmp_path / "mnt"
    mount.mkdir()
    options = "ro,size=1m" if trouble == "read-only" else "size=8k"
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        port = free_port()
        job = new_job_id(trouble)
        events = tmp_path / "events"
        out = tmp_path / "out.pt"
        command = [sys.executable, "-m", "ftrain", "launch", "--nodes", "3", "--job-id", job, "--metrics-port",
                   str(port), "--checkpoint-dir", str(mount), "--checkpoint-every", "10", "--events-file", str(events),
                   "--", *JOB, "--step-sleep", "0.1", "--out", str(out)]
        process = subprocess.Popen(command, cwd=str(REPO), env=dict(os.environ, FTRAIN_JOB_ID=job),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            name = f'ftrain_checkpoint_failures_total{{reason="{trouble}"}}'
            seen = wait_until(lambda: metric(port, name) >= 1 or process.poll() is not None, timeout=120, interval=0.2)
            failures = metric(port, name)
            output = process.communicate(timeout=180)[0]
        finally:
            kill_group(process)
            kill_job(job)
        assert seen and failures >= 1, output[-4000:]
        assert process.returncode == 0, output[-4000:]
        assert_identical(reference, torch.load(out))
        failed = [json.loads(line) for line in events.read_text().splitlines() if '"checkpoint-failed"' in line]
        assert failed and {e["reason"] for e in failed} == {trouble}
        assert "could not write rank" in output and "no durable checkpoint written" in output, output[-4000:]
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP's note on loading in one process
def test_a_completed_job_leaves_its_last_step_and_a_longer_run_continues_from_it(tmp_path: Path,
                                                                                   reference: dict) -> None:
    directory = tmp_path / "ckpt"
    events = tmp_path / "events"
    short, output = launch(tmp_path, "short", "--checkpoint-dir", str(directory), "--checkpoint-every", "10",
                           "--checkpoint-dcp-every", "2", "--events-file", str(events), script_args=("--steps", "25"))
    checkpoint, passed = durable.newest_complete(str(directory))
    assert checkpoint is not None and checkpoint.step == 25 and passed == [], output[-3000:]
    # --checkpoint-dcp-every 2: step 10's checkpoint (the first) and 25's (the last) have a DCP copy, 20's none
    middle = directory / durable.checkpoint_name(20)
    if middle.exists():  # (unless it was skipped as busy)
        assert json.loads((middle / durable.MANIFEST).read_text())["dcp"] == "" and not (middle / "dcp").exists()
    # the same state in DCP format, loaded with torch's own tools and no ftrain: the job's final model
    assert json.loads((Path(checkpoint.path) / durable.MANIFEST).read_text())["dcp"] == "dcp"
    state = {"model": {name: torch.zeros_like(t) for name, t in short["params"].items()}}
    dcp.load(state, checkpoint_id=str(Path(checkpoint.path) / "dcp"), no_dist=True)
    for name, tensor in short["params"].items():
        assert torch.equal(state["model"][name], tensor), name
    format_utils.dcp_to_torch_save(str(Path(checkpoint.path) / "dcp"), str(tmp_path / "whole.pt"))
    whole = torch.load(tmp_path / "whole.pt", weights_only=False)
    assert whole["ftrain"]["step"] == 25 and whole["ftrain"]["world_size"] == 3
    # the optimizer state keyed by parameter names, as torch's get_optimizer_state_dict keys it
    assert whole["optimizer"]["state"] and set(whole["optimizer"]["state"]) <= set(short["params"])
    assert sorted(p for g in whole["optimizer"]["param_groups"] for p in g["params"]) == sorted(short["params"])
    assert "last durable checkpoint: step 25" in output
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert kinds.index("job-complete") < len(kinds) - 1 - kinds[::-1].index("checkpoint")  # written after the end
    result, _ = launch(tmp_path, "longer", "--resume", str(directory))  # the same job, run on to step 40
    assert_identical(reference, result)
