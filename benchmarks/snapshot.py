"""Training-step overhead of snapshots, next to no snapshots, torch.save and DCP async_save.

Every configuration is a real `ftrain launch --nodes N` job of the examples' transformer
(gloo data-parallel on CPU), run in this one invocation, interleaved `--rounds` times; the
figure is the median step time of rank 0 after warm-up. Ratios are to the run without
snapshots ("off": one snapshot at the start and one at the end only). For snapshots every step
it also prints what the training thread itself spends per snapshot (copy-out and bookkeeping;
the rest of the cost is the background thread and the agents competing for the CPU).

Separate jobs differ by several percent on a shared machine even with the same settings, so
every round also runs one job that alternates blocks of `--ab-block` steps with a snapshot every
step and blocks without snapshots (snapshot_job.py --ab-block): its on/off ratio compares the
two in the same processes at the same time. Its median over rounds is the headline figure.

Run: python benchmarks/snapshot.py [--nodes 2] [--steps 60] [--rounds 2] [--dim 256] [--ab-block 10] [--device cuda]
(on a one-GPU machine: --nodes 1 --device cuda; NCCL takes one GPU per rank)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [  # (label, --snapshot-every, job mode, extra environment)
    ("off", 1_000_000, "ftrain", {}),
    ("ftrain every step", 1, "ftrain", {}),
    ("ftrain every 10 steps", 10, "ftrain", {}),
    ("ftrain every step, gRPC shards", 1, "ftrain", {"FTRAIN_SHARD_TRANSPORT": "grpc"}),
    ("torch.save every step", 1_000_000, "torch-save", {}),
    ("DCP async_save every step", 1_000_000, "dcp-async", {}),
]


def run(label: str, every: int, mode: str, env: dict[str, str], args: argparse.Namespace, workdir: Path,
        extra: tuple[str, ...] = ()) -> dict:
    out = workdir / f"{label.replace(' ', '_')}.json"
    cmd = [sys.executable, "-m", "ftrain", "launch", "--nodes", str(args.nodes), "--snapshot-every", str(every),
           "--job-id", "bench-snapshot", "--", str(REPO / "benchmarks" / "snapshot_job.py"), "--mode", mode,
           "--steps", str(args.steps), "--dim", str(args.dim), "--device", args.device, "--out", str(out), *extra]
    result = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", **env), capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise SystemExit(f"{label}: job failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--ab-block", type=int, default=10, help="steps per block of the interleaved job")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (GPU name printed with the results)")
    args = parser.parse_args()
    samples: dict[str, list[float]] = {label: [] for label, *_ in CONFIGS}
    stalls: dict[str, list[float]] = {label: [] for label, *_ in CONFIGS}  # training-thread ms per snapshot
    info: dict[str, dict] = {}
    ab_ratios: list[float] = []
    ab_steps = max(args.steps * 2, 8 * args.ab_block)
    with tempfile.TemporaryDirectory(prefix="ftrain-snapbench-") as tmp:
        for _ in range(args.rounds):
            for label, every, mode, env in CONFIGS:
                result = run(label, every, mode, env, args, Path(tmp))
                samples[label].append(result["median_step_s"])
                if every == 1 and mode == "ftrain":
                    stalls[label].append(result["stall_s"] / max(1, result["captures"]) * 1000)
                info[label] = result
            ab = run("interleaved", 1, "ftrain", {}, argparse.Namespace(**{**vars(args), "steps": ab_steps}),
                     Path(tmp), ("--ab-block", str(args.ab_block)))
            ab_ratios.append(ab["median_step_on_s"] / ab["median_step_off_s"])
    base = statistics.median(samples["off"])
    params = info["off"]["params"]
    import torch

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"transformer: {params / 1e6:.2f} M parameters (model + AdamW state = {params * 12 / 2**20:.0f} MiB), "
          f"{args.nodes} nodes x 1 {where} trainer, median of {args.rounds} rounds")
    print(f"{'configuration':32}{'step ms':>10}{'ratio':>8}   training-thread stall per snapshot")
    for label, *_ in CONFIGS:
        value = statistics.median(samples[label])
        stall = f"   {statistics.median(stalls[label]):.2f} ms" if stalls[label] else ""
        print(f"{label:32}{value * 1000:>10.1f}{value / base:>7.3f}x{stall}")
    print(f"interleaved in one job ({ab_steps} steps, blocks of {args.ab_block}): every step / off = "
          f"{statistics.median(ab_ratios):.3f}x (rounds: {', '.join(f'{r:.3f}' for r in ab_ratios)})")


if __name__ == "__main__":
    main()
