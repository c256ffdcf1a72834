"""Chaos suite: fault kinds x timing on real local jobs (SIGKILL, SIGSTOP, corrupted memory).

Every case checks the job outcome, final parameters bit-identical to the failure-free run (sync
mode, fixed world size), exactly-once sample accounting (the sampler replayed over the world
sizes of the applied steps gives exactly the samples the job trained on), and that no file was
written for state: the job runs with a fresh working directory and TMPDIR in which no file may
appear (trainers, agents and coordinator all inherit them). A table of detection time, recovery time
and lost steps is printed at the end. The 6-node case is marked slow (run by `-m slow`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from chaos.conftest import ROWS, params_identical
from ftrain.snapshot.placement import place_blobs
from ledgers import assert_exactly_once
from procs import SCRIPTS, new_job_id, run_ftrain

pytestmark = pytest.mark.timeout(300)
STEPS = 25
NODES4 = [f"node{i}" for i in range(4)]
DATA_HOLDER = NODES4.index(place_blobs(NODES4, NODES4, 2, 1)[2][0])  # holds data shard 0 of rank 2's blob


@dataclass(frozen=True)
class Case:
    name: str
    nodes: int
    inject: tuple[str, ...]
    extra: tuple[str, ...] = ()
    succeeds: bool = True
    marks: tuple = field(default=(), compare=False)


CASES = [
    Case("kill-rank early (step 2)", 3, ("kill-rank:1@step=2",)),
    Case("kill-rank late (step 20)", 3, ("kill-rank:2@step=20",)),
    Case("kill-node", 3, ("kill-node:1@step=12",)),
    Case("two nodes at once (6 nodes, 4+2)", 6, ("kill-node:1@step=10", "kill-node:2@step=10"), ("--ec", "4+2"),
         marks=(pytest.mark.slow,)),
    Case("hang (SIGSTOP)", 3, ("hang-rank:1@step=10",), ("--hang-timeout", "3")),
    Case("slow rank 3x (report)", 3, ("slow-rank:1x3.0",), ("--straggler-policy", "report")),
    Case("corrupted shard + node loss", 4, (f"corrupt-shard:{DATA_HOLDER}@step=8", "kill-node:2@step=14"),
         ("--ec", "2+1")),
    Case("fault during recovery", 3, ("kill-node:1@step=10", "kill-rank:2@gen=1")),
    Case("freeze during recovery", 3, ("kill-node:1@step=10", "hang-rank:2@gen=1")),
    Case("m+1 simultaneous losses", 4, ("kill-node:1@step=10", "kill-node:2@step=10", "kill-node:3@step=10"),
         ("--ec", "2+1"), succeeds=False),
]


def run_job(tmp_path: Path, name: str, nodes: int, inject: tuple[str, ...] = (), extra: tuple[str, ...] = ()):
    work, scratch, results = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "out"
    for d in (work, scratch, results):
        d.mkdir(exist_ok=True)
    out, events = results / "final.pt", results / "events.jsonl"
    job = new_job_id("chaos")
    args = ["launch", "--nodes", str(nodes), "--job-id", job, "--events-file", str(events), *extra]
    for spec in inject:
        args += ["--inject", spec]
    args += ["--", str(SCRIPTS / "ledger_job.py"), "--steps", str(STEPS), "--out", str(out)]
    env = {"TMPDIR": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
    result = run_ftrain(args, job, timeout=280, env=env, cwd=str(work))
    # (torch itself creates an empty TMPDIR/torchinductor_<user> cache directory: not state)
    written = sorted(str(p.relative_to(tmp_path)) for d in (work, scratch) for p in d.rglob("*") if not p.is_dir())
    assert not written, f"files written outside the job's output: {written}"
    event_list = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    return result, (torch.load(out) if out.exists() else None), event_list


_REFERENCES: dict[int, dict] = {}


def reference(tmp_path_factory: pytest.TempPathFactory, nodes: int) -> dict:
    if nodes not in _REFERENCES:
        result, final, _ = run_job(tmp_path_factory.mktemp(f"ref{nodes}"), "ref", nodes)
        assert result.returncode == 0, result.stdout[-4000:]
        _REFERENCES[nodes] = final
    return _REFERENCES[nodes]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_fault(case: Case, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    result, final, events = run_job(tmp_path, case.name, case.nodes, case.inject, case.extra)
    injected = [e["time"] for e in events if e["kind"] == "inject"]
    failures = [e["time"] for e in events if e["kind"] in ("failure", "collective-failed", "straggler")]
    recovered = [e.get("recovery_s") for e in events if e["kind"] == "recovered"]
    restores = [e["restore_step"] for e in events if e["kind"] == "generation"][1:]
    fault_steps = [int(s.split("@step=")[1]) for s in case.inject if "@step=" in s]
    row = {"fault": case.name, "outcome": "completed" if result.returncode == 0 else "stopped",
           "detect": (min(failures) - min(injected)) if failures and injected else None,
           "recover": recovered[0] if recovered else None,
           "lost": (max(fault_steps) - restores[0]) if restores and fault_steps else 0, "identical": "-"}
    try:
        if not case.succeeds:
            assert result.returncode != 0
            assert "unrecoverable" in result.stdout and "Last committed step" in result.stdout, result.stdout[-3000:]
            return
        assert result.returncode == 0, result.stdout[-6000:]
        expected = reference(tmp_path_factory, case.nodes)
        identical = params_identical(expected, final)
        row["identical"] = "yes" if identical else "NO"
        assert identical, f"{case.name}: final parameters differ from the failure-free run"
        assert_exactly_once(final)
        if case.inject and not case.inject[0].startswith("slow-rank"):
            assert final["generation"] >= 1, "the fault did not happen"
        unfired = [e["message"] for e in events if e["kind"] == "fault-not-fired"]
        assert not unfired, unfired  # every fault of the case fired (one during a recovery too)
        if any(spec.startswith("hang-rank") for spec in case.inject):
            assert any(e["kind"] == "failure" and ("frozen" in e["message"] or "hung" in e["message"])
                       for e in events), "the frozen rank was not found"
    finally:
        ROWS.append(row)
