"""Pure pieces of the trainer side: elastic sampler, state layout, config parsing."""
from __future__ import annotations

import collections
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from ftrain.config import ConfigError, JobSettings, parse_ec, parse_fault
from ftrain.snapshot import layout as lay
from ftrain.train.data import ElasticSampler, split_counts


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), batch=st.integers(1, 40), worlds=st.lists(st.integers(1, 8), min_size=1, max_size=60))
def test_sampler_uses_each_sample_once_per_epoch_whatever_the_world_size(n: int, batch: int, worlds: list[int]) -> None:
    sampler = ElasticSampler(n, batch, seed=3)
    seen: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for world in worlds:
        parts = sampler.global_indices(world)
        assert len(parts) == world
        for rank, part in enumerate(parts):
            assert part == sampler.indices(rank, world)
        epoch = sampler.epoch
        for part in parts:
            seen[epoch].update(part)
        sampler.advance(world)
    for epoch, counts in seen.items():
        assert set(counts.values()) == {1}
        if epoch < sampler.epoch:
            assert len(counts) == n


def test_sampler_state_round_trip_and_mismatch() -> None:
    a = ElasticSampler(50, 4, seed=1)
    a.advance(3)
    b = ElasticSampler(50, 4, seed=1)
    b.load_state_dict(a.state_dict())
    assert b.global_indices(2) == a.global_indices(2)
    with pytest.raises(ValueError, match="same dataset"):
        ElasticSampler(51, 4).load_state_dict(a.state_dict())


def test_split_counts_is_exact() -> None:
    assert split_counts(5, [16, 16, 16]) == [2, 2, 1]
    assert sum(split_counts(101, [3, 1, 7])) == 101


@settings(max_examples=25, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(0, 7), min_size=0, max_size=3), min_size=1, max_size=6),
       world=st.integers(1, 5))
def test_layout_slices_reassemble_bit_exactly(shapes: list[list[int]], world: int) -> None:
    gen = torch.Generator().manual_seed(0)
    dtypes = [torch.float32, torch.float16, torch.int64, torch.bool, torch.bfloat16]
    tensors = [(f"t{i}", torch.randn(tuple(s), generator=gen).to(dtypes[i % len(dtypes)])) for i, s in enumerate(shapes)]
    layout = lay.build_layout(tensors)
    pieces = []
    for rank in range(world):
        a, b = lay.slice_bounds(layout.total, world, rank)
        out = torch.empty(b - a, dtype=torch.uint8)
        lay.copy_slice([t for _, t in tensors], layout, a, b, out)
        buffer = np.zeros(lay.blob_size(b - a, 200), dtype=np.uint8)
        buffer[lay.HEADER_BYTES:lay.HEADER_BYTES + b - a] = out.numpy()
        size = lay.write_header(buffer, b - a, lay.encode_meta({"slice": (a, b)}))
        assert lay.blob_checksum(buffer) == zlib.crc32(buffer[:size].tobytes())
        meta, payload = lay.read_blob(buffer[:size])
        pieces.append((meta["slice"][0], payload))
    views = lay.tensors_from_flat(layout, lay.assemble(layout.total, pieces))
    for name, tensor in tensors:
        assert torch.equal(views[name], tensor) and views[name].dtype == tensor.dtype


def test_slice_copier_matches_copy_slice_and_follows_reallocated_tensors() -> None:
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(5, 7, generator=gen), torch.randn(3, generator=gen).to(torch.float16),
               torch.empty(0), torch.randn(64, 9, generator=gen)]
    layout = lay.build_layout([(f"t{i}", t) for i, t in enumerate(tensors)])
    copier = lay.SliceCopier()

    def check(out_len_extra: int = 0) -> None:
        for world in (1, 2, 3):
            for rank in range(world):
                a, b = lay.slice_bounds(layout.total, world, rank)
                # alignment gaps are written by neither: both start from the same filler
                expected = torch.full((b - a,), 7, dtype=torch.uint8)
                got = torch.full((b - a + out_len_extra,), 7, dtype=torch.uint8)
                lay.copy_slice(tensors, layout, a, b, expected)
                copier.copy(tensors, layout, a, b, got[:b - a])
                assert torch.equal(expected, got[:b - a]), (world, rank)

    check()
    a, b = lay.slice_bounds(layout.total, 2, 1)
    out = torch.zeros(b - a, dtype=torch.uint8)
    copier.copy(tensors, layout, a, b, out)
    for tensor in tensors:  # in-place updates (an optimizer step) are seen through the kept views
        tensor.mul_(3)
    copier.copy(tensors, layout, a, b, out)
    expected = torch.zeros(b - a, dtype=torch.uint8)
    lay.copy_slice(tensors, layout, a, b, expected)
    assert torch.equal(out, expected)
    tensors[3] = torch.randn(64, 9, generator=gen)  # re-allocated (same shape): the views are rebuilt
    check(out_len_extra=5)
    tensors[3] = tensors[3].t()  # non-contiguous: copied the plain way
    layout = lay.build_layout([(f"t{i}", t) for i, t in enumerate(tensors)])
    check()


