"""Snapshot compression: shuffle round trip, zstd round trip, and a real job with --compress zstd."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from ftrain.snapshot import compress
from procs import SCRIPTS, new_job_id, run_ftrain


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_shuffle_and_zstd_round_trip(raw: bytes) -> None:
    data = np.frombuffer(raw, dtype=np.uint8)
    assert np.array_equal(compress.unshuffle(compress.shuffle(data)), data)
    assert np.array_equal(compress.decompress(compress.compress(data), len(data)), data)


def test_shuffling_makes_float_state_compressible() -> None:
    state = (torch.randn(1 << 16) * 1e-3).numpy().view(np.uint8)
    import zstandard

    plain = len(zstandard.ZstdCompressor(level=1).compress(state.tobytes()))
    assert len(compress.compress(state)) < plain


@pytest.mark.timeout(240)
def test_job_with_compressed_snapshots_recovers_bit_identical(tmp_path: Path) -> None:
    outs = {}
    for name, extra in (("ref", []), ("zstd", ["--compress", "zstd", "--inject", "kill-node:1@step=9"])):
        job = new_job_id(name)
        out = tmp_path / f"{name}.pt"
        result = run_ftrain(["launch", "--nodes", "3", "--job-id", job, *extra, "--", str(SCRIPTS / "ledger_job.py"),
                             "--steps", "20", "--out", str(out)], job, timeout=200)
        assert result.returncode == 0, result.stdout[-4000:]
        outs[name] = torch.load(out)
    assert outs["zstd"]["generation"] >= 1
    for key in outs["ref"]["params"]:
        assert torch.equal(outs["ref"]["params"][key], outs["zstd"]["params"][key])
