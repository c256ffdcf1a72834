"""Pure membership and catalog logic."""
from ftrain.coordinator.catalog import BlobRecord, Catalog
from ftrain.coordinator.membership import Membership


def join_all(m: Membership, generation_hint: str = "") -> None:
    for node in m.live_slot_nodes():
        for lr in range(node.nproc):
            m.trainer_waiting(f"{node.node_id}/{lr}/{generation_hint}", node.node_id, lr)


def formed(nodes: int = 3, nproc: int = 1, min_nodes: int | None = None) -> Membership:
    m = Membership(nodes, min_nodes or nodes, replace_timeout_s=5.0)
    for i in reversed(range(nodes)):  # registration order must not matter
        m.register_node(f"node{i}", f"127.0.0.1:{1000 + i}", nproc, now=0.0)
    join_all(m)
    assert m.try_form(now=1.0) is not None
    return m


def test_first_generation_waits_for_every_node_and_orders_ranks_by_node_id() -> None:
    m = Membership(3, 2, replace_timeout_s=0.0)
    m.register_node("node1", "a", 1, 0.0)
    m.register_node("node0", "b", 1, 0.0)
    join_all(m)
    assert m.try_form(100.0) is None  # never shrinks below the target before the first generation
    m.register_node("node2", "c", 1, 0.0)
    join_all(m)
    generation = m.try_form(100.0)
    assert generation is not None and generation.number == 0
    assert [a.node_id for a in generation.ranks] == ["node0", "node1", "node2"]


def test_replacement_takes_the_dead_nodes_ranks() -> None:
    m = formed(3, nproc=2)
    assert m.node_dead("node1", now=2.0)
    assert m.pending and m.try_form(3.0) is None
    m.register_node("node7", "x", 2, 3.0)
    join_all(m, "b")
    generation = m.try_form(4.0)
    assert generation is not None and generation.number == 1
    assert [(a.rank, a.node_id, a.local_rank) for a in generation.ranks] == [
        (0, "node0", 0), (1, "node0", 1), (2, "node7", 0), (3, "node7", 1), (4, "node2", 0), (5, "node2", 1)]


def test_shrinks_after_the_replace_timeout_but_not_below_min_nodes() -> None:
    m = formed(3, min_nodes=2)
    m.node_dead("node1", now=10.0)
    join_all(m, "b")
    assert m.try_form(12.0) is None
    generation = m.try_form(15.0)
    assert generation is not None and generation.world_size == 2
    m.node_dead("node2", now=20.0)
    join_all(m, "c")
    assert m.try_form(100.0) is None  # 1 < min_nodes: wait


def test_a_returning_node_grows_the_job_back() -> None:
    m = formed(3, min_nodes=2)
    m.node_dead("node2", 1.0)
    join_all(m, "b")
    assert m.try_form(10.0).world_size == 2
    m.register_node("node9", "y", 1, 11.0)
    assert m.pending
    join_all(m, "c")
    assert m.try_form(12.0).world_size == 3


def test_trainer_failure_opens_a_generation_with_the_same_members() -> None:
    m = formed(2)
    assert m.trainer_failed("node1", 0, 2.0)
    join_all(m, "restarted")
    generation = m.try_form(3.0)
    assert generation.number == 1 and [a.node_id for a in generation.ranks] == ["node0", "node1"]


def test_spare_node_fills_a_slot_at_once() -> None:
    m = formed(2)
    m.register_node("spare", "s", 1, 2.0)
    assert not m.pending
    m.node_dead("node0", 3.0)
    assert m.slots[0] == "spare"


def record(step: int, rank: int, world: int = 2, nodes: tuple[str, ...] = ("a", "b")) -> BlobRecord:
    return BlobRecord(step, rank, world, f"t{rank}", f"n{rank}", nodes, info=None)


def test_catalog_commits_when_every_rank_reported_and_keeps_two() -> None:
    c = Catalog(keep=2)
    c.open_generation(0, 2)
    assert not c.record(0, record(1, 0))
    assert c.record(0, record(1, 1))
    for step in (2, 3):
        c.record(0, record(step, 0))
        c.record(0, record(step, 1))
    assert c.committed_steps == [2, 3] and c.newest_committed == 3 and c.min_retained_step() == 2


def test_catalog_refuses_reports_of_an_old_generation() -> None:
    c = Catalog()
    c.open_generation(0, 2)
    c.record(0, record(5, 0))
    c.open_generation(1, 2)
    assert not c.record(0, record(5, 1))
    assert c.newest_committed == -1
    assert c.drop_nodes({"a"}) == []
