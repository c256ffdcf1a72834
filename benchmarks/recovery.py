"""Recovery time after a node is SIGKILLed: ftrain vs torchrun restarting from a checkpoint.

Both run the examples' transformer (same model, same machine, same invocation), with N
workers (one per node), the failure at the same step:
- ftrain: `ftrain launch --nodes N --inject kill-node:1@step=S` (replacement after 1 s);
  measured from the coordinator's events: failure -> next committed step, and
  failure -> the job is back at the step where it failed.
- torchrun: `torchrun --nproc-per-node N --max-restarts 1`, rank 1 SIGKILLs itself at step S,
  every worker restarts and resumes from a torch.save checkpoint written every K steps.
  Measured from the workers' timeline: kill -> first step after restart, and
  kill -> back at step S (the lost steps since the last checkpoint are recomputed).

Prints both and the ratio. Run: python benchmarks/recovery.py [--nodes 3] [--kill-step 25]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ftrain.config import JobSettings, parse_fault  # noqa: E402
from ftrain.launch.base import Launcher  # noqa: E402
from ftrain.launch.local import LocalLauncher  # noqa: E402


def run_ftrain(nodes: int, steps: int, kill_step: int, dim: int, workdir: Path, spares: int = 0) -> dict:
    settings = JobSettings(job_id="bench-recovery", target_nodes=nodes, min_nodes=nodes,
                           inject=(parse_fault(f"kill-node:1@step={kill_step}"),), replace_timeout_s=60.0)
    progress: list[tuple[float, int]] = []
    with open(workdir / "ftrain.log", "w") as log:
        launcher = LocalLauncher(settings, 1, [str(REPO / "examples" / "transformer_lm.py"), "--steps", str(steps),
                                               "--dim", str(dim)], replace_delay_s=1.0, agent_output=log,
                                 spares=spares)

        def tick(running: Launcher) -> None:
            progress.append((time.time(), running.coordinator.state.machine.catalog.newest_committed))

        code = launcher.run(on_tick=tick)
    events = list(launcher.coordinator.state.events)
    if code != 0:
        raise SystemExit(f"ftrain job failed: {launcher.coordinator.state.message}")
    kill = next(e["time"] for e in events if e["kind"] == "inject")
    recovered = next(e for e in events if e["kind"] == "recovered")
    back = next(t for t, step in progress if t > kill and step >= kill_step)
    return {"first_step": recovered["time"] - kill, "back_at_failure_step": back - kill}


def run_torchrun(nodes: int, steps: int, kill_step: int, every: int, dim: int, workdir: Path) -> dict:
    timeline = workdir / "timeline.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nodes),
           "--max-restarts", "1", "--monitor-interval", "0.1",
           str(REPO / "benchmarks" / "torchrun_checkpoint_job.py"), "--steps", str(steps), "--kill-step",
           str(kill_step), "--checkpoint-every", str(every), "--checkpoint", str(workdir / "ckpt.pt"),
           "--timeline", str(timeline), "--dim", str(dim)]
    with open(workdir / "torchrun.log", "w") as log:
        result = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"torchrun job failed, see {workdir / 'torchrun.log'}")
    events = [json.loads(line) for line in timeline.read_text().splitlines()]
    kill = next(e["t"] for e in events if e["kind"] == "kill")
    after = [e for e in events if e["kind"] == "step" and e.get("attempt") == 1]
    checkpoints = [e["seconds"] for e in events if e["kind"] == "checkpoint"]
    return {"first_step": after[0]["t"] - kill,
            "back_at_failure_step": next(e["t"] for e in after if e["step"] >= kill_step) - kill,
            "resumed_from": next(e["step"] for e in events if e["kind"] == "started" and e["attempt"] == 1),
            "checkpoint_s": sum(checkpoints) / max(len(checkpoints), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--kill-step", type=int, default=25)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ftrain-bench-") as tmp:
        workdir = Path(tmp)
        ours = run_ftrain(args.nodes, args.steps, args.kill_step, args.dim, workdir)
        spare = run_ftrain(args.nodes, args.steps, args.kill_step, args.dim, workdir, spares=1)
        base = run_torchrun(args.nodes, args.steps, args.kill_step, args.checkpoint_every, args.dim, workdir)
    print(f"recovery after SIGKILL of one of {args.nodes} nodes at step {args.kill_step} "
          f"(transformer dim {args.dim}; torchrun checkpoints every {args.checkpoint_every} steps, "
          f"resumed from step {base['resumed_from']}, {base['checkpoint_s'] * 1000:.0f} ms per torch.save)")
    print("ftrain: a replacement node is started 1 s after the loss (as a cluster manager would); "
          "ftrain + spare: a hot-spare node (started with the job) takes the ranks at once")
    print(f"{'':34}{'torchrun+ckpt':>14}{'ftrain':>9}{'ratio':>7}{'ftrain+spare':>14}{'ratio':>7}")
    for key, label in (("first_step", "kill -> first step after restart"),
                       ("back_at_failure_step", "kill -> back at the failure step")):
        print(f"{label:34}{base[key]:>13.2f}s{ours[key]:>8.2f}s{base[key] / ours[key]:>6.2f}x"
              f"{spare[key]:>13.2f}s{base[key] / spare[key]:>6.2f}x")
    print("ratio = torchrun time / ftrain time (above 1: ftrain recovers faster)")


if __name__ == "__main__":
    main()
