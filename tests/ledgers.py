"""Checks on the sample ledger that tests/scripts/ledger_job.py writes: every sample of every epoch
used exactly once, whatever world sizes the job went through."""
from __future__ import annotations

import collections

from ftrain.train.data import ElasticSampler


def assert_exactly_once(final: dict) -> None:
    """The ledger equals what the elastic sampler hands out over the job's world sizes, once each."""
    sampler = ElasticSampler(final["samples"], final["batch_size"], seed=final.get("seed", 7))
    expected: collections.Counter = collections.Counter()
    for world in final["world_sizes"]:
        expected.update(f"{sampler.epoch}:{i}" for part in sampler.global_indices(world) for i in part)
        sampler.advance(world)
    assert collections.Counter(final["ledger"]) == expected
    assert set(final["ledger"].values()) == {1}
