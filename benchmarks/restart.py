"""Recovery time after one rank is SIGKILLed: ftrain restart mode vs in-process mode vs torchrun
restarting from torch.distributed.checkpoint; and the snapshot stall per step of FSDP2 state.

All runs use the MLP + AdamW loop of benchmarks/restart_job.py (parameters + AdamW's two moments
= --state-mib MiB; batch 32 per rank), --nodes ranks (one per simulated node), rank 1 killed at
the top of step --kill-step, in one invocation, alternating in --rounds:

(1) ftrain restart mode: `ftrain launch --recovery restart --inject kill-rank:1@step=S`; the job
    is a torchrun-style script (its own dist.init_process_group("gloo") + DistributedDataParallel,
    then ftrain.init adopts the group). Every trainer is killed and started again.
(2) ftrain in-process mode: `ftrain launch --inject kill-rank:1@step=S`, the plain model through
    session.model. The survivors keep their processes; the dead one is started again.
    Both ftrain modes snapshot every step. From the events file (--events-file):
      recovery          = the "recovered" event's recovery_s (first failure -> next committed step)
      detection         = first "failure" / "collective-failed" event - the "inject" event
      restart+rendezvous = the first "generation" event after the failure - the failure
      restore+first step = "recovered" - that "generation" event
    "restart, standby" and "in-process, standby" are the same with `--standby-trainers`: each agent
    keeps a process per local rank with torch imported and turns it into the replacement trainer.
    "in-process, mid-step" and "mid-step, standby" kill rank 1 in the middle of step S instead (the
    job's --die-mid-step: after its forward pass, 1 s into the step, so step S-1's snapshot has
    committed), while its peers wait in the gradient all-reduce. Their optimizer steps of the
    discarded step change nothing, so they keep their live state and only the replacement fetches
    the blobs from the agents (ftrain.snapshot.restore_plan); the kill is the job's "kill" mark.
(3) torchrun + DCP: `python -m torch.distributed.run --nproc-per-node N --max-restarts 1
    --monitor-interval 0.1` with the static rendezvous on 127.0.0.1 (as benchmarks/step_overhead.py),
    the same script with its own DDP, dcp.save of model + optimizer every --dcp-every steps to a temp
    dir, dcp.load on the restart. Rank 1 SIGKILLs itself at the top of step S on attempt 0. From the
    job's timeline (time.time() marks) and torchrun's own log:
      recovery          = the kill -> the first step completed after the restart (rank 0's mark)
      detection         = the kill -> torchrun's first "Sending process ... closing signal" /
                          "failed (exitcode" log line (its monitor noticed the dead worker)
      restart+rendezvous = detection -> the first restarted worker's first line (torchrun stops the
                          survivors, rendezvouses again and spawns every worker)
      restore+first step = that first line -> the first completed step
    The steps since the last DCP checkpoint (lost work, done again) are counted separately.
The phases of the ftrain modes and torchrun's do not split at quite the same point: restart mode's
generation forms (the agents join it) before the new trainers are spawned, so its restore+first
step holds the whole new process; in-process mode's generation forms only once the restarted
trainer joins from ftrain.init, so its restart+rendezvous holds that process's start. A second
table breaks recovery down by the job's own marks in the restarted processes (the latest rank to
reach each mark): start (-> the script's first line), import (torch, ftrain), group
(init_process_group), model (build), wrap (DDP), optimizer (AdamW; its first use imports
torch._dynamo), ftrain.init / dcp.load (restore), first step, commit (ftrain: the step's snapshot
committed). "back" = the kill -> the first step beyond the one that was killed completes (lost
work redone).

(4) FSDP2 snapshot stall: the same script with --fsdp2 (each Linear and the model fully_shard()ed
    over the ranks, its own group) under `ftrain launch --recovery restart`, no failure, once with
    ftrain.init(snapshot_every=1) and once with ftrain.init(snapshot_every=10**9) (and the
    launcher's --snapshot-every to match). Rank 0 prints its mean wall time per step after the
    warm-up steps; the stall per step is (on - off), and the ratio on / off. (Not the coordinator's
    "snapshot_stall_s": this is the whole per-step cost of a snapshot to the loop.)

Logs, events and timelines stay in --workdir (a new /tmp directory by default; printed). A job
that fails or hangs is killed (its process group) after --timeout s and reported, and the rest run.

Usage: python benchmarks/restart.py [--state-mib 20 400] [--rounds 1] [--nodes 3] [--kill-step 15]
                                    [--steps 0] [--dcp-every 10] [--fsdp2-steps 0]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from jobs import figure, free_port, kill_group

JOB = str(Path(__file__).resolve().parent / "restart_job.py")
ROOT = str(Path(__file__).resolve().parent.parent)
MODES = ("restart", "restart-standby", "inprocess", "inprocess-standby", "midstep", "midstep-standby", "torchrun")
LABELS = {"restart": "ftrain restart (DDP)", "restart-standby": "restart, standby", "inprocess": "ftrain in-process",
          "inprocess-standby": "in-process, standby", "midstep": "in-process, mid-step",
          "midstep-standby": "mid-step, standby", "torchrun": "torchrun + DCP"}
STAGES = ("start", "import", "group", "model", "wrap", "optimizer", "restore", "first step", "commit")
MARKS = {"start": "process", "import": "imported", "group": "group", "model": "built", "wrap": "wrapped",
         "optimizer": "optimizer", "restore": "restored"}


class JobFailed(Exception):
    pass


def kill_leftovers(marker: str) -> None:
    """SIGKILL to the process group of every process of ours whose command line holds `marker` (this
    job's unique id): the local launcher starts each agent in a session of its own, which outlives
    a launcher killed on a timeout."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if marker.encode() in argv and entry.stat().st_uid == os.getuid():
                group = os.getpgid(int(entry.name))
                if group != os.getpgid(0):
                    os.killpg(group, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def run_job(command: list[str], env: dict[str, str], log_path: Path, timeout: float, marker: str = "") -> str:
    """Runs a job in its own session, output to log_path; its process group (and any process left
    with `marker` on its command line) is killed at the end."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True, cwd=ROOT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            raise JobFailed(f"timed out after {timeout:.0f} s: {' '.join(command)}\n{tail(log_path)}")
        finally:
            kill_group(process)
            if marker:
                kill_leftovers(marker)
    if process.returncode != 0:
        raise JobFailed(f"exit {process.returncode}: {' '.join(command)}\n{tail(log_path)}")
    return log_path.read_text(errors="replace")


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def job_args(mib: float, args: argparse.Namespace, timeline: Path) -> list[str]:
    return ["--state-mib", str(mib), "--steps", str(steps_for(mib, args)), "--timeline", str(timeline)]


def steps_for(mib: float, args: argparse.Namespace) -> int:
    return args.steps or (30 if mib <= 64 else 20)


def breakdown(marks: list[dict], anchor: float, after: float, recovered: float | None) -> dict[str, float]:
    """Seconds per stage in the processes started after `after` (the latest rank at each mark),
    from `anchor` (when those processes were ordered / spawned)."""
    until = recovered if recovered is not None else float("inf")  # not the processes of later failures
    fresh = [m for m in marks if m["kind"] != "step" and after < m["t"] <= until]
    pids = {m["pid"] for m in fresh if m["kind"] == "process"}
    result: dict[str, float] = {}
    previous = anchor
    for stage in STAGES[:7]:
        times = [m["t"] for m in fresh if m["kind"] == MARKS[stage] and m["pid"] in pids]
        if not times:
            continue
        latest = max(times)
        result[stage] = latest - previous
        previous = latest
    restored = previous
    steps = [m["t"] for m in marks if m["kind"] == "step" and m["t"] > restored]
    if steps:
        result["first step"] = min(steps) - restored
        if recovered is not None:
            result["commit"] = recovered - min(steps)
    return result


def back_at(marks: list[dict], kill_step: int, after: float, t0: float) -> float:
    """The kill -> the first step past the killed one completes (after the first restore since the kill)."""
    restored = min([m["t"] for m in marks if m["kind"] == "restored" and m["t"] > after], default=after)
    done = [m["t"] for m in marks if m["kind"] == "step" and m["step"] >= kill_step + 1 and m["t"] > restored]
    return min(done) - t0 if done else float("nan")


def run_ftrain(mode: str, mib: float, args: argparse.Namespace, env: dict[str, str], workdir: Path) -> dict:
    job = f"bench-restart-{uuid.uuid4().hex[:8]}"
    events_path, timeline = workdir / f"{job}.events.jsonl", workdir / f"{job}.timeline.jsonl"
    midstep = mode.startswith("midstep")
    command = [sys.executable, "-m", "ftrain", "launch", "--nodes", str(args.nodes), "--job-id", job,
               "--snapshot-every", "1", "--events-file", str(events_path), "--timeout", str(args.timeout)]
    if not midstep:
        command += ["--inject", f"kill-rank:1@step={args.kill_step}"]
    if mode.startswith("restart"):
        command += ["--recovery", "restart"]
    if mode.endswith("-standby"):  # the replacement trainers start from standby processes (torch imported)
        command += ["--standby-trainers"]
    command += ["--", JOB, *job_args(mib, args, timeline)]
    if midstep:  # rank 1 kills itself in the middle of the step, its peers in the gradient all-reduce
        command += ["--kill-step", str(args.kill_step), "--kill-rank", "1", "--die-mid-step"]
    run_job(command, env, workdir / f"{job}.log", args.timeout + 30, marker=job)
    events = read_jsonl(events_path)
    try:
        inject = (next({"time": m["t"]} for m in read_jsonl(timeline) if m["kind"] == "kill") if midstep
                  else next(e for e in events if e["kind"] == "inject"))
        failure = next(e for e in events
                       if e["kind"] in ("failure", "collective-failed") and e["time"] >= inject["time"])
        generation = next(e for e in events if e["kind"] == "generation" and e["time"] >= failure["time"])
        recovered = next(e for e in events if e["kind"] == "recovered" and e["time"] >= failure["time"])
    except StopIteration:
        raise JobFailed(f"{mode} {mib:g} MiB: events missing in {events_path}: "
                        f"{[e['kind'] for e in events]}") from None
    # the dead trainer reported by its agent (in-process: its replacement is started then)
    died = next((e for e in events if e["kind"] == "failure" and e["time"] >= inject["time"]), failure)
    since = failure["time"]
    marks = read_jsonl(timeline)
    anchor = generation["time"] if mode.startswith("restart") else died["time"]
    # more than one generation before the step committed: the first restart did not take (see the notes)
    generations = [e for e in events
                   if e["kind"] == "generation" and failure["time"] <= e["time"] <= recovered["time"]]
    later_failures = [e["message"] for e in events if e["kind"] in ("failure", "collective-failed")
                      and generation["time"] < e["time"] < recovered["time"]]
    # failures before the injected one (none expected): the figures are still the injected fault's
    earlier = [e["message"] for e in events if e["kind"] in ("failure", "collective-failed")
               and e["time"] < inject["time"]]
    return {"recovery": recovered["recovery_s"], "detection": failure["time"] - inject["time"],
            "generations": len(generations), "later_failures": later_failures, "earlier_failures": earlier,
            "restart": generation["time"] - since, "restore": recovered["time"] - generation["time"],
            "lost": args.kill_step - generation["restore_step"],
            "back": back_at(marks, args.kill_step, inject["time"], inject["time"]),
            "stages": breakdown(marks, anchor, inject["time"], recovered["time"]), "job": job}


GLOG = re.compile(r"^[IWE](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+) +\d+ .*(closing signal|failed \(exitcode)", re.M)


def torchrun_detected(log: str, kill: float) -> float | None:
    """Time of torchrun's first log line about the failed worker group (its glog-style local time)."""
    day = datetime.datetime.fromtimestamp(kill)
    for match in GLOG.finditer(log):
        month, dom, hour, minute, second, fraction = (int(g) for g in match.groups()[:6])
        stamp = day.replace(month=month, day=dom, hour=hour, minute=minute, second=second,
                            microsecond=int(str(fraction).ljust(6, "0")[:6])).timestamp()
        if stamp >= kill - 0.01:
            return stamp
    return None


def run_torchrun(mib: float, args: argparse.Namespace, env: dict[str, str], workdir: Path) -> dict:
    job = f"torchrun-{uuid.uuid4().hex[:8]}"
    timeline, dcp_dir = workdir / f"{job}.timeline.jsonl", workdir / f"{job}.dcp"
    dcp_dir.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--node-rank", "0",
               "--nproc-per-node", str(args.nodes), "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "--max-restarts", "1", "--monitor-interval", "0.1", JOB, *job_args(mib, args, timeline),
               "--kill-step", str(args.kill_step), "--kill-rank", "1", "--dcp-every", str(args.dcp_every),
               "--dcp-dir", str(dcp_dir)]
    try:
        log = run_job(command, env, workdir / f"{job}.log", args.timeout, marker=str(timeline))
    finally:
        shutil.rmtree(dcp_dir, ignore_errors=True)  # up to 2 x 400 MiB per checkpoint kept: not worth keeping
    marks = read_jsonl(timeline)
    try:
        kill = next(m["t"] for m in marks if m["kind"] == "kill")
        restarted = [m for m in marks if m["attempt"] == 1]
        first_line = min(m["t"] for m in restarted if m["kind"] == "process")
        first_step = min(m["t"] for m in restarted if m["kind"] == "step")
        resumed = next(m["step"] for m in restarted if m["kind"] == "restored")
    except (StopIteration, ValueError):
        raise JobFailed(f"torchrun {mib:g} MiB: marks missing in {timeline}") from None
    detected = torchrun_detected(log, kill)
    saves: dict[int, float] = {}
    for m in marks:
        if m["kind"] == "checkpoint":
            saves[m["step"]] = max(saves.get(m["step"], 0.0), m["seconds"])
    return {"recovery": first_step - kill,
            "detection": detected - kill if detected is not None else float("nan"),
            "restart": first_line - detected if detected is not None else float("nan"),
            "restore": first_step - first_line, "lost": args.kill_step - resumed,
            "back": back_at(restarted, args.kill_step, first_line - 1e-6, kill),
            "stages": breakdown(restarted, first_line, first_line - 1e-6, None),
            "dcp_save_s": statistics.mean(saves.values()) if saves else float("nan"), "job": job}


def run_fsdp2(mib: float, every: int, args: argparse.Namespace, env: dict[str, str], workdir: Path) -> float:
    job = f"bench-fsdp2-{uuid.uuid4().hex[:8]}"
    steps = args.fsdp2_steps or (30 if mib <= 64 else 12)
    warmup = 5 if mib <= 64 else 4
    command = [sys.executable, "-m", "ftrain", "launch", "--nodes", str(args.nodes), "--job-id", job,
               "--recovery", "restart", "--snapshot-every", str(every if every else 10**9), "--timeout",
               str(args.timeout), "--", JOB, "--fsdp2", "--state-mib", str(mib), "--steps", str(steps),
               "--warmup", str(warmup), "--snapshot-every", str(every)]
    output = run_job(command, env, workdir / f"{job}.log", args.timeout + 30, marker=job)
    return figure(output, "step_s", " ".join(command))


def fmt(value: float | None, width: int = 7, unit: str = "s") -> str:
    if value is None or value != value:
        return f"{'-':>{width}}"
    return f"{value:>{width - len(unit)}.2f}{unit}"


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--state-mib", type=float, nargs="+", default=[20, 400])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--kill-step", type=int, default=15)
    parser.add_argument("--steps", type=int, default=0,
                        help="steps per recovery job (default 30 at <= 64 MiB, else 20)")
    parser.add_argument("--dcp-every", type=int, default=10, help="torchrun: dcp.save every K steps")
    parser.add_argument("--fsdp2-steps", type=int, default=0, help="steps per FSDP2 stall job (default 30 / 12)")
    parser.add_argument("--no-fsdp2", action="store_true", help="skip (4)")
    parser.add_argument("--timeout", type=float, default=420, help="seconds per job before it is killed")
    parser.add_argument("--workdir", default="", help="logs, events and timelines (default: a new /tmp dir)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="which recoveries to measure (default all; ratios are to in-process's)")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ftrain-restart-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTRAIN_", "TORCHELASTIC_", "TORCHFT_"))}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    began = time.time()
    print(f"{args.nodes} ranks (one per node) on {os.cpu_count()} CPUs; MLP + AdamW, batch 32; rank 1 SIGKILLed at "
          f"the top of step {args.kill_step}; ftrain snapshots every step, torchrun dcp.save every {args.dcp_every} "
          f"steps; steps per job: " + ", ".join(f"{m:g} MiB {steps_for(m, args)}" for m in args.state_mib)
          + f"; {args.rounds} round(s), medians; logs in {workdir}", flush=True)
    results: dict[tuple[str, float], list[dict]] = {}
    fsdp2: dict[tuple[float, int], list[float]] = {}
    problems: list[str] = []
    notes: list[str] = []
    loads: list[float] = []
    for round_index in range(args.rounds):
        for mib in args.state_mib:
            for mode in args.modes:
                loads.append(os.getloadavg()[0])
                t = time.time()
                try:
                    result = (run_torchrun(mib, args, env, workdir) if mode == "torchrun"
                              else run_ftrain(mode, mib, args, env, workdir))
                except JobFailed as error:
                    problems.append(f"round {round_index + 1}, {LABELS[mode]}, {mib:g} MiB: {error}")
                    print(f"  FAILED {LABELS[mode]} {mib:g} MiB (see the end)", flush=True)
                    continue
                results.setdefault((mode, mib), []).append(result)
                if result.get("earlier_failures"):
                    notes.append(f"round {round_index + 1}, {LABELS[mode]}, {mib:g} MiB ({result['job']}): "
                                 f"{len(result['earlier_failures'])} failure(s) before the injected fault (each "
                                 f"recovered; not in the figures): {'; '.join(result['earlier_failures'])}")
                if result.get("generations", 1) > 1:
                    notes.append(f"round {round_index + 1}, {LABELS[mode]}, {mib:g} MiB ({result['job']}): "
                                 f"{result['generations']} generations formed before the first step committed; "
                                 f"failures after the first one: {'; '.join(result['later_failures'])}")
                print(f"  round {round_index + 1} {LABELS[mode]:>21} {mib:>5g} MiB: "
                      f"recovery {result['recovery']:.2f} s "
                      f"(job {time.time() - t:.0f} s, load {loads[-1]:.1f}, {result['job']})", flush=True)
            if args.no_fsdp2:
                continue
            for every in (1, 0):
                loads.append(os.getloadavg()[0])
                try:
                    step_s = run_fsdp2(mib, every, args, env, workdir)
                except (JobFailed, SystemExit) as error:
                    problems.append(f"round {round_index + 1}, FSDP2 snapshot_every={every or 10**9}, "
                                    f"{mib:g} MiB: {error}")
                    print(f"  FAILED FSDP2 {mib:g} MiB snapshot_every={every or 10**9}", flush=True)
                    continue
                fsdp2.setdefault((mib, every), []).append(step_s)
                print(f"  round {round_index + 1} FSDP2 {mib:g} MiB snapshot {'every step' if every else 'off'}: "
                      f"{step_s:.3f} s/step (load {loads[-1]:.1f})", flush=True)

    print(f"\nrecovery after SIGKILL of rank 1 of {args.nodes} at step {args.kill_step} (medians of "
          f"{args.rounds} round(s); ratio = recovery / ftrain in-process's)")
    print(f"{'mode':>21} {'state':>6} {'recovery':>9} {'ratio':>6} {'detect':>7} {'restart+rdzv':>12} "
          f"{'restore+1st':>11} {'lost steps':>10} {'back':>7}")
    for mib in args.state_mib:
        base = median([r["recovery"] for r in results.get(("inprocess", mib), [])])
        for mode in args.modes:
            rs = results.get((mode, mib), [])
            if not rs:
                print(f"{LABELS[mode]:>21} {mib:>4g} M {'failed':>9}")
                continue
            med = {k: median([r[k] for r in rs])
                   for k in ("recovery", "detection", "restart", "restore", "lost", "back")}
            ratio = med["recovery"] / base if base == base else float("nan")
            print(f"{LABELS[mode]:>21} {mib:>4g} M {fmt(med['recovery'], 9)} {fmt(ratio, 6, 'x')} "
                  f"{fmt(med['detection'])} {fmt(med['restart'], 12)} {fmt(med['restore'], 11)} "
                  f"{med['lost']:>10g} {fmt(med['back'])}")
    print("(back = kill -> the first step past the killed one done: lost steps redone; torchrun's detection = "
          "kill -> its monitor's first log line about the failed group)")

    print("\nwhere the time goes after the kill, s per stage (medians; in the restarted processes, the latest rank):")
    print(f"{'mode':>21} {'state':>6} " + " ".join(f"{s:>10}" for s in STAGES))
    for mib in args.state_mib:
        for mode in args.modes:
            rs = results.get((mode, mib), [])
            if not rs:
                continue
            cells = [fmt(median([r["stages"].get(s, float("nan")) for r in rs]), 10) for s in STAGES]
            print(f"{LABELS[mode]:>21} {mib:>4g} M " + " ".join(cells))
    print("(start: from the generation event (restart mode), the failure event (in-process: the dead rank's "
          "replacement) or the first restarted worker's first line (torchrun) to the script's first line; "
          "restore: ftrain.init, which in-process also waits for the generation to form / dcp.load; "
          "commit: the first step's snapshot committed)")
    for mib in args.state_mib:
        rs = results.get(("torchrun", mib), [])
        if rs:
            print(f"torchrun dcp.save of {mib:g} MiB: {median([r['dcp_save_s'] for r in rs]):.2f} s "
                  f"(slowest rank, mean)")

    if not args.no_fsdp2:
        print(f"\n(4) FSDP2 ({args.nodes} ranks, fully_shard per Linear, --recovery restart, no failure): "
              f"mean step time "
              f"after warm-up, ftrain.init(snapshot_every=1) vs snapshot_every=10**9")
        print(f"{'state':>6} {'steps':>5} {'snap every step':>15} {'snap off':>9} {'on/off':>7} {'stall/step':>10}")
        for mib in args.state_mib:
            on, off = median(fsdp2.get((mib, 1), [])), median(fsdp2.get((mib, 0), []))
            print(f"{mib:>4g} M {args.fsdp2_steps or (30 if mib <= 64 else 12):>5} {fmt(on, 15)} {fmt(off, 9)} "
                  f"{fmt(on / off if off == off and off else float('nan'), 7, 'x')} {fmt(on - off, 10)}")
    print(f"\nload average (1 min) before the jobs: min {min(loads, default=0):.1f}, median "
          f"{median(loads):.1f}, max {max(loads, default=0):.1f}; total {time.time() - began:.0f} s")
    if notes:
        print("\nunexpected: recoveries that took more than one generation (their figures above include it) and "
              "failures nobody injected:")
        for note in notes:
            print("  " + note)
    if problems:
        print(f"\n{len(problems)} job(s) failed:")
        for problem in problems:
            print("---", problem, sep="\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
