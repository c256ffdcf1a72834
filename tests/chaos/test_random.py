"""Randomized chaos: seeded random fault schedules on a real 3-node local job, same invariants every seed.

`draw_schedule(seed)` is pure (random.Random(seed)): 1-2 faults drawn from kill-rank, kill-node,
hang-rank, slow-rank and corrupt-shard at random steps, sometimes a second failure during the
recovery (`kill-rank:R@gen=1`), a random `--hang-timeout` and sometimes a `--collective-timeout`
above or below it. Every schedule is one the Guarantees table says must be survived: step faults
fire at steps at least 2 apart (never two node losses at once), at most one corrupt-shard and one
slow-rank, a corrupt-shard always followed by a later kill (so a restore reads the bad copy), and
no failure during recovery after a corrupt-shard (a corrupted copy plus a lost copy
of a 1+1 blob is more than the code tolerates). So every seed must complete; no designed stop is
drawn.

Invariants, every seed: the launcher exits within a bound computed from the schedule (printed);
final parameters bit-identical (torch.equal) to one failure-free reference run whenever the
world size never changed; every sample exactly once; no file written for state; no process of
the job left once the launcher has exited. A table (seed, faults, detection, recovery,
bit-identical, samples) is printed at the end of the module. Run:
    python3 -m pytest -q tests/chaos/test_random.py -p no:cacheprovider -s   (all 20 seeds)
scripts/test.sh runs it with -m "not slow": seeds 0-7 only.
Reproduce a seed: `-k "seed_7"`; `python3 tests/chaos/test_random.py 7` prints its schedule and command.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos.conftest import params_identical  # noqa: E402
from ledgers import assert_exactly_once  # noqa: E402
from procs import REPO, SCRIPTS, job_pids, kill_job, new_job_id  # noqa: E402

NODES = 3
STEPS = 24
SEEDS = range(20)
FAST_SEEDS = 20  # every seed runs in CI (~12 min of the default suite on a loaded 2-vCPU box, ~5 min quiet);
#                  raise SEEDS for more, the extra ones are marked slow
HEARTBEAT_S = 10.0      # --heartbeat-timeout default: a lost node is declared dead after this
BASE_S = 75.0           # a failure-free run takes ~15 s here unloaded; generous for a shared 2-vCPU box
FAILURE_SLACK_S = 25.0  # per failure: replacement start, re-forming, restore, replay
COMMON = ("--straggler-policy", "report")  # rebalance would change per-rank batch shares (not a fault outcome)
FAILING = ("kill-rank", "kill-node", "hang-rank")  # faults that make the job re-form


@dataclass(frozen=True)
class Schedule:
    seed: int
    faults: tuple[str, ...]
    hang_timeout: float
    collective_timeout: float | None
    steps: int = STEPS
    nodes: int = NODES

    def launch_args(self) -> list[str]:
        args = ["--nodes", str(self.nodes), "--hang-timeout", f"{self.hang_timeout:g}", *COMMON]
        if self.collective_timeout is not None:
            args += ["--collective-timeout", f"{self.collective_timeout:g}"]
        for spec in self.faults:
            args += ["--inject", spec]
        return args

    def failures(self) -> int:
        return sum(spec.split(":")[0] in FAILING for spec in self.faults)

    def exit_bound_s(self) -> float:
        """Seconds the launcher may take: the base job time, plus per failure the heartbeat
        timeout + the hang timeout + the collective timeout (effective) + slack, plus a slow rank's cost."""
        collective = self.collective_timeout if self.collective_timeout is not None else self.hang_timeout + HEARTBEAT_S
        bound = BASE_S + self.failures() * (HEARTBEAT_S + self.hang_timeout + collective + FAILURE_SLACK_S)
        if any(spec.startswith("slow-rank") for spec in self.faults):
            bound += 20.0
        if any(spec.startswith("corrupt-shard") for spec in self.faults):
            bound += 5.0
        return bound


