"""Who moves data when a generation restores a snapshot from memory (pure).

Every rank of the new generation must end up holding the restore step's state. A survivor that
produced its blob of that step as the same rank of a generation of the same size is a candidate:
it may still hold that state live (the failure came in the middle of a later step, whose
optimizer step left the state alone). It keeps its tensors, and takes only its small per-rank
state (RNG, data position, registered objects) from its own blob, if the checksums of its live
tensors match every blob's payload; whatever wrote to them since makes it lack the state.

1. Each blob's payload checksum comes from the rank the coordinator picked to read it (its
   `source_rank`: the producer when it survives, else a rank that reads it from the agents), so
   the check costs no transfer beyond what a broadcast restore reads anyway.
2. Every rank says whether it holds the state (one small all-reduce).
3. Nobody lacks it: nothing moves. A minority lacks it (replacements): each blob goes from its
   source rank to each of them, point to point and all at once (a survivor's own blob from its
   memory: it may be the only good copy left), and nothing is sent to the others. Most lack it (the
   newest snapshot had not committed, so the survivors had moved past it): one broadcast per blob,
   from its source rank, as a restore from a durable checkpoint or onto another world size always
   does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class BlobSource:
    """What the plan needs of one restore blob (a BlobInfo's fields)."""

    producer_rank: int
    producer_world_size: int
    source_rank: int          # the rank the coordinator picked to read it
    source_holds_local: bool  # that rank is the blob's producer, still in the job
    from_file: bool           # a durable checkpoint's file (--resume)


@dataclass(frozen=True)
class RestorePlan:
    check: bool                 # False: broadcast at once, no rank can hold the state
    candidates: frozenset[int]  # ranks that may hold it live (checked by checksum)


def plan_restore(blobs: Sequence[BlobSource], world_size: int) -> RestorePlan:
    none = RestorePlan(False, frozenset())
    if not blobs or any(b.from_file or b.producer_world_size != world_size for b in blobs):
        return none
    if sorted(b.producer_rank for b in blobs) != list(range(world_size)):
        return none
    candidates = frozenset(b.producer_rank for b in blobs
                           if b.source_holds_local and b.source_rank == b.producer_rank)
    return RestorePlan(bool(candidates), candidates)


def fetch_instead(lacking: int, world_size: int) -> bool:
    """The ranks that lack the state receive it point to point (True) rather than everyone taking
    part in a broadcast (False)."""
    return 0 < lacking and 2 * lacking <= world_size
