"""The durable tier's plan (pure: no I/O, the clock is passed in): which committed steps become
checkpoints on disk, which agent writes each rank's blob, and when a checkpoint is complete.

- A committed step is due once `every_steps` steps have passed since the last checkpoint began
  (or `every_s` seconds, when set): the first committed step at or past that point is taken, so
  any `--snapshot-every` works.
- Each rank's blob is written by a live agent that holds one of its shards (the agent with the
  fewest writes of this checkpoint first, then the lowest shard index); it rebuilds the blob from
  k shards and writes it. When every rank's file is written, the agent that wrote the last one
  writes the manifest and renames the checkpoint complete (ftrain.snapshot.durable).
- When the job completes, its last committed step is checkpointed too (after the one in flight).
- Every `dcp_every`-th checkpoint (the first one, then every dcp_every-th ordered) and the job's
  final one also get a DCP copy, written by the finalizing agent (0: none).
- One checkpoint is in flight at a time. A due step that comes while one is still being written
  is skipped and reported ("busy"): a slow disk never queues work, and the training loop never
  waits for any of it. A failed write, a writer lost with its node (when no other holder can take
  over) or a checkpoint older than `timeout_s` abandons that checkpoint, with the reason.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from ftrain.coordinator.catalog import BlobRecord
from ftrain.snapshot.durable import FORMAT


@dataclass(frozen=True)
class DurableSettings:
    dir: str
    every_steps: int = 100
    every_s: float = 0.0       # 0: by steps only
    keep: int = 2
    timeout_s: float = 600.0   # a checkpoint not complete after this long is abandoned
    dcp_every: int = 1         # every n-th checkpoint (and the final one) gets a DCP copy; 0: none


@dataclass(frozen=True)
class Write:
    """Order: node `node_id` rebuilds rank `rank`'s blob of `step` and writes it."""

    node_id: str
    step: int
    rank: int
    blob: Any  # the wire BlobInfo (opaque here)


@dataclass(frozen=True)
class Finalize:
    """Order: node `node_id` writes the manifest and renames the checkpoint of `step` complete."""

    node_id: str
    step: int
    manifest: dict[str, Any]
    dcp: bool = True  # also write the DCP copy


@dataclass(frozen=True)
class Outcome:
    """How a checkpoint ended: 'written', 'skipped' (not started) or 'failed' (abandoned)."""

    kind: str
    step: int
    reason: str = ""         # a short label for the metric: busy, write-failed, writer-lost, timeout, ...
    detail: str = ""         # the whole story, for the event and the log
    bytes: int = 0
    seconds: float = 0.0


@dataclass
class _InFlight:
    step: int
    generation: int
    world_size: int
    started: float
    blobs: dict[int, BlobRecord]
    writers: dict[int, str]                       # rank -> node writing it
    parts: dict[int, dict[str, Any]] = field(default_factory=dict)  # rank -> {file, bytes, crc32, seconds}
    finalizer: str = ""
    dcp: bool = True