def draw_schedule(seed: int) -> Schedule:
    rng = random.Random(seed)
    faults: list[str] = []
    used_steps: set[int] = set()
    kinds_left = ["kill-rank", "kill-node", "hang-rank", "slow-rank", "corrupt-shard"]
    for _ in range(rng.choice((1, 2))):
        kind = rng.choice(kinds_left)
        if kind in ("slow-rank", "corrupt-shard"):
            kinds_left.remove(kind)  # at most one of each
        if kind == "slow-rank":
            faults.append(f"slow-rank:{rng.randrange(NODES)}x{rng.choice((2.0, 3.0))}")
            continue
        step = rng.choice([s for s in range(2, STEPS - 2) if not used_steps & {s - 1, s, s + 1}])
        used_steps.add(step)
        faults.append(f"{kind}:{rng.randrange(NODES)}@step={step}")
    fails = any(spec.split(":")[0] in FAILING for spec in faults)
    corrupt = [int(spec.split("@step=")[1]) for spec in faults if spec.startswith("corrupt-shard")]
    if corrupt and not fails:  # a corrupted copy matters only when a restore reads it: a later failure
        later = [s for s in range(corrupt[0] + 2, STEPS - 1) if not used_steps & {s - 1, s, s + 1}]
        if later:
            faults.append(f"{rng.choice(('kill-rank', 'kill-node'))}:{rng.randrange(NODES)}@step={rng.choice(later)}")
            fails = True
    if fails and not corrupt and rng.random() < 0.4:
        faults.append(f"kill-rank:{rng.randrange(NODES)}@gen=1")
    hang = rng.choice((3.0, 5.0))
    collective = rng.choice((None, None, hang - 1.0, hang + 4.0))
    return Schedule(seed, tuple(faults), hang, collective)


def command(schedule: Schedule, job: str, events: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ftrain", "launch", "--job-id", job, "--events-file", str(events),
            *schedule.launch_args(), "--", str(SCRIPTS / "ledger_job.py"), "--steps", str(schedule.steps),
            "--out", str(out)]


@dataclass
class Run:
    returncode: int
    output: str
    elapsed_s: float
    leftover: list[int]
    written: list[str]
    final: dict | None
    events: list[dict]
    argv: list[str]


