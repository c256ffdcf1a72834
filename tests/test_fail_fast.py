"""Fail fast on the user's own bugs (issue #17): the same exception after a restart ends the job
with one line naming rank, step and exception; a script that cannot start, or never calls
ftrain.init, fails at once; an --inject spec that never fired is reported. The decisions
(ftrain.coordinator.bugs) are unit-tested here too, with fake inputs."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ftrain.cli import job_summary
from ftrain.coordinator.bugs import BugDetector, UserError, startup_failure, unfired_faults, unfired_warning
from procs import SCRIPTS, new_job_id, run_ftrain

RAISE = str(SCRIPTS / "raise_at_step.py")


# -- pure decisions ---------------------------------------------------------------------------
def test_same_error_after_a_restart_is_a_bug_but_the_first_is_not() -> None:
    bugs = BugDetector()
    first = bugs.report(UserError(0, 1, 3, "ValueError", "bad batch"))
    assert first.print_traceback and not first.fail_message
    other_rank = bugs.report(UserError(0, 0, 3, "ValueError", "bad batch"))  # same attempt: no second print
    assert not other_rank.print_traceback and not other_rank.fail_message
    again = bugs.report(UserError(1, 1, 3, "ValueError", "bad batch"))
    assert again.print_traceback
    assert again.fail_message == ("rank 1 raised ValueError('bad batch') at step 3 twice (a bug in the script, "
                                  "not a fault); traceback above")


@pytest.mark.parametrize("later", [UserError(1, 1, 4, "ValueError", "bad batch"),
                                   UserError(1, 1, 3, "KeyError", "bad batch"),
                                   UserError(1, 1, 3, "ValueError", "other")], ids=["step", "type", "message"])
def test_a_different_error_after_a_restart_is_not_a_bug_yet(later: UserError) -> None:
    bugs = BugDetector()
    bugs.report(UserError(0, 1, 3, "ValueError", "bad batch"))
    assert not bugs.report(later).fail_message


def test_startup_failures() -> None:
    assert "exited with code 1 before reaching ftrain.init" in startup_failure("node0", 0, 1, False, True)
    assert "without calling ftrain.init" in startup_failure("node0", 0, 0, False, True)
    assert startup_failure("node0", 0, 1, True, True) == ""    # it reached ftrain: maybe a fault
    assert startup_failure("node0", 0, -9, False, True) == ""  # killed by a signal: a fault
    assert startup_failure("node0", 0, 1, False, False) == ""  # older than this coordinator: unknown


def test_unfired_faults_and_summary_order() -> None:
    assert unfired_faults(["kill-node:1@step=100", "kill-rank:0@step=2"], {"kill-rank:0@step=2"}) == \
        ["kill-node:1@step=100"]
    warning = unfired_warning("kill-node:1@step=100", 19)
    assert "kill-node:1@step=100 never fired" in warning and "step 19" in warning
    status = {"state": "failed", "message": "rank 1 raised ValueError('x') at step 3 twice", "unfired_faults": [warning],
              "ec_effective": {"k": 1, "m": 0, "nodes": 2, "survives_node_losses": 0}, "ec": "4+2"}
    lines = job_summary(status)
    assert lines[-1].startswith("job failed: rank 1 raised") and warning in lines
    assert job_summary(dict(status, state="complete", message=""))[0] == "job complete"


# -- end to end -------------------------------------------------------------------------------
def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.mark.timeout(60)
def test_exception_at_step_3_fails_fast_with_one_traceback_per_attempt(tmp_path: Path) -> None:
    job, events = new_job_id("bug"), tmp_path / "events.jsonl"
    started = time.monotonic()
    result = run_ftrain(["launch", "--nodes", "2", "--job-id", job, "--events-file", str(events), "--",
                         RAISE, "--raise-at", "3", "--rank", "1"], job, timeout=50)
    elapsed = time.monotonic() - started
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 1, result.stdout[-4000:]
    assert elapsed < 30, f"took {elapsed:.1f} s:\n{result.stdout[-4000:]}"
    assert 1 <= result.stdout.count("Traceback (most recent call last)") <= 2, result.stdout
    assert "ValueError: bad batch" in result.stdout
    assert lines[-1].endswith("job failed: rank 1 raised ValueError('bad batch') at step 3 twice (a bug in the "
                              "script, not a fault); traceback above"), result.stdout[-4000:]
    assert "JobFailed" not in result.stdout and "cannot schedule new futures" not in result.stdout
    failed = [e for e in _events(events) if e["kind"] == "job-failed"]
    assert len(failed) == 1 and "rank 1 raised ValueError('bad batch') at step 3 twice" in failed[0]["message"]


@pytest.mark.timeout(30)
def test_missing_script_fails_in_seconds_naming_it(tmp_path: Path) -> None:
    job, missing = new_job_id("missing"), str(tmp_path / "no_such_train.py")
    started = time.monotonic()
    result = run_ftrain(["launch", "--nodes", "2", "--job-id", job, "--", missing], job, timeout=20)
    assert time.monotonic() - started < 10
    assert result.returncode == 2 and f"training script {missing!r} not found" in result.stdout, result.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body, expected", [
    ("import no_such_module_for_ftrain\n", "exited with code 1 before reaching ftrain.init"),
    ("print('hello, not training')\n", "exited (code 0) without calling ftrain.init"),
], ids=["import-error", "never-calls-ftrain"])
def test_script_that_cannot_start_fails_before_a_generation_forms(tmp_path: Path, body: str, expected: str) -> None:
    script, job, events = tmp_path / "train.py", new_job_id("start"), tmp_path / "events.jsonl"
    script.write_text(body)
    started = time.monotonic()
    result = run_ftrain(["launch", "--nodes", "2", "--job-id", job, "--events-file", str(events), "--",
                         str(script)], job, timeout=50)
    assert time.monotonic() - started < 20, result.stdout[-4000:]
    assert result.returncode == 1 and expected in result.stdout.strip().splitlines()[-1], result.stdout[-4000:]
    assert not [e for e in _events(events) if e["kind"] == "generation"]
    assert result.stdout.count("Traceback (most recent call last)") <= 2


@pytest.mark.timeout(60)
def test_fault_that_never_fired_is_reported(tmp_path: Path) -> None:
    job, events = new_job_id("unfired"), tmp_path / "events.jsonl"
    result = run_ftrain(["launch", "--nodes", "2", "--job-id", job, "--events-file", str(events),
                         "--inject", "kill-node:1@step=100", "--", RAISE, "--raise-at", "-1", "--steps", "5"],
                        job, timeout=50)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "warning: fault kill-node:1@step=100 never fired" in result.stdout
    unfired = [e for e in _events(events) if e["kind"] == "fault-not-fired"]
    assert [e["fault"] for e in unfired] == ["kill-node:1@step=100"]
