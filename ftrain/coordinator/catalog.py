"""Snapshot catalog (pure): which blobs of which step sit where, and which steps are committed.

A step is committed when every rank of the generation that captured it has reported its blob
stored on all placed agents. The newest two committed steps are kept (recovery restores the
newest); reports from an older generation are refused, so a step can never be committed by a
membership that no longer exists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BlobRecord:
    step: int
    producer_rank: int
    producer_world_size: int
    producer_trainer: str
    producer_node: str
    shard_nodes: tuple[str, ...]
    info: Any  # the wire descriptor (ftrain.v1.BlobInfo), kept opaque here


class Catalog:
    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.generation = -1
        self.world_size = 0
        self._partial: dict[int, dict[int, BlobRecord]] = {}
        self._committed: dict[int, list[BlobRecord]] = {}
        self._skipped: set[int] = set()  # steps of this generation that never commit (a rank's snapshot skipped)
        self._given_up: dict[str, int] = {}  # blob id -> step, of committed steps given up (see discard)

    def open_generation(self, generation: int, world_size: int) -> None:
        self.generation = generation
        self.world_size = world_size
        self._partial.clear()
        self._skipped.clear()

    def skip(self, generation: int, step: int) -> bool:
        """A rank of `generation` could not store its blob of `step`: the step never commits (its
        other blobs are dropped). Returns True when this is news."""
        if generation != self.generation or step in self._committed or step in self._skipped:
            return False
        self._partial.pop(step, None)
        self._skipped.add(step)
        return True

    def is_skipped(self, step: int) -> bool:
        return step in self._skipped

    @property
    def skipped_steps(self) -> list[int]:
        """This generation's skipped steps newer than the oldest kept one (agents drop their shards)."""
        return sorted(step for step in self._skipped if step > self.min_retained_step())

    def record(self, generation: int, blob: BlobRecord) -> bool:
        """Adds one rank's stored blob. Returns True if this report committed its step."""
        if generation != self.generation or blob.producer_world_size != self.world_size:
            return False
        if blob.step in self._committed or blob.step in self._skipped:
            return False
        reports = self._partial.setdefault(blob.step, {})
        reports[blob.producer_rank] = blob
        if len(reports) < self.world_size:
            return False
        self._committed[blob.step] = [reports[r] for r in sorted(reports)]
        del self._partial[blob.step]
        for step in [s for s in self._partial if s < blob.step]:
            del self._partial[step]
        for step in sorted(self._committed)[: -self.keep]:
            del self._committed[step]
        self._skipped = {step for step in self._skipped if step > self.min_retained_step()}  # agents prune older
        self._given_up = {blob: step for blob, step in self._given_up.items() if step > self.min_retained_step()}
        return True

    @property
    def newest_committed(self) -> int:
        return max(self._committed) if self._committed else -1

    @property
    def committed_steps(self) -> list[int]:
        return sorted(self._committed)

    def discard(self, step: int) -> None:
        """A committed step that cannot be restored is given up (recovery restores an older one).
        Its blobs are listed in `given_up_blobs` until agents would drop them anyway: were their
        shards kept, a catalog rebuilt from them (a restarted coordinator) would commit it again."""
        for record in self._committed.pop(step, []):
            self._given_up[record.info.blob_id] = step

    @property
    def given_up_blobs(self) -> list[str]:
        """The blobs of given-up steps newer than the oldest kept one (agents drop their shards)."""
        oldest = self.min_retained_step()
        return sorted(blob for blob, step in self._given_up.items() if step > oldest)

    def blobs(self, step: int) -> list[BlobRecord]:
        return list(self._committed.get(step, []))

    def min_retained_step(self) -> int:
        """Agents may drop shards of steps older than this (uncommitted newer steps are kept)."""
        return min(self._committed) if self._committed else -1

    def drop_nodes(self, dead: set[str]) -> list[tuple[int, str, int]]:
        """Lists (step, blob producer, lost shard count) for committed blobs that lost shards."""
        lost = []
        for step, records in self._committed.items():
            for record in records:
                count = sum(1 for node in record.shard_nodes if node in dead)
                if count:
                    lost.append((step, record.producer_trainer, count))
        return lost

    def rebuild(self, held: list[tuple[BlobRecord, int]]) -> list[int]:
        """Rebuilds the committed steps from the shards the agents hold (after a coordinator
        restart): a step is committed when, for one generation, every rank's blob has all of
        its k+m shards on some agent — exactly the condition under which it was committed.
        Returns the committed steps."""
        shards: dict[str, set[int]] = {}
        records: dict[str, BlobRecord] = {}
        for record, index in held:
            shards.setdefault(record.info.blob_id, set()).add(index)
            records[record.info.blob_id] = record
        groups: dict[tuple[int, int], dict[int, BlobRecord]] = {}
        for blob_id, record in records.items():
            if len(shards[blob_id]) == record.info.k + record.info.m:
                groups.setdefault((record.step, record.info.generation), {})[record.producer_rank] = record
        self._committed.clear()
        for (step, _generation), by_rank in sorted(groups.items()):
            world = next(iter(by_rank.values())).producer_world_size
            if len(by_rank) == world:
                self._committed[step] = [by_rank[r] for r in sorted(by_rank)]
        for step in sorted(self._committed)[: -self.keep]:
            del self._committed[step]
        return self.committed_steps
