"""Shard placement for erasure-coded snapshot blobs (pure: no I/O, no randomness).

Role in ftrain: after a snapshot blob is coded RS(k, m) (:mod:`ftrain.snapshot.erasure`), its
k + m shards must live on k + m *distinct* nodes other than the node that produced the blob,
and the shard load should be even across nodes. Each trainer's capture pipeline (and the
async aggregator) calls :func:`effective_code` to shrink (k, m) to what the current membership
can hold and :func:`place_blobs` to map every shard to a node; the coordinator calls
:func:`effective_code` for the status it reports. Both are deterministic, so any process
recomputes the same answer.

Why "never on the producer": the producer keeps its own blob in memory anyway, so a shard on
it would be lost together with that copy. With shards only on other nodes a blob coded
(k, m) survives any m + 1 simultaneous node losses: if the producer is among the lost nodes at
most m of the blob's shard holders are lost (any k of the rest decode), and if it is not, the
producer still holds the blob itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

__all__ = ["effective_code", "place_blobs", "shard_loads"]


def effective_code(k: int, m: int, num_nodes: int) -> tuple[int, int]:
    """The (k', m') code to use for the requested RS(k, m) on a job of ``num_nodes`` nodes.

    At most ``num_nodes - 1`` shard targets exist (shards never go to the producer):

    * ``k + m <= num_nodes - 1``: keep (k, m);
    * otherwise keep parity first: ``m' = min(m, max(1, num_nodes - 1 - k))`` and
      ``k' = max(1, min(k, num_nodes - 1 - m'))``;
    * ``num_nodes == 2`` (a single target): (1, 0), a full copy on the other node;
    * ``num_nodes <= 1``: (1, 0) with no target at all: the blob stays local only, nothing is
      placed (and :func:`place_blobs` would reject it).

    With ``num_nodes >= 2`` the result always fits (``k' + m' <= num_nodes - 1``) and the job
    survives ``m' + 1`` simultaneous node losses (see the module docstring). Examples for a
    requested 4+2: 7 nodes -> (4, 2), 6 -> (4, 1), 4 -> (2, 1), 3 -> (1, 1), 2 or 1 -> (1, 0).
    """
    for name, value, low in (("k", k, 1), ("m", m, 0), ("num_nodes", num_nodes, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    targets = num_nodes - 1
    if targets <= 1:
        return (1, 0)
    if k + m <= targets:
        return (k, m)
    m2 = min(m, max(1, targets - k))
    k2 = max(1, min(k, targets - m2))
    return (k2, m2)


def place_blobs(producers: Sequence[str], nodes: Sequence[str], k: int, m: int) -> list[list[str]]:
    """Map every shard of every blob to a node.

    ``producers[b]`` is the id of the node that produced blob b (every blob is coded RS(k, m),
    so it has k + m shards of equal size); ``nodes`` lists the ids of the nodes that can hold
    shards (a producer need not be among them). Returns, for each blob b, the list of k + m
    node ids: element i is where shard i goes (shards 0..k-1 hold data, k..k+m-1 parity).

    Guarantees: the k + m targets of a blob are distinct and never its producer; the result
    depends only on the arguments (no randomness; the order of ``nodes`` is the tie-break); the
    per-node shard counts are as even as the "distinct, not the producer" rule allows: the
    maximum count is minimal and the minimum count maximal, so they differ by at most 1
    whenever any valid placement achieves that (for example whenever every node produces the
    same number of blobs, or every blob's producer is outside ``nodes``).

    Raises ValueError when ``nodes`` has duplicates or ``k + m`` exceeds the number of nodes
    other than some blob's producer (use :func:`effective_code` first).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"m must be an int >= 0, got {m!r}")
    node_list = list(nodes)
    index = {node: i for i, node in enumerate(node_list)}
    if len(index) != len(node_list):
        dups = sorted({n for n in node_list if node_list.count(n) > 1})
        raise ValueError(f"nodes must be distinct, got duplicates {dups}")
    s = k + m
    n = len(node_list)
    prod_idx = [index.get(p, -1) for p in producers]
    for b, p in enumerate(prod_idx):
        avail = n - (1 if p >= 0 else 0)
        if s > avail:
            raise ValueError(
                f"blob {b} (producer {producers[b]!r}) needs k + m = {s} distinct nodes other than its"
                f" producer but only {avail} exist among {n} nodes; shrink the code with"
                f" effective_code({k}, {m}, {n})"
            )

    # Phase 1: greedy least-loaded, ties broken by node order rotated by the blob index.
    loads = [0] * n
    assign: list[list[int]] = []
    for b, p in enumerate(prod_idx):
        cands = [q for q in range(n) if q != p]
        cands.sort(key=lambda q: (loads[q], (q - b) % n))
        chosen = sorted(cands[:s], key=lambda q: (q - b) % n)
        for q in chosen:
            loads[q] += 1
        assign.append(chosen)

    # Phase 2: move shards along augmenting paths from a node with load a to one with load
    # <= a - 2 until none exists; that is exactly the optimality condition for the balanced
    # (min sum of squared loads) assignment, which is also min-max and max-min.
    if n and max(loads) - min(loads) > 1:
        _rebalance(assign, prod_idx, loads, n)
    return [[node_list[q] for q in row] for row in assign]


def _rebalance(assign: list[list[int]], prod_idx: list[int], loads: list[int], n: int) -> None:
    holders: list[set[int]] = [set(row) for row in assign]
    on_node: list[set[int]] = [set() for _ in range(n)]
    for b, row in enumerate(assign):
        for q in row:
            on_node[q].add(b)
    while True:
        path = _find_path(holders, on_node, prod_idx, loads, n)
        if path is None:
            return
        for b, src, dst in path:
            row = assign[b]
            row[row.index(src)] = dst
            holders[b].discard(src)
            holders[b].add(dst)
            on_node[src].discard(b)
            on_node[dst].add(b)
        loads[path[0][1]] -= 1
        loads[path[-1][2]] += 1


def _find_path(
    holders: list[set[int]], on_node: list[set[int]], prod_idx: list[int], loads: list[int], n: int
) -> list[tuple[int, int, int]] | None:
    """Shortest chain of single-shard moves from the fullest possible node to a node >= 2 lighter."""
    for src in sorted(range(n), key=lambda q: (-loads[q], q)):
        if loads[src] - min(loads) < 2:
            return None
        prev: dict[int, tuple[int, int]] = {src: (-1, -1)}
        queue = deque([src])
        while queue:
            u = queue.popleft()
            for b in sorted(on_node[u]):
                for v in range(n):
                    if v in prev or v == prod_idx[b] or v in holders[b]:
                        continue
                    prev[v] = (u, b)
                    if loads[v] <= loads[src] - 2:
                        path: list[tuple[int, int, int]] = []
                        w = v
                        while w != src:
                            pu, pb = prev[w]
                            path.append((pb, pu, w))
                            w = pu
                        path.reverse()
                        return path
                    queue.append(v)
    return None


def shard_loads(placement: Sequence[Sequence[str]], nodes: Sequence[str]) -> dict[str, int]:
    """Number of shards each node holds under ``placement`` (every node listed, zero included)."""
    loads = {node: 0 for node in nodes}
    for row in placement:
        for node in row:
            loads[node] = loads.get(node, 0) + 1
    return loads
