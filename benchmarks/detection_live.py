"""Detection latency on real local jobs: kill-rank, kill-node, hang (SIGSTOP) and a slow rank.

Each fault runs in its own `ftrain launch` job (3 nodes; the slow case 4); latency comes from
the coordinator's events (--events-file): fault injected -> first failure event, and for the
slow rank: job start -> first straggler flag (in steps too). Synthetic false-positive rates are
in benchmarks/detection.py. Run: python benchmarks/detection_live.py [--repeat 2]
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
SCRIPT = REPO / "tests" / "scripts" / "ledger_job.py"
CASES = [  # label, nodes, steps, extra args
    ("kill-rank", 3, 25, ["--inject", "kill-rank:1@step=10"]),
    ("kill-node", 3, 25, ["--inject", "kill-node:1@step=10"]),
    ("hang (SIGSTOP), --hang-timeout 3", 3, 25, ["--hang-timeout", "3", "--inject", "hang-rank:1@step=10"]),
    ("slow rank 3x (windows of 20 steps)", 4, 120, ["--straggler-policy", "report", "--inject", "slow-rank:1x3.0"]),
]


def run(nodes: int, steps: int, extra: list[str], workdir: Path) -> list[dict]:
    events = workdir / "events.jsonl"
    cmd = [sys.executable, "-m", "ftrain", "launch", "--nodes", str(nodes), "--job-id", "bench-detect",
           "--events-file", str(events), *extra, "--", str(SCRIPT), "--steps", str(steps),
           "--out", str(workdir / "out.pt")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    if result.returncode != 0:
        raise SystemExit(f"job failed: {' '.join(extra)}\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in events.read_text().splitlines()]


def latency(label: str, events: list[dict]) -> float:
    if label.startswith("slow"):
        start = next(e["time"] for e in events if e["kind"] == "generation")
        return next(e["time"] for e in events if e["kind"] == "straggler") - start
    injected = next(e["time"] for e in events if e["kind"] == "inject")
    return min(e["time"] for e in events if e["kind"] in ("failure", "collective-failed")) - injected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print(f"{'fault':38}{'detection s (median)':>22}{'runs':>6}")
    with tempfile.TemporaryDirectory(prefix="ftrain-detect-") as tmp:
        for label, nodes, steps, extra in CASES:
            values = [latency(label, run(nodes, steps, extra, Path(tmp))) for _ in range(args.repeat)]
            print(f"{label:38}{statistics.median(values):>22.2f}{len(values):>6}")


if __name__ == "__main__":
    main()
