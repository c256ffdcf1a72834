"""When does `--compress zstd` pay? zstd level 1 on real training state, with and without the
byte shuffle, fp32 and bf16, next to memcpy of the same bytes (one process, best of N).

The state is the examples' transformer after a few AdamW steps (parameters + both moments), laid
out exactly as a snapshot blob's payload. Compression pays when the network moves fewer bytes
per second than `ratio x compress GB/s` saves, roughly: link speed < compress GB/s x (1 - 1/ratio).
Run: python benchmarks/compression.py [--dim 256] [--repeat 5]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from ftrain.snapshot import compress  # noqa: E402
from ftrain.snapshot import layout as lay  # noqa: E402
from transformer_lm import TinyLM, synthetic_tokens  # noqa: E402


def state_bytes(dim: int, dtype: torch.dtype) -> np.ndarray:
    torch.manual_seed(0)
    model = TinyLM(dim=dim).to(dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    data = synthetic_tokens(64, 64, 256)
    for _ in range(5):
        logits = model(data[:8, :-1])
        nn.functional.cross_entropy(logits.float().reshape(-1, 256), data[:8, 1:].reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad()
    tensors = list(model.state_dict().values())
    tensors += [v for s in optimizer.state_dict()["state"].values() for v in s.values() if torch.is_tensor(v)]
    layout = lay.build_layout([(str(i), t) for i, t in enumerate(tensors)])
    out = torch.empty(layout.total, dtype=torch.uint8)
    lay.copy_slice(tensors, layout, 0, layout.total, out)
    return out.numpy()


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import zstandard

    print(f"{'state':10}{'MiB':>8}{'codec':>28}{'ratio':>8}{'GB/s':>8}{'x memcpy':>10}")
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        data = state_bytes(args.dim, dtype)
        size = len(data)
        target = np.empty_like(data)
        memcpy = size / best(lambda: np.copyto(target, data), args.repeat) / 1e9
        plain_compressor = zstandard.ZstdCompressor(level=1)
        rows = [("memcpy", 1.0, memcpy)]
        plain = plain_compressor.compress(data.tobytes())
        rows.append(("zstd-1", size / len(plain), size / best(lambda: plain_compressor.compress(data), args.repeat) / 1e9))
        packed = compress.compress(data)
        rows.append(("shuffle + zstd-1 (ftrain)", size / len(packed),
                     size / best(lambda: compress.compress(data), args.repeat) / 1e9))
        for codec, ratio, speed in rows:
            print(f"{name:10}{size / 2**20:>8.1f}{codec:>28}{ratio:>8.2f}{speed:>8.2f}{speed / memcpy:>10.3f}")


if __name__ == "__main__":
    main()
