"""Input pipeline throughput: ftrain.init(num_workers=0 / 2) vs torchrun + DDP + DataLoader(num_workers=2).

Items cost ~1 ms each (a sleep, like I/O, and a busy loop, like decoding). Every run happens in
this one invocation, alternating, and the table prints ftrain's samples/s as a ratio of
torchrun's. ftrain snapshots every step (its default) in the w=0 and w=2 columns; the last
column is w=2 with `--snapshot-every 10`, which separates the input pipeline from the per-step
snapshot (whose cost benchmarks/step_overhead.py measures). Usage: python
benchmarks/dataloader.py [--ranks 2] [--rounds 2]
"""
import argparse
import os
import statistics
import sys
import uuid
from pathlib import Path

from dataloader_job import BATCH, ITEMS
from jobs import free_port, run_for

JOB = str(Path(__file__).resolve().parent / "dataloader_job.py")


def run(command: list[str], env: dict[str, str]) -> float:
    return run_for("samples/s", command, env, timeout=600)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    per_epoch = ITEMS // (BATCH * args.ranks)  # torchrun's loop over the job's DataLoader ends with its epoch
    if args.steps > per_epoch:
        parser.error(f"--steps {args.steps}: at most {per_epoch} with {args.ranks} ranks (one epoch of the job's "
                     f"dataset; torchrun's loader would stop there and its samples/s would count missing steps)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTRAIN_")}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    print(f"{args.ranks} ranks, batch {BATCH} per rank, items cost 1 ms; medians of {args.rounds} rounds")
    print(f"{'items':6} {'torchrun+DDP w=2':>17} {'ftrain w=0':>11} {'ftrain w=2':>11} {'w=2 ratio':>10} "
          f"{'w=2 snap/10':>12} {'ratio':>6}")
    for kind in ("sleep", "cpu"):
        figures: dict[str, list[float]] = {"torchrun": [], "ft0": [], "ft2": [], "ft2s10": []}
        common = [JOB, "--kind", kind, "--steps", str(args.steps)]
        for _ in range(args.rounds):
            figures["torchrun"].append(run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                                            str(args.ranks), "--master-addr", "127.0.0.1", "--master-port",
                                            str(free_port()), *common, "--workers", "2"], env))
            for workers, every in ((0, 1), (2, 1), (2, 10)):
                job = f"bench-dl-{uuid.uuid4().hex[:8]}"
                figures[f"ft{workers}" + ("" if every == 1 else f"s{every}")].append(run(
                    [sys.executable, "-m", "ftrain", "launch", "--nodes", str(args.ranks), "--job-id", job,
                     "--snapshot-every", str(every), "--", *common, "--workers", str(workers)], env))
        med = {k: statistics.median(v) for k, v in figures.items()}
        print(f"{kind:6} {med['torchrun']:17.1f} {med['ft0']:11.1f} {med['ft2']:11.1f} "
              f"{med['ft2'] / med['torchrun']:9.2f}x {med['ft2s10']:12.1f} {med['ft2s10'] / med['torchrun']:5.2f}x")


if __name__ == "__main__":
    main()