class DurablePlanner:
    def __init__(self, settings: DurableSettings, job_id: str, now: float, resumed_step: int = -1) -> None:
        self.settings = settings
        self.job_id = job_id
        self.in_flight: _InFlight | None = None
        self.last_step = resumed_step        # newest complete checkpoint of this job (or the one it resumed from)
        self._last_began_step = max(0, resumed_step)  # the newest step that was due (written or skipped)
        self._last_began_time = now
        self._last_started_step = max(0, resumed_step)  # the newest step whose writing was ordered
        self._ordered = 0  # checkpoints whose writing was ordered (every dcp_every-th gets a DCP copy)
        self.last_outcome: Outcome | None = None

    # -- when ------------------------------------------------------------------------------
    def due(self, step: int, now: float) -> bool:
        s = self.settings
        if step <= self._last_began_step:
            return False
        by_steps = s.every_steps > 0 and step - self._last_began_step >= s.every_steps
        by_time = s.every_s > 0 and now - self._last_began_time >= s.every_s
        return by_steps or by_time

    # -- events in ---------------------------------------------------------------------------
    def on_commit(self, step: int, generation: int, world_size: int, blobs: list[BlobRecord], live: set[str],
                  now: float, final: bool = False) -> tuple[list[Write], Outcome | None]:
        """A step was committed (`final`: the job's last, checkpointed whenever it is newer than the
        last checkpoint). Returns the write orders (none when it is not due) and, when a due step
        cannot be taken, the outcome saying why."""
        # the final step goes to disk unless its writing was already ordered (it may have been due but skipped)
        if not (self.due(step, now) or (final and step > self._last_started_step)):
            return [], None
        self._last_began_step, self._last_began_time = step, now
        if self.in_flight is not None:
            return [], self._end(Outcome("skipped", step, "busy",
                                         f"checkpoint of step {step} skipped: the one of step {self.in_flight.step} "
                                         f"is still being written (a slow disk?)"))
        by_rank = {b.producer_rank: b for b in blobs}
        if len(by_rank) != world_size:
            return [], self._end(Outcome("skipped", step, "incomplete",
                                         f"checkpoint of step {step} skipped: {len(by_rank)} of {world_size} blobs listed"))
        every = self.settings.dcp_every
        flight = _InFlight(step, generation, world_size, now, by_rank, {},
                           dcp=every > 0 and (final or self._ordered % every == 0))
        load: collections.Counter[str] = collections.Counter()
        for rank in sorted(by_rank):
            writer = self._writer(by_rank[rank], live, load)
            if writer is None:
                return [], self._end(Outcome("skipped", step, "no-writer",
                                             f"checkpoint of step {step} skipped: no live agent holds a shard of "
                                             f"rank {rank}'s blob"))
            flight.writers[rank] = writer
            load[writer] += 1
        self.in_flight, self._last_started_step = flight, step
        self._ordered += 1
        return [Write(flight.writers[r], step, r, by_rank[r].info) for r in sorted(by_rank)], None

    def on_written(self, node_id: str, step: int, rank: int, file: str, size: int, crc32: int,
                   seconds: float) -> list[Finalize]:
        """An agent wrote rank `rank`'s file. Returns the finalize order once every rank's is written."""
        flight = self.in_flight
        if flight is None or flight.step != step or flight.writers.get(rank) != node_id:
            return []
        flight.parts[rank] = {"rank": rank, "file": file, "bytes": size, "crc32": crc32, "seconds": round(seconds, 3)}
        if len(flight.parts) < flight.world_size or flight.finalizer:
            return []
        flight.finalizer = node_id  # the last writer: its heartbeat is being answered now, so it gets the order at once
        return [Finalize(flight.finalizer, step, self._manifest(flight), flight.dcp)]

    def on_finalized(self, node_id: str, step: int, now: float) -> Outcome | None:
        flight = self.in_flight
        if flight is None or flight.step != step or flight.finalizer != node_id:
            return None
        self.last_step = step
        total = sum(int(p["bytes"]) for p in flight.parts.values())
        return self._end(Outcome("written", step, bytes=total, seconds=max(0.0, now - flight.started),
                                 detail=f"checkpoint of step {step} complete: {flight.world_size} file(s), "
                                        f"{total / 2**20:.1f} MiB in {now - flight.started:.2f} s"))

    def on_failed(self, node_id: str, step: int, rank: int, reason: str, detail: str) -> Outcome | None:
        """An agent could not write (rank >= 0) or finalize (rank < 0): the checkpoint is abandoned."""
        flight = self.in_flight
        if flight is None or flight.step != step:
            return None
        what = f"rank {rank}'s file" if rank >= 0 else "the manifest"
        return self._end(Outcome("failed", step, reason or "write-failed",
                                 f"checkpoint of step {step} abandoned: node {node_id} could not write {what}: {detail}"))

    def on_node_lost(self, node_id: str, live: set[str]) -> tuple[list[Write], Outcome | None]:
        """A node died: its unfinished writes move to another live holder of the blob's shards."""
        flight = self.in_flight
        if flight is None:
            return [], None
        if flight.finalizer == node_id:
            return [], self._end(Outcome("failed", flight.step, "writer-lost",
                                         f"checkpoint of step {flight.step} abandoned: node {node_id} was lost while "
                                         f"writing its manifest"))
        orders = []
        load = collections.Counter(flight.writers.values())
        for rank, writer in sorted(flight.writers.items()):
            if writer != node_id or rank in flight.parts:
                continue
            replacement = self._writer(flight.blobs[rank], live - {node_id}, load)
            if replacement is None:
                return [], self._end(Outcome("failed", flight.step, "writer-lost",
                                             f"checkpoint of step {flight.step} abandoned: node {node_id} was lost "
                                             f"writing rank {rank}'s file and no other live agent holds its shards"))
            flight.writers[rank] = replacement
            load[replacement] += 1
            orders.append(Write(replacement, flight.step, rank, flight.blobs[rank].info))
        return orders, None

    def tick(self, now: float) -> Outcome | None:
        flight = self.in_flight
        if flight is None or now - flight.started < self.settings.timeout_s:
            return None
        waiting = sorted(set(flight.writers) - set(flight.parts))
        return self._end(Outcome("failed", flight.step, "timeout",
                                 f"checkpoint of step {flight.step} abandoned after {self.settings.timeout_s:.0f} s "
                                 f"(still writing ranks {waiting})" if waiting else
                                 f"checkpoint of step {flight.step} abandoned after {self.settings.timeout_s:.0f} s "
                                 f"(manifest not written by {flight.finalizer})"))

    # -- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _writer(blob: BlobRecord, live: set[str], load: collections.Counter[str]) -> str | None:
        holders = [s for s in sorted(blob.info.shards, key=lambda s: s.index) if s.node_id in live]
        if not holders:
            return None
        return min(holders, key=lambda s: (load[s.node_id], s.index)).node_id

    def _manifest(self, flight: _InFlight) -> dict[str, Any]:
        return {"format": FORMAT, "job_id": self.job_id, "step": flight.step, "generation": flight.generation,
                "world_size": flight.world_size,
                "parts": [{**flight.parts[r], "blob_id": flight.blobs[r].info.blob_id} for r in sorted(flight.parts)]}

    def _end(self, outcome: Outcome) -> Outcome:
        if outcome.kind != "skipped":  # a skipped step never started: the one in flight goes on
            self.in_flight = None
        self.last_outcome = outcome
        return outcome
