"""Straggler detection benchmark (synthetic traces).

Drives ftrain.coordinator.detector.StragglerDetector through its public API with synthetic
per-step compute times and reports

* time to detection of one slow rank (windows and steps until its first StragglerFlag) for
  each slowdown x rank count, over several seeded trials, and
* false positives over long healthy traces (rank-windows stated), for several noise models:
  Gaussian 2% noise with a 2% global drift, Student-t(3) noise with 1% stalls of 1.5-3x,
  and Gaussian 5% and 10% noise.

Deterministic: every trace comes from numpy's default_rng seeded from --seed and the
configuration. Live kill/hang measurements are added separately.

    python benchmarks/detection.py                       # defaults, ~1-2 min on 2 cores
    python benchmarks/detection.py --ranks 4,64 --healthy-rank-windows 20000
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftrain.coordinator.detector import DetectionConfig, StragglerDetector, z_threshold  # noqa: E402

NOISE_MODELS = {
    # name: (noise sd, tail, description)
    "gauss2": (0.02, "gauss", "N(1, 0.02) iid per step, +2% global drift"),
    "t3stall": (0.02, "t3", "Student-t(3) 2% noise + 1% of steps stalled 1.5-3x, +2% drift"),
    "gauss5": (0.05, "gauss", "N(1, 0.05) iid per step, +2% global drift"),
    "gauss10": (0.10, "gauss", "N(1, 0.10) iid per step (noisy shared cluster), +2% global drift"),
}


def synth(rng: np.random.Generator, n_steps: int, n_ranks: int, noise: float, tail: str) -> np.ndarray:
    if tail == "gauss":
        eps = rng.standard_normal((n_steps, n_ranks))
    else:
        eps = rng.standard_t(3, (n_steps, n_ranks)) / math.sqrt(3.0)
    t = 1.0 + noise * eps
    if tail == "t3":
        stall = rng.random((n_steps, n_ranks)) < 0.01
        t = np.where(stall, t * rng.uniform(1.5, 3.0, (n_steps, n_ranks)), t)
    return np.maximum(t, 1e-6)


def time_to_detect(
    cfg: DetectionConfig, n_ranks: int, slowdown: float, seed: int, max_windows: int, noise: float
) -> tuple[int | None, int]:
    """Windows until the slow rank's first flag (None if not within max_windows), and the
    number of flags raised on healthy ranks meanwhile."""
    W = cfg.straggler_window
    rng = np.random.default_rng(seed)
    slow = int(rng.integers(n_ranks))
    det = StragglerDetector(cfg, ranks=range(n_ranks))
    times = synth(rng, max_windows * W, n_ranks, noise, "gauss")
    times[:, slow] *= slowdown
    rows = times.tolist()
    false = 0
    for i, row in enumerate(rows):
        for r in range(n_ranks):
            det.record(r, i, row[r])
        for f in det.new_flags():
            if f.rank == slow:
                return f.window + 1, false
            false += 1
    return None, false


def healthy_false_positives(
    cfg: DetectionConfig, n_ranks: int, rank_windows: int, seed: int, model: str, drift: float
) -> tuple[int, int]:
    """(flag events, healthy rank-windows in the trace)."""
    noise, tail, _ = NOISE_MODELS[model]
    W = cfg.straggler_window
    n_windows = max(cfg.straggler_confirm_windows + 1, math.ceil(rank_windows / n_ranks))
    n_steps = n_windows * W
    rng = np.random.default_rng(seed)
    det = StragglerDetector(cfg, ranks=range(n_ranks))
    flags = 0
    chunk_windows = max(1, 200_000 // (W * n_ranks))
    step = 0
    while step < n_steps:
        m = min(chunk_windows * W, n_steps - step)
        t = synth(rng, m, n_ranks, noise, tail)
        t *= (1.0 + drift * (step + np.arange(m)) / max(1, n_steps - 1))[:, None]
        for i, row in enumerate(t.tolist()):
            for r in range(n_ranks):
                det.record(r, step + i, row[r])
            flags += len(det.new_flags())
        step += m
    return flags, n_windows * n_ranks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="4,16,64,256", help="comma-separated rank counts")
    ap.add_argument("--slowdowns", default="1.1,1.2,1.5,3.0", help="comma-separated slowdown factors")
    ap.add_argument("--trials", type=int, default=20, help="seeded trials per (slowdown, ranks)")
    ap.add_argument("--max-windows", type=int, default=50, help="give up detection after this many windows")
    ap.add_argument("--window", type=int, default=20, help="straggler window (steps), 20-50")
    ap.add_argument("--noise", type=float, default=0.02, help="per-step noise sd for detection runs")
    ap.add_argument(
        "--healthy-rank-windows", type=int, default=50_000,
        help="rank-windows per (rank count, noise model) in the false-positive runs",
    )
    ap.add_argument("--models", default="gauss2,t3stall,gauss5,gauss10", help="noise models for the false-positive runs")
    ap.add_argument("--drift", type=float, default=0.02, help="global drift over a healthy trace (fraction)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    cfg = DetectionConfig(straggler_window=a.window).validate()
    ranks = [int(x) for x in a.ranks.split(",")]
    slowdowns = [float(x) for x in a.slowdowns.split(",")]
    models = a.models.split(",")
    W = cfg.straggler_window
    t0 = time.perf_counter()

    print(
        f"config: window={W} steps, min_slowdown={cfg.straggler_min_slowdown}, "
        f"confirm_windows={cfg.straggler_confirm_windows}, z_base={cfg.straggler_z_base}, "
        f"alpha={cfg.straggler_alpha}, seed={a.seed}"
    )
    print("z threshold by rank count: " + ", ".join(
        f"n={n}: {z_threshold(n, cfg.straggler_z_base, cfg.straggler_alpha):.2f}" for n in ranks))
    print()
    print(f"## Time to detection (one slow rank, noise N(1,{a.noise}), {a.trials} trials, "
          f"give up after {a.max_windows} windows)")
    print()
    print("| slowdown | ranks | detected | windows median | windows max | steps median | steps max | healthy-rank flags |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in slowdowns:
        for n in ranks:
            got: list[int] = []
            false = 0
            for trial in range(a.trials):
                seed = (a.seed * 1_000_003 + n * 10_007 + int(round(s * 1000)) * 101 + trial) & 0xFFFFFFFF
                w, fp = time_to_detect(cfg, n, s, seed, a.max_windows, a.noise)
                false += fp
                if w is not None:
                    got.append(w)
            if got:
                med = statistics.median(got)
                print(f"| {s:.2f} | {n} | {len(got)}/{a.trials} | {med:g} | {max(got)} | "
                      f"{med * W:g} | {max(got) * W} | {false} |")
            else:
                print(f"| {s:.2f} | {n} | 0/{a.trials} | - | - | - | - | {false} |")
    print()
    print(f"## False positives on healthy traces (global drift {a.drift:+.0%} over each trace)")
    print()
    print("| noise model | ranks | windows | rank-windows | flags |")
    print("|---|---:|---:|---:|---:|")
    total_rw = 0
    total_flags = 0
    for model in models:
        for n in ranks:
            seed = (a.seed * 1_000_003 + n * 7919 + models.index(model) * 31 + 17) & 0xFFFFFFFF
            flags, rw = healthy_false_positives(cfg, n, a.healthy_rank_windows, seed, model, a.drift)
            total_rw += rw
            total_flags += flags
            print(f"| {model} | {n} | {rw // n} | {rw} | {flags} |")
    print()
    print(f"total: {total_flags} false flags in {total_rw} healthy rank-windows "
          f"({total_rw * W} rank-steps)")
    print("noise models: " + "; ".join(f"{k} = {NOISE_MODELS[k][2]}" for k in models))
    print(f"elapsed {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
