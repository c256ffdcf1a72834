"""Pure logic behind the loop idioms: the job-end agreement, frozen-process detection (fake
clock), the gradient bucket plan, the loader's step walk, and the reducer against a plain sum."""
from __future__ import annotations

import torch

from ftrain.coordinator.detector import frozen_ranks
from ftrain.coordinator.finish import finish_verdict
from ftrain.train.data import ElasticSampler
from ftrain.train.ddp import Reducer, plan_buckets
from ftrain.train.loader import _StepBatches


def test_finish_complete_when_every_rank_finished_at_one_step() -> None:
    assert finish_verdict(2, {0: 10, 1: 10}, {0: 10, 1: 10}, {})[0] == "complete"
    assert finish_verdict(3, {0: 10}, {1: 10, 2: 9}, {})[0] == "wait"
    assert finish_verdict(2, {}, {}, {})[0] == "wait"


def test_finish_mismatch_when_a_rank_goes_on_or_finishes_elsewhere() -> None:
    verdict, message = finish_verdict(2, {0: 10}, {1: 11}, {})
    assert verdict == "mismatch" and "rank 0 left session.steps() at step 10" in message and "step 11" in message
    verdict, message = finish_verdict(2, {0: 10}, {1: 10}, {1: 10})  # rank 1 blocked in step 10's all-reduce
    assert verdict == "mismatch"
    assert finish_verdict(2, {0: 10}, {1: 10}, {1: 9})[0] == "wait"  # an older pulse, from step 9's all-reduce
    verdict, message = finish_verdict(2, {0: 10, 1: 12}, {}, {})
    assert verdict == "mismatch" and "rank 0 at step 10, rank 1 at step 12" in message


def test_frozen_ranks_by_silent_pulses_with_a_fake_clock() -> None:
    pulses = {0: 100.0, 1: 95.0}
    assert frozen_ranks(pulses, [0, 1], since=90.0, now=100.5, silent_after_s=6.0, first_pulse_grace_s=30.0) == []
    assert frozen_ranks(pulses, [0, 1], since=90.0, now=101.5, silent_after_s=6.0, first_pulse_grace_s=30.0) == [1]
    # a rank that never pulsed is judged from the generation's start, after the grace
    assert frozen_ranks({0: 100.0}, [0, 1], since=90.0, now=101.0, silent_after_s=6.0, first_pulse_grace_s=30.0) == []
    assert frozen_ranks({0: 125.0}, [0, 1], since=90.0, now=121.0, silent_after_s=6.0, first_pulse_grace_s=30.0) == [1]
    assert frozen_ranks({}, [], since=0.0, now=1e9, silent_after_s=6.0, first_pulse_grace_s=30.0) == []


def test_bucket_plan_is_reverse_order_split_by_dtype_and_cap() -> None:
    params = [torch.nn.Parameter(torch.zeros(n, dtype=d)) for n, d in
              [(100, torch.float32), (50, torch.float64), (300, torch.float32), (10, torch.float32)]]
    buckets = plan_buckets(params, cap_bytes=1200)
    # reverse order; float32 10 + 300 floats exceed 1200 bytes, so 300 opens a new bucket; 100 joins no
    # full bucket of its dtype; float64 has its own
    assert [[p.numel() for p in b.params] for b in buckets] == [[10], [300], [50], [100]]
    again = plan_buckets(params, cap_bytes=1200)
    assert [[id(p) for p in b.params] for b in buckets] == [[id(p) for p in b.params] for b in again]
    for bucket in buckets:
        assert len({p.dtype for p in bucket.params}) == 1
        assert bucket.numel * bucket.params[0].element_size() <= 1200 or len(bucket.params) == 1


def test_step_batches_walk_from_the_consumed_position_without_moving_it() -> None:
    sampler = ElasticSampler(50, 4, seed=3)
    sampler.advance(2)
    walk = list(_StepBatches(sampler, rank=1, world_size=2, shares=None, steps=9))
    assert (sampler.epoch, sampler.cursor) == (0, 8), "the loader's walk moved the consumed position"
    check = ElasticSampler(50, 4, seed=3)
    check.epoch, check.cursor = 0, 8
    for batch in walk:
        assert list(batch) == check.indices(1, 2)
        check.advance(2)
    seeds = [b.seed for b in walk]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [b.seed for b in _StepBatches(sampler, 1, 2, None, 9)], "per-batch worker seeds must be repeatable"


class _SumGroup:
    """A world of `size` simulated in one process: all-reduce adds the other ranks' buckets."""

    def __init__(self, size: int, others: list[list[torch.Tensor]]) -> None:
        self.size, self.others, self.calls = size, others, 0
        self.pg = self
        self.waiting_since = None

    def allreduce(self, tensors: list[torch.Tensor]) -> "_SumGroup":
        for other in self.others:
            tensors[0].add_(other[0])
        self.calls += 1
        return self

    def wait(self, work: object, what: str) -> None:
        return None


def test_reducer_averages_during_backward_with_the_share_weights() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    reducer = Reducer(list(model.parameters()), bucket_cap_mb=25)
    # the other rank's bucket (one bucket here): its gradients, already weighted by its share 1/2
    other = [torch.cat([torch.ones(p.numel()) * 0.5 for p in reversed(list(model.parameters()))])]
    reducer.set_group(_SumGroup(2, [other]))  # type: ignore[arg-type]
    reducer.weight = 0.5
    x = torch.randn(5, 4)
    model(x).sum().backward()  # not armed (as inside no_sync): local gradients
    local = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reducer.arm()
    model(x).sum().backward()
    for p, g in zip(model.parameters(), local):
        assert torch.allclose(p.grad, (g + 1.0) / 2), "grad != (own + other) / 2"
    assert reducer.synced_backwards == 1