def test_corrupted_or_foreign_blob_is_refused() -> None:
    buffer = np.zeros(lay.blob_size(8, 40), dtype=np.uint8)
    size = lay.write_header(buffer, 8, lay.encode_meta({}))
    buffer[lay.HEADER_BYTES + 3] ^= 1
    with pytest.raises(lay.BlobFormatError, match="checksum"):
        lay.read_blob(buffer[:size])
    with pytest.raises(lay.BlobFormatError, match="magic"):
        lay.read_blob(np.zeros(64, dtype=np.uint8))
    with pytest.raises(lay.BlobFormatError, match="missing"):
        lay.assemble(100, [(0, np.zeros(50, dtype=np.uint8))])


def test_fault_and_ec_specs() -> None:
    assert parse_fault("kill-node:1@step=20").step == 20
    assert parse_fault("slow-rank:1x3.0").factor == 3.0
    assert parse_ec("4+2").k == 4
    for bad, message in [("kill-node:1", "needs a step"), ("explode:1@step=2", "unknown fault kind"),
                         ("slow-rank:1", "needs a factor"), ("slow-rank:1x0.5", ">= 1.0"), ("kill-rank", "cannot parse")]:
        with pytest.raises(ConfigError, match=message):
            parse_fault(bad)
    for bad in ["4", "0+2", "a+b", "200+100"]:
        with pytest.raises(ConfigError, match="--ec"):
            parse_ec(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_text_gives_a_config_error_or_a_valid_spec(text: str) -> None:
    for parser in (parse_fault, parse_ec):
        try:
            parser(text)
        except ConfigError as error:
            assert str(error).startswith(("--inject", "--ec"))


def test_job_settings_validation_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--min-nodes"):
        JobSettings(target_nodes=2, min_nodes=3).validate()
    with pytest.raises(ConfigError, match="node index 5"):
        JobSettings(target_nodes=3, min_nodes=3, inject=(parse_fault("kill-node:5@step=2"),)).validate()
    with pytest.raises(ConfigError, match="--mode"):
        JobSettings(mode="federated").validate()
    with pytest.raises(ConfigError, match="--heartbeat-timeout"):
        JobSettings(heartbeat_dead_after_s=1.5).validate()


@pytest.mark.parametrize("dead_after_s", [2.0, 2.5, 3.0, 4.0, 10.0, 60.0])
def test_every_valid_heartbeat_timeout_gives_a_valid_detector(dead_after_s: float) -> None:
    from ftrain.coordinator.machine import CoordinatorMachine

    machine = CoordinatorMachine(JobSettings(heartbeat_dead_after_s=dead_after_s).validate(), "127.0.0.1:1", 0.0)
    assert machine.hang.timeout_s() > 0


def test_snapshot_memory_is_a_size_or_a_share_of_the_machine() -> None:
    from ftrain.config import ConfigError, snapshot_memory_bytes

    gib = 1 << 30
    assert snapshot_memory_bytes("", 16 * gib) == 8 * gib  # the default: half the machine
    assert snapshot_memory_bytes("25%", 16 * gib) == 4 * gib
    assert snapshot_memory_bytes("8GiB", 16 * gib) == 8 * gib
    assert snapshot_memory_bytes("1.5G", 0) == 1_500_000_000
    assert snapshot_memory_bytes("512 MiB", 0) == 512 << 20
    assert snapshot_memory_bytes("4096", 0) == 4096
    for bad in ("lots", "0", "150%", "-1GiB", "8 parsecs"):
        with pytest.raises(ConfigError, match="--snapshot-memory"):
            snapshot_memory_bytes(bad, 16 * gib)
