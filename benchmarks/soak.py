"""Soak test (not in CI): a long local job with random faults at a mean time between failures.

Faults are drawn from an exponential distribution (--mtbf seconds) and alternate at random
between SIGKILL of one trainer process and SIGKILL of a whole node (agent + trainers + shards;
the launcher starts a replacement). At the end it prints goodput (useful step time / wall
time, useful step time = committed steps x the median failure-free step time), recoveries,
failures and lost (recomputed) steps, and whether the job completed.

Run: python benchmarks/soak.py --minutes 10 --mtbf 30 [--nodes 4] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ftrain.config import JobSettings  # noqa: E402
from ftrain.launch.local import LocalLauncher  # noqa: E402
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--mtbf", type=float, default=30.0, help="mean seconds between faults")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--step-sleep", type=float, default=0.05, help="seconds of 'compute' per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    steps = int(args.minutes * 60 / max(args.step_sleep, 0.01))  # more than fits: the soak stops on time
    settings = JobSettings(job_id="soak", target_nodes=args.nodes, min_nodes=args.nodes, replace_timeout_s=120.0)
    stop = threading.Event()
    faults: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ftrain-soak-") as tmp, open(Path(tmp) / "job.log", "w") as log:
        launcher = LocalLauncher(settings, 1, [str(REPO / "tests" / "scripts" / "ledger_job.py"), "--steps", str(steps),
                                               "--step-sleep", str(args.step_sleep), "--out", f"{tmp}/out.pt"],
                                 replace_delay_s=1.0, agent_output=log, timeout_s=args.minutes * 60)

        def injector() -> None:
            while not stop.wait(rng.expovariate(1.0 / args.mtbf)):
                state = launcher.coordinator.state
                with state.cond:
                    pids = [t.pid for infos in state.machine.trainers.values() for t in infos if t.state == pb.TRAINER_STATE_RUNNING]
                live = [a for a in launcher.agents if a.process.poll() is None]
                if rng.random() < 0.5 and pids:
                    pid = rng.choice(pids)
                    faults.append(f"kill-rank pid {pid}")
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                elif live:
                    agent = rng.choice(live)
                    faults.append(f"kill-node {agent.node_id}")
                    try:
                        os.killpg(agent.process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        thread = threading.Thread(target=injector, daemon=True)
        started = time.monotonic()
        thread.start()
        code = launcher.run()
        stop.set()
        wall = time.monotonic() - started
    events = launcher.coordinator.state.events
    state = launcher.coordinator.state.machine
    durations = [e for e in events if e["kind"] == "recovered"]
    committed = state.catalog.newest_committed
    step_time = args.step_sleep
    print(f"soak: {args.minutes:.1f} min, {args.nodes} nodes, MTBF {args.mtbf:.0f} s, seed {args.seed}")
    print(f"  faults injected     {len(faults)} ({sum(f.startswith('kill-node') for f in faults)} nodes, "
          f"{sum(f.startswith('kill-rank') for f in faults)} trainers)")
    print(f"  failures detected   {state.failures}")
    print(f"  recoveries          {state.recoveries}"
          + (f" (median {statistics.median(e['recovery_s'] for e in durations):.2f} s to the next commit)"
             if durations else ""))
    print(f"  lost steps          {state.lost_steps.total} (recomputed after restores)")
    print(f"  committed steps     {committed} in {wall:.0f} s")
    print(f"  goodput             {committed * step_time / wall:.1%} (committed steps x {step_time} s / wall time; "
          "the rest is start-up, communication, recovery and recomputation)")
    print(f"  outcome             {'completed' if code == 0 else state.job_state + ': ' + state.message[:200]}")


if __name__ == "__main__":
    main()
