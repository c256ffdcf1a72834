"""Tests for ftrain.snapshot.placement: effective code sizes and balanced shard placement."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftrain.snapshot.placement import effective_code, place_blobs, shard_loads

NODES = [f"node-{i}" for i in range(12)]


@pytest.mark.parametrize(
    "k,m,num_nodes,expected",
    [
        (4, 2, 7, (4, 2)),
        (4, 2, 6, (4, 1)),
        (4, 2, 4, (2, 1)),
        (4, 2, 3, (1, 1)),
        (4, 2, 2, (1, 0)),
        (4, 2, 1, (1, 0)),
        (4, 2, 0, (1, 0)),
        (4, 2, 100, (4, 2)),
        (10, 4, 12, (10, 1)),
        (4, 0, 3, (2, 0)),
        (1, 1, 3, (1, 1)),
    ],
)
def test_effective_code_table(k: int, m: int, num_nodes: int, expected: tuple[int, int]) -> None:
    assert effective_code(k, m, num_nodes) == expected


@settings(max_examples=300, deadline=None)
@given(k=st.integers(1, 16), m=st.integers(0, 8), num_nodes=st.integers(0, 40))
def test_effective_code_fits_and_never_grows(k: int, m: int, num_nodes: int) -> None:
    k2, m2 = effective_code(k, m, num_nodes)
    assert 1 <= k2 <= k and 0 <= m2 <= m
    if num_nodes >= 2:
        assert k2 + m2 <= num_nodes - 1
        if m >= 1 and num_nodes >= 3:
            assert m2 >= 1  # parity is kept whenever two targets exist
    if k + m <= num_nodes - 1:
        assert (k2, m2) == (k, m)


@pytest.mark.parametrize("args", [(0, 1, 5), (1, -1, 5), (1, 1, -1), (True, 1, 5), (1.0, 1, 5)])
def test_effective_code_errors(args: tuple) -> None:
    with pytest.raises(ValueError):
        effective_code(*args)


def _check_valid(producers: list[str], placement: list[list[str]], nodes: list[str], s: int) -> None:
    assert len(placement) == len(producers)
    for producer, row in zip(producers, placement):
        assert len(row) == s
        assert len(set(row)) == s, f"shards of one blob share a node: {row}"
        assert producer not in row, f"shard placed on its producer {producer}: {row}"
        assert set(row) <= set(nodes)


@st.composite
def _even_job(draw: st.DrawFn) -> tuple[list[str], list[str], int, int]:
    n = draw(st.integers(2, 12))
    nodes = NODES[:n]
    s = draw(st.integers(1, n - 1))
    k = draw(st.integers(1, s))
    per_node = draw(st.integers(1, 4))
    producers = draw(st.permutations([node for node in nodes for _ in range(per_node)]))
    return list(producers), nodes, k, s - k


@settings(max_examples=150, deadline=None)
@given(job=_even_job())
def test_balanced_when_every_node_produces_equally(job: tuple[list[str], list[str], int, int]) -> None:
    producers, nodes, k, m = job
    placement = place_blobs(producers, nodes, k, m)
    _check_valid(producers, placement, nodes, k + m)
    loads = shard_loads(placement, nodes)
    assert max(loads.values()) - min(loads.values()) <= 1, loads
    assert sum(loads.values()) == len(producers) * (k + m)


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(2, 9),
    data=st.data(),
)
def test_valid_and_deterministic_for_any_producers(n: int, data: st.DataObject) -> None:
    nodes = NODES[:n]
    s = data.draw(st.integers(1, n - 1))
    k = data.draw(st.integers(1, s))
    producers = data.draw(st.lists(st.sampled_from(nodes + ["outsider"]), max_size=20))
    first = place_blobs(producers, nodes, k, s - k)
    _check_valid(producers, first, nodes, s)
    assert place_blobs(list(producers), list(nodes), k, s - k) == first
    assert place_blobs(tuple(producers), tuple(nodes), k, s - k) == first


def _brute_force_bounds(producers: list[str], nodes: list[str], s: int) -> tuple[int, int]:
    """(smallest achievable max load, largest achievable min load) by enumeration."""
    options = [[c for c in itertools.combinations(nodes, s) if p not in c] for p in producers]
    best_max, best_min = 10**9, -1
    for choice in itertools.product(*options):
        loads = {node: 0 for node in nodes}
        for row in choice:
            for node in row:
                loads[node] += 1
        best_max = min(best_max, max(loads.values()))
        best_min = max(best_min, min(loads.values()))
    return best_max, best_min


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 5), data=st.data())
def test_optimal_balance_against_brute_force(n: int, data: st.DataObject) -> None:
    nodes = NODES[:n]
    s = data.draw(st.integers(1, n - 1))
    producers = data.draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=4))
    loads = shard_loads(place_blobs(producers, nodes, s, 0), nodes)
    assert (max(loads.values()), min(loads.values())) == _brute_force_bounds(producers, nodes, s)


def test_single_producer_is_spread_evenly() -> None:
    nodes = NODES[:5]
    producers = [nodes[0]] * 10
    placement = place_blobs(producers, nodes, 1, 1)
    loads = shard_loads(placement, nodes)
    assert loads[nodes[0]] == 0
    assert {loads[n] for n in nodes[1:]} == {5}


def test_skewed_producers_reach_the_optimum() -> None:
    nodes = NODES[:4]
    producers = [nodes[0]] * 9 + [nodes[1]] * 3
    placement = place_blobs(producers, nodes, 1, 1)
    _check_valid(producers, placement, nodes, 2)
    loads = shard_loads(placement, nodes)
    # node-0 can only take node-1's 3 blobs; the other 21 shards split over nodes 1..3.
    assert loads[nodes[0]] == 3 and sorted(loads[n] for n in nodes[1:]) == [7, 7, 7]


def test_shard_order_and_examples() -> None:
    nodes = NODES[:6]
    placement = place_blobs(nodes, nodes, 1, 1)
    assert all(len(row) == 2 for row in placement)
    assert place_blobs([], nodes, 4, 1) == []
    # 7 nodes, RS(4, 2), one blob per node -> every node holds 6 shards
    nodes7 = NODES[:7]
    loads = shard_loads(place_blobs(nodes7, nodes7, 4, 2), nodes7)
    assert set(loads.values()) == {6}


def test_large_job_is_fast_and_balanced() -> None:
    nodes = [f"n{i:03d}" for i in range(128)]
    producers = [node for node in nodes for _ in range(8)]
    placement = place_blobs(producers, nodes, 4, 2)
    loads = shard_loads(placement, nodes)
    assert max(loads.values()) - min(loads.values()) <= 1


def test_errors() -> None:
    nodes = NODES[:6]
    with pytest.raises(ValueError, match=r"needs k \+ m = 6 distinct nodes other than its producer but only 5"):
        place_blobs([nodes[0]], nodes, 4, 2)
    with pytest.raises(ValueError, match="effective_code"):
        place_blobs([nodes[0]], nodes, 4, 2)
    with pytest.raises(ValueError, match="only 6"):
        place_blobs(["elsewhere"], nodes, 5, 2)
    with pytest.raises(ValueError, match="distinct"):
        place_blobs([nodes[0]], nodes + [nodes[1]], 1, 1)
    with pytest.raises(ValueError, match="k must be"):
        place_blobs([nodes[0]], nodes, 0, 1)
    with pytest.raises(ValueError, match="m must be"):
        place_blobs([nodes[0]], nodes, 1, -1)
    with pytest.raises(ValueError):
        place_blobs([nodes[0]], [nodes[0]], 1, 0)  # one node: nothing but the producer