def run_schedule(tmp_path: Path, schedule: Schedule, hard_timeout_s: float) -> Run:
    """Runs the launcher; after it exits, waits 2 s and lists the job's processes still alive, then
    kills every process of the job by PID (whatever happened)."""
    work, scratch, results = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "out"
    for d in (work, scratch, results):
        d.mkdir(exist_ok=True)
    out, events = results / "final.pt", results / "events.jsonl"
    job = new_job_id("rnd")
    argv = command(schedule, job, events, out)
    env = dict(os.environ, TMPDIR=str(scratch), PYTHONDONTWRITEBYTECODE="1", FTRAIN_JOB_ID=job)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, cwd=str(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    leftover: list[int] = []
    try:
        try:
            output, _ = process.communicate(timeout=hard_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            output += f"\n[test] launcher killed after the hard timeout of {hard_timeout_s:.0f} s"
        elapsed = time.monotonic() - started
        time.sleep(2.0)
        leftover = [pid for pid in job_pids(job) if _alive(pid)]
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_job(job)
    written = sorted(str(p.relative_to(tmp_path)) for d in (work, scratch) for p in d.rglob("*") if not p.is_dir())
    event_list = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    return Run(process.returncode, output, elapsed, leftover, written, torch.load(out) if out.exists() else None,
               event_list, argv)


def _alive(pid: int) -> bool:
    """Running or stopped, not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


ROWS: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def summary_table(request: pytest.FixtureRequest):
    started = time.monotonic()
    yield
    capman = request.config.pluginmanager.getplugin("capturemanager")
    lines = ["", f"randomized chaos: {len(ROWS)} seed(s) in {time.monotonic() - started:.0f} s",
             f"{'seed':>4}  {'faults':58}{'exit s':>8}{'bound':>7}{'detect s':>10}{'recover s':>11}"
             f"{'bit-identical':>15}{'samples':>9}{'left':>6}"]
    for r in sorted(ROWS, key=lambda r: r["seed"]):
        lines.append(f"{r['seed']:>4}  {r['faults']:58}{r['exit']:>8}{r['bound']:>7.0f}{r['detect']:>10}"
                     f"{r['recover']:>11}{r['identical']:>15}{r['samples']:>9}{r['left']:>6}")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            print("\n".join(lines), flush=True)
    else:
        print("\n".join(lines))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    ref = Schedule(-1, (), 5.0, None)
    run = run_schedule(tmp_path_factory.mktemp("reference"), ref, hard_timeout_s=240)
    assert run.returncode == 0, run.output[-4000:]
    assert run.final is not None
    return run.final


def _fmt(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


# seed -> reason, for a reproduced ftrain bug that is reported and not yet fixed (none now: seeds 5 and
# 12, a frozen rank behind a collective timeout shorter than pulse detection, hung the job until the
# coordinator learned to kill a member that does not join a forming generation)
XFAIL: dict[int, str] = {}


def _param(seed: int):
    schedule = draw_schedule(seed)
    marks = [pytest.mark.timeout(int(schedule.exit_bound_s() + 360))]  # + the reference run, if this seed starts it
    if seed >= FAST_SEEDS:
        marks.append(pytest.mark.slow)
    if seed in XFAIL:
        marks.append(pytest.mark.xfail(reason=XFAIL[seed], strict=False))
    return pytest.param(seed, id=f"seed_{seed}", marks=marks)


def test_draw_schedule_is_pure_and_stays_within_the_guarantees() -> None:
    for seed in range(200):
        schedule = draw_schedule(seed)
        assert schedule == draw_schedule(seed)
        steps = [int(s.split("@step=")[1]) for s in schedule.faults if "@step=" in s]
        assert len(steps) == len(set(steps)), schedule
        kinds = [s.split(":")[0] for s in schedule.faults]
        assert 1 <= len([s for s in schedule.faults if "@gen=" not in s]) <= (3 if "corrupt-shard" in kinds else 2)
        assert kinds.count("corrupt-shard") <= 1 and kinds.count("slow-rank") <= 1
        if any("@gen=" in s for s in schedule.faults):
            assert "corrupt-shard" not in kinds and set(kinds) & {"kill-rank", "kill-node", "hang-rank"}
    drawn = {(s.faults, s.hang_timeout, s.collective_timeout) for s in map(draw_schedule, SEEDS)}
    assert len(drawn) == len(SEEDS)


@pytest.mark.parametrize("seed", [_param(s) for s in SEEDS])
def test_random_schedule(seed: int, tmp_path: Path, reference_run: dict) -> None:
    schedule = draw_schedule(seed)
    bound = schedule.exit_bound_s()
    print(f"\n[seed {seed}] faults {' '.join(schedule.faults)}; hang {schedule.hang_timeout:g} s, collective "
          f"{schedule.collective_timeout if schedule.collective_timeout is not None else 'default'}; "
          f"exit bound {bound:.0f} s", flush=True)
    run = run_schedule(tmp_path, schedule, hard_timeout_s=bound + 60)
    events = run.events
    injected = [e["time"] for e in events if e["kind"] == "inject"]
    failures = [e["time"] for e in events if e["kind"] in ("failure", "collective-failed", "straggler")]
    recovered = [e.get("recovery_s") for e in events if e["kind"] == "recovered"]
    row = {"seed": seed, "faults": " ".join(schedule.faults)
           + f" h{schedule.hang_timeout:g}" + (f" c{schedule.collective_timeout:g}"
                                                 if schedule.collective_timeout is not None else ""),
           "exit": f"{run.elapsed_s:.1f}", "bound": bound,
           "detect": _fmt(min(failures) - min(injected) if failures and injected else None),
           "recover": _fmt(recovered[0] if recovered else None), "identical": "-", "samples": "-",
           "left": str(len(run.leftover))}
    ROWS.append(row)
    context = f"seed {seed}: {' '.join(run.argv)}\n{run.output[-6000:]}"
    assert run.returncode == 0, f"launcher exited {run.returncode}; {context}"
    assert run.elapsed_s <= bound, f"launcher took {run.elapsed_s:.1f} s > bound {bound:.0f} s; {context}"
    assert not run.leftover, f"processes of the job left after the launcher exited: {run.leftover}; {context}"
    assert not run.written, f"files written outside the job's output: {run.written}; {context}"
    final = run.final
    assert final is not None, f"no final.pt; {context}"
    try:
        assert_exactly_once(final)
        row["samples"] = "ok"
    except AssertionError:
        row["samples"] = "NO"
        raise
    if set(final["world_sizes"]) == {NODES}:
        identical = params_identical(reference_run, final)
        row["identical"] = "yes" if identical else "NO"
        assert identical, f"final parameters differ from the failure-free run; {context}"
    else:
        row["identical"] = f"n/a ws={sorted(set(final['world_sizes']))}"
    if schedule.failures():
        assert final["generation"] >= 1, f"the fault did not happen; {context}"


if __name__ == "__main__":
    for s in (map(int, sys.argv[1:]) if sys.argv[1:] else SEEDS):
        sched = draw_schedule(s)
        print(s, sched, f"bound {sched.exit_bound_s():.0f} s")
        print("   ftrain launch", " ".join(sched.launch_args()), "-- tests/scripts/ledger_job.py --steps", sched.steps,
              "--out final.pt")
