"""ftrain.train.faults.FaultPlan: which --inject specs a trainer fires, and when (pure)."""
from __future__ import annotations

from ftrain.train.faults import FaultPlan

SPECS = ["kill-rank:1@step=5", "kill-rank:0@gen=1", "kill-node:2@step=7", "corrupt-shard:1@step=3",
         "slow-rank:1x2.5", "slow-rank:1x1.5"]


def test_each_spec_fires_on_its_target_at_its_step() -> None:
    rank1 = FaultPlan.of(SPECS, rank=1, node_index=1, local_rank=0)
    assert [f.raw for f in rank1.due(5)] == ["kill-rank:1@step=5"]
    assert rank1.due(4) == [] and rank1.due(7) == []  # node 2's fault, step 7: not this node
    assert rank1.slow_factor == 2.5  # the largest factor aimed at the rank
    node2_first = FaultPlan.of(SPECS, rank=4, node_index=2, local_rank=0)
    node2_other = FaultPlan.of(SPECS, rank=5, node_index=2, local_rank=1)
    assert [f.raw for f in node2_first.due(7)] == ["kill-node:2@step=7"] and node2_other.due(7) == []
    rank0 = FaultPlan.of(SPECS, rank=0, node_index=0, local_rank=0)
    assert [f.raw for f in rank0.due(3)] == ["corrupt-shard:1@step=3"]  # rank 0 corrupts node 1's shards
    assert rank0.slow_factor == 1.0


def test_a_generation_fault_fires_as_the_rank_enters_that_generation_not_at_a_step() -> None:
    rank0 = FaultPlan.of(SPECS, rank=0, node_index=0, local_rank=0)
    assert [f.raw for f in rank0.due(0, entering_generation=1)] == ["kill-rank:0@gen=1"]
    assert rank0.due(0, entering_generation=2) == []
    assert all(f.generation is None for s in range(10) for f in rank0.due(s))
    assert FaultPlan().due(5) == [] and FaultPlan().slow_factor == 1.0  # before any generation
