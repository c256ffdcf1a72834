"""Who moves data at an in-memory restore (ftrain.snapshot.restore_plan), and the live-state
checksum it relies on (ftrain.snapshot.layout.slice_checksum)."""
from __future__ import annotations

import numpy as np
import torch

from ftrain.snapshot import layout as lay
from ftrain.snapshot.restore_plan import BlobSource, fetch_instead, plan_restore


def blobs(world: int, holders: set[int], producer_world: int | None = None, from_file: bool = False) -> list[BlobSource]:
    return [BlobSource(r, producer_world or world, r if r in holders else r % world, r in holders, from_file)
            for r in range(producer_world or world)]


def test_survivors_that_produced_their_blob_as_the_same_rank_are_candidates() -> None:
    plan = plan_restore(blobs(3, {0, 2}), 3)
    assert plan.check and plan.candidates == {0, 2}
    moved = [BlobSource(0, 3, 1, True, False), BlobSource(1, 3, 1, False, False), BlobSource(2, 3, 2, True, False)]
    assert plan_restore(moved, 3).candidates == {2}  # rank 0's producer is rank 1 now: its RNG is another's


def test_a_durable_file_another_world_size_or_no_survivor_broadcasts_at_once() -> None:
    assert not plan_restore(blobs(3, {0, 1, 2}, from_file=True), 3).check  # --resume
    assert not plan_restore(blobs(2, set(), producer_world=3), 2).check  # shrunk
    assert not plan_restore(blobs(3, set()), 3).check  # restart mode: every process is new
    assert not plan_restore([], 3).check


def test_a_minority_that_lacks_the_state_fetches_it_a_majority_gets_a_broadcast() -> None:
    assert not fetch_instead(0, 3)  # nobody lacks it: nothing moves
    assert fetch_instead(1, 3) and fetch_instead(2, 4) and fetch_instead(1, 2)
    assert not fetch_instead(2, 3) and not fetch_instead(3, 3)


def test_the_live_checksum_equals_the_payloads_and_sees_any_write() -> None:
    torch.manual_seed(0)
    tensors = [torch.randn(37), torch.randn(5, 3, dtype=torch.float64), torch.zeros(0), torch.randint(0, 9, (11,))]
    layout = lay.build_layout([(f"t{i}", t) for i, t in enumerate(tensors)])
    for rank in range(3):
        start, end = lay.slice_bounds(layout.total, 3, rank)
        payload = np.full(end - start, 0xAB, dtype=np.uint8)  # stale bytes in the alignment padding
        lay.copy_slice(tensors, layout, start, end, torch.from_numpy(payload))
        assert lay.slice_checksum(layout, start, end, payload=payload) == \
            lay.slice_checksum(layout, start, end, tensors=tensors)
    before = [lay.slice_checksum(layout, *lay.slice_bounds(layout.total, 3, r), tensors=tensors) for r in range(3)]
    tensors[1].data[4, 2] += 1.0  # a write autograd does not see (no version bump): still caught
    after = [lay.slice_checksum(layout, *lay.slice_bounds(layout.total, 3, r), tensors=tensors) for r in range(3)]
    assert sum(a != b for a, b in zip(before, after)) == 1
