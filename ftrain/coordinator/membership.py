"""Membership and generations (pure): which nodes hold which slots, and when a generation forms.

Every membership change (a dead trainer or node, a node that joins) opens a new *pending*
generation; it *forms* once every trainer of every live slot has asked to join it. Ranks are
dealt out in slot order, so a replacement node that takes a dead node's slot gets the dead
node's ranks, which keeps a fixed-size job bit-identical to a failure-free run. A dead node's
slot waits `replace_timeout_s` for a replacement; after that the job shrinks to the survivors,
never below `min_nodes`. Nodes that join while every slot is taken wait as spares and fill the
next free slot at once. No I/O and no clock: callers pass `now`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ftrain.textfmt import natural_key


@dataclass
class NodeRecord:
    node_id: str
    address: str
    nproc: int
    alive: bool = True
    slot: int | None = None


@dataclass(frozen=True)
class RankAssignment:
    rank: int
    node_id: str
    local_rank: int
    trainer_uid: str


@dataclass
class Generation:
    number: int
    ranks: list[RankAssignment]
    formed_at: float
    batch_shares: list[int] = field(default_factory=list)
    _rank_index: dict[str, int] | None = field(default=None, init=False, repr=False, compare=False)
    _node_ids: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def rank_of(self, trainer_uid: str) -> int | None:
        if self._rank_index is None:  # built once: every joiner of a large generation asks
            index: dict[str, int] = {}
            for assignment in self.ranks:
                index.setdefault(assignment.trainer_uid, assignment.rank)
            self._rank_index = index
        return self._rank_index.get(trainer_uid)

    def node_ids(self) -> list[str]:
        """The nodes in rank order (each once)."""
        if self._node_ids is None:
            self._node_ids = list(dict.fromkeys(a.node_id for a in self.ranks))
        return list(self._node_ids)


class Membership:
    """Slots, nodes, waiting trainers and the generation state machine."""

    def __init__(self, target_nodes: int, min_nodes: int, replace_timeout_s: float) -> None:
        if not 1 <= min_nodes <= target_nodes:
            raise ValueError(f"min_nodes must be in 1..target_nodes ({target_nodes}); got {min_nodes}")
        self.target_nodes = target_nodes
        self.min_nodes = min_nodes
        self.replace_timeout_s = replace_timeout_s
        self.slots: list[str | None] = [None] * target_nodes
        self.nodes: dict[str, NodeRecord] = {}
        self.waiting: dict[tuple[str, int], str] = {}
        self.formed: Generation | None = None
        self.number = -1                      # newest generation number (formed or pending)
        self.pending_since: float | None = 0.0  # the first generation is pending from the start
        self.batch_shares: list[int] = []
        self._node_counter = 0
        self._order: dict[str, int] = {}    # node id -> when it was first registered (self.nodes' order)
        self._spares: set[str] = set()      # live nodes without a slot
        self.version = 0                    # bumped whenever a node's address or nproc may have changed
        self.floor = 0                  # the next generation's number is at least this
        self.slots_restored = False     # slots came back from re-registering nodes

    # -- nodes -----------------------------------------------------------------------------
    def new_node_id(self) -> str:
        while f"node{self._node_counter}" in self.nodes:
            self._node_counter += 1
        return f"node{self._node_counter}"

    def register_node(self, node_id: str, address: str, nproc: int, now: float, slot: int = -1) -> str:
        """Adds (or re-adds) a node; fills a free slot if there is one, else it waits as a spare.

        `slot` is the slot a re-registering node held before the coordinator restarted: it gets
        it back (so ranks stay where they were) while no generation has formed yet."""
        node_id = node_id or self.new_node_id()
        self.version += 1
        record = self.nodes.get(node_id)
        if record is not None and record.alive:
            record.address, record.nproc = address, nproc
            return node_id
        record = NodeRecord(node_id=node_id, address=address, nproc=nproc)
        self.nodes[node_id] = record
        self._order.setdefault(node_id, len(self._order))
        self._spares.add(node_id)
        if self.formed is None and 0 <= slot < self.target_nodes and self.slots[slot] is None:
            self.slots[slot], record.slot = node_id, slot
            self._spares.discard(node_id)
            self.slots_restored = True
        self._fill_free_slots(now)
        return node_id

    def observe_generation(self, generation: int) -> None:
        """A trainer or agent has seen `generation` (from before a coordinator restart): the next
        generation formed must be newer, or trainers would wait for it forever."""
        self.floor = max(self.floor, generation + 1)

    def node_dead(self, node_id: str, now: float) -> bool:
        """Marks a node dead; frees its slot. Returns True if membership changed."""
        record = self.nodes.get(node_id)
        if record is None or not record.alive:
            return False
        record.alive = False
        self._spares.discard(node_id)
        for key in [key for key in self.waiting if key[0] == node_id]:
            del self.waiting[key]
        if record.slot is not None:
            self.slots[record.slot] = None
            record.slot = None
            self._open_pending(now)
            self._fill_free_slots(now)
        return True

    def trainer_failed(self, node_id: str, local_rank: int, now: float) -> bool:
        """A trainer process died (its node lives and restarts it). Returns True if a generation opened."""
        self.waiting.pop((node_id, local_rank), None)
        record = self.nodes.get(node_id)
        if record is None or record.slot is None:
            return False
        return self._open_pending(now)

    def collective_failed(self, generation: int, now: float) -> bool:
        """A trainer of `generation` saw a collective fail: everyone re-forms (cause found later)."""
        if self.formed is None or generation != self.formed.number:
            return False
        return self._open_pending(now)

    def request_reconfigure(self, now: float, batch_shares: list[int] | None = None) -> bool:
        if batch_shares is not None:
            self.batch_shares = list(batch_shares)
        return self._open_pending(now)

    # -- trainers --------------------------------------------------------------------------
    def trainer_waiting(self, trainer_uid: str, node_id: str, local_rank: int) -> None:
        record = self.nodes.get(node_id)
        if record is None or not record.alive:
            return
        self.waiting[(node_id, local_rank)] = trainer_uid

    def forget_waiting(self, trainer_uids: set[str]) -> None:
        """These trainers' joins no longer count (their processes are about to be replaced)."""
        for key in [key for key, uid in self.waiting.items() if uid in trainer_uids]:
            del self.waiting[key]

    # -- generations -----------------------------------------------------------------------
    @property
    def pending(self) -> bool:
        return self.pending_since is not None

    def live_slot_nodes(self) -> list[NodeRecord]:
        return [self.nodes[node_id] for node_id in self.slots if node_id is not None]

    def try_form(self, now: float) -> Generation | None:
        """Forms the pending generation when its trainers are all waiting. Returns it if formed."""
        if self.pending_since is None:
            return None
        filled = self.target_nodes - self.slots.count(None)
        full = filled == self.target_nodes
        # the first generation waits for every node; later ones shrink after the replace timeout
        waited = self.formed is not None and now - self.pending_since >= self.replace_timeout_s
        if not filled or (not full and not (waited and filled >= self.min_nodes)):
            return None
        if len(self.waiting) < filled:  # every live slot's node has a trainer or more: cheap, before O(N)
            return None
        live = self.live_slot_nodes()
        if any((node.node_id, lr) not in self.waiting for node in live for lr in range(node.nproc)):
            return None
        if self.formed is None and not self.slots_restored:
            # the first generation deals ranks in node-id order, so reruns of a job get the same ranks
            live.sort(key=lambda node: natural_key(node.node_id))
            for index, node in enumerate(live):
                self.slots[index], node.slot = node.node_id, index
        ranks: list[RankAssignment] = []
        for node in live:
            for local_rank in range(node.nproc):
                uid = self.waiting[(node.node_id, local_rank)]
                ranks.append(RankAssignment(len(ranks), node.node_id, local_rank, uid))
        self.number = max(self.number, self.floor, 0 if self.formed is None else self.formed.number + 1)
        shares = self.batch_shares if len(self.batch_shares) == len(ranks) else []
        self.formed = Generation(self.number, ranks, now, list(shares))
        self.pending_since = None
        self.waiting.clear()
        return self.formed

    # -- internals -------------------------------------------------------------------------
    def _open_pending(self, now: float) -> bool:
        if self.pending_since is not None:
            return False
        self.pending_since = now
        self.number = (self.formed.number if self.formed else self.number) + 1
        return True

    def _fill_free_slots(self, now: float) -> None:
        """Spares (in registration order) fill the free slots (lowest first)."""
        if not self._spares or None not in self.slots:
            return
        spares = [self.nodes[n] for n in sorted(self._spares, key=self._order.__getitem__)]
        index = 0
        while spares and None in self.slots[index:]:
            index = self.slots.index(None, index)
            node = spares.pop(0)
            node.slot = index
            self.slots[index] = node.node_id
            self._spares.discard(node.node_id)
            if self.formed is not None:
                self._open_pending(now)  # grow back / replace: a new generation takes the node in
