"""Restoring a generation's restore step into this rank's model and optimizer.

Which bytes each blob comes from (a durable checkpoint file, this process's memory, its node's
whole copy in restart mode, or k of its shards on the agents); whether this rank's live state
already is the step's, and which ranks lack it (ftrain.snapshot.restore_plan); the transfers to
those ranks (point to point, or one broadcast per blob); loading the blobs. Per-rank (FSDP2)
state restores each rank's own blob, or, on another world size, a durable checkpoint's DCP
copy. The step's position (RNG, data position, registered objects) is the Session's to set:
`restore` returns the metas it comes from.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.snapshot import dcp, durable
from ftrain.snapshot import layout as lay
from ftrain.snapshot import restore_plan, state as train_state
from ftrain.snapshot.capture import LocalBlob, SnapshotEngine
from ftrain.snapshot.rebuild import SnapshotLost
from ftrain.textfmt import short_reason
from ftrain.train import collectives

log = logging.getLogger("ftrain.session")


@dataclass
class Restored:
    """Where the restored step's position comes from: rank 0's blob (the data position) and this
    rank's own, or the one it continues (RNG, registered objects)."""
    first_meta: dict
    own_meta: dict


class Restorer:
    """Restores one rank's model and optimizer state at each generation that restores a step."""

    def __init__(self, engine: SnapshotEngine, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 buffer_names: set[str], sharded: bool, stats: dict[str, Any],
                 live_state: Callable[[], tuple[list[tuple[str, torch.Tensor]], lay.StateLayout]]) -> None:
        self.engine = engine
        self.module = module
        self.optimizer = optimizer
        self.buffer_names = buffer_names
        self.sharded = sharded  # per-rank state (the script's own FSDP2): each rank restores its own blob
        self.stats = stats  # the Session's counters (restores_kept, restores_received, ...)
        self.live_state = live_state  # this rank's replicated state now, and its layout
        self._group: collectives.Group | None = None
        self.rank = self.world_size = 0
        self.members: list[pb.Member] = []
        self.recovery = "inprocess"

    def restore(self, a: pb.GenerationAssignment, group: collectives.Group, rank: int, world_size: int,
                members: list[pb.Member], recovery: str) -> Restored:
        """Loads step `a.restore_step` into the model and optimizer. Raises SnapshotLost when it
        cannot be read (the coordinator then retries, or falls back to an older step)."""
        self._group, self.rank, self.world_size, self.members, self.recovery = group, rank, world_size, members, recovery
        return self._restore(a)

    def _blob_bytes(self, a: pb.GenerationAssignment, info: pb.BlobInfo) -> np.ndarray:
        """One blob of the restore step: from a durable checkpoint file, this process's memory, or
        rebuilt from k of its shards on the agents."""
        local: LocalBlob | None = self.engine.blobs.get(a.restore_step)
        if info.path:  # a durable checkpoint (--resume): the file, checked against its manifest
            try:
                return durable.read_part(info.path, info.size, info.crc32)
            except durable.CheckpointError as error:
                raise SnapshotLost(f"checkpoint file unusable: {error}") from error
        if local is not None and local.blob_id == info.blob_id:
            return local.buffer[:local.size]
        producer = next((m.address for m in self.members if m.node_id == info.producer_node), "")
        if self.recovery == "restart" and producer:
            whole = self.engine.fetch_full_copy(info, producer)  # on the producer's agent (usually this node's)
            if whole is not None:
                self.stats["full_copy_restores"] = self.stats.get("full_copy_restores", 0) + 1
                self.stats["shm_restores"] = self.engine.whole_from_shm
                return whole
        return self.engine.fetch(info, live_nodes={m.node_id for m in self.members})

    def _restore_own(self, a: pb.GenerationAssignment) -> Restored:
        """The script's own DDP / FSDP2 (restart mode): each rank captured all of its state (its own
        shards), so each rank restores its own blob, in place, after checking the sharding matches."""
        mine = [info for info in a.restore_blobs if info.producer_rank == self.rank]
        world = {info.producer_world_size for info in a.restore_blobs}
        if world != {self.world_size} or len(mine) != 1:
            return self._restore_resharded(a, world)
        meta, payload = lay.read_blob(self._blob_bytes(a, mine[0]))
        if not meta.get("whole"):
            raise SnapshotLost(f"the snapshot of step {a.restore_step} holds replicated slices, not this rank's own "
                               f"state; it was written by a job that left the process group to ftrain")
        model_state = self.module.state_dict()
        mismatch = train_state.placement_mismatch(meta["optimizer"].get("placements", {}), train_state.placements(
            model_state, self.optimizer.state_dict()["state"]))
        if mismatch:
            raise SnapshotLost(mismatch)
        views = lay.state_views(meta, [(0, payload)])
        with torch.no_grad():
            for name, tensor in model_state.items():
                if name not in self.buffer_names:
                    train_state.local(tensor).copy_(views[f"model/{name}"])
            for name, value in meta.get("buffers", {}).items():
                train_state.local(model_state[name]).copy_(value)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.optimizer.load_state_dict(train_state.optimizer_state(views, meta["optimizer"], params))
        return Restored(meta, meta)

    def _restore_resharded(self, a: pb.GenerationAssignment, world: set[int]) -> Restored:
        """Per-rank (FSDP2) state taken by another number of ranks: from a durable checkpoint's DCP
        copy (`ftrain launch --resume` on another world size), which DCP reshards; the rest (data
        position, registered objects, RNG) from the blobs of rank 0 and of rank (this rank mod the
        old world size), as a replicated restore takes it."""
        blobs = sorted(a.restore_blobs, key=lambda b: b.producer_rank)
        copy = ""
        if blobs and all(info.path for info in blobs) and len(world) == 1:
            try:
                copy = durable.load_manifest(os.path.dirname(blobs[0].path), verify=False).dcp
            except durable.CheckpointError as error:
                raise SnapshotLost(f"checkpoint unusable: {error}") from error
        if not copy and blobs and all(info.path for info in blobs):
            raise SnapshotLost(
                f"the checkpoint of step {a.restore_step} ({os.path.dirname(blobs[0].path)}) was written by "
                f"{sorted(world)} rank(s) and has no DCP copy (--checkpoint-dcp-every), this generation has "
                f"{self.world_size}: its per-rank (FSDP2) files restore only on as many ranks; the coordinator "
                f"resumes an older checkpoint with a copy, if there is one")
        if not copy:
            raise SnapshotLost(
                f"the snapshot of step {a.restore_step} was taken by {sorted(world)} rank(s), this generation has "
                f"{self.world_size}: per-rank (FSDP2) state in memory is restored only at the same world size. Keep "
                f"it (a replacement node or --spares), or resume a durable checkpoint with a DCP copy "
                f"(--checkpoint-dir, a 1-D mesh) on any number of ranks")
        old_world = next(iter(world))
        first_meta = lay.read_blob(self._blob_bytes(a, blobs[0]))[0]
        own = blobs[self.rank % old_world]
        own_meta = first_meta if own is blobs[0] else lay.read_blob(self._blob_bytes(a, own))[0]
        log.info("resharding the state of step %d from %d to %d ranks (%s)", a.restore_step, old_world,
                 self.world_size, copy)
        try:
            dcp.load(copy, self.module, self.optimizer)
        except Exception as error:  # DCP's CheckpointException: a key or shape the model does not have
            raise SnapshotLost(f"the DCP copy {copy} does not load into this model and optimizer (build them as the "
                               f"job that wrote it did): {short_reason(str(error))}") from error
        return Restored(first_meta, own_meta)

    def _restore(self, a: pb.GenerationAssignment) -> Restored:
        assert self._group is not None
        if self.sharded:
            return self._restore_own(a)
        if not a.restore_blobs:
            raise SnapshotLost(f"no blobs listed for step {a.restore_step}")
        infos = sorted(a.restore_blobs, key=lambda b: b.producer_rank)
        plan = restore_plan.plan_restore([restore_plan.BlobSource(
            info.producer_rank, info.producer_world_size, info.source_rank, info.source_holds_local, bool(info.path))
            for info in infos], self.world_size)
        raw: dict[int, np.ndarray] = {}  # producer rank -> the blob's bytes, where this rank read them
        blobs: dict[int, tuple[dict, np.ndarray]] = {}
        if plan.check:
            lacking = self._check_live_state(a, plan, infos, raw, blobs)
            if not lacking:
                return self._restore_live(a, blobs[self.rank][0])
            if restore_plan.fetch_instead(len(lacking), self.world_size):
                received = self._send_to_lacking(infos, raw, lacking)
                if self.rank not in lacking:
                    return self._restore_live(a, blobs[self.rank][0])
                blobs.update({rank: lay.read_blob(data) for rank, data in received.items()})
                self.stats["restores_received"] = self.stats.get("restores_received", 0) + 1
                return self._load_blobs(a, blobs)
        for info in infos:
            if info.producer_rank in raw:  # read for the check already
                tensor = torch.from_numpy(np.ascontiguousarray(raw[info.producer_rank]))
            elif info.source_rank == self.rank:
                tensor = torch.from_numpy(np.ascontiguousarray(self._blob_bytes(a, info)))
            else:
                tensor = torch.empty(info.raw_size or info.size, dtype=torch.uint8)
            self._group.broadcast(tensor, info.source_rank, f"restore of {info.blob_id}")
            blobs[info.producer_rank] = lay.read_blob(tensor.numpy())
        self.stats["restores_broadcast"] = self.stats.get("restores_broadcast", 0) + 1
        return self._load_blobs(a, blobs)

    def _check_live_state(self, a: pb.GenerationAssignment, plan: restore_plan.RestorePlan,
                          infos: list[pb.BlobInfo], raw: dict[int, np.ndarray],
                          blobs: dict[int, tuple[dict, np.ndarray]]) -> set[int]:
        """Steps 1-2 of ftrain.snapshot.restore_plan: reads the blobs this rank is the source of
        (their bytes into `raw`, parsed into `blobs`), shares their checksums, checks its live tensors against all of them if it
        is a candidate, and returns the ranks that lack the state (the same set on every rank)."""
        assert self._group is not None
        sums = torch.zeros(len(infos), dtype=torch.int64)  # CRC + 1 from the source rank, 0 from the others
        for index, info in enumerate(infos):
            if info.source_rank == self.rank:
                raw[info.producer_rank] = self._blob_bytes(a, info)
                meta, payload = blobs[info.producer_rank] = lay.read_blob(raw[info.producer_rank])
                start, end = meta["slice"]
                sums[index] = lay.slice_checksum(lay.layout_of(meta), start, end, payload=payload) + 1
        self._group.allreduce(sums, "restore checksums")
        holds = False
        if self.rank in plan.candidates and self.rank in blobs:
            named, layout = self.live_state()
            tensors = [t for _, t in named]
            meta = blobs[self.rank][0]
            holds = (meta["total"] == layout.total and [tuple(e) for e in meta["layout"]] ==
                     [tuple(e) for e in layout.manifest] and all(
                         int(sums[index]) - 1 == lay.slice_checksum(
                             layout, *lay.slice_bounds(layout.total, self.world_size, info.producer_rank),
                             tensors=tensors) for index, info in enumerate(infos)))
            if not holds:
                log.info("rank %d: its live state is not that of step %d (written to since)", self.rank,
                         a.restore_step)
        flags = torch.zeros(self.world_size, dtype=torch.int64)
        flags[self.rank] = 0 if holds else 1
        self._group.allreduce(flags, "restore plan")
        return {rank for rank in range(self.world_size) if int(flags[rank])}

    def _load_blobs(self, a: pb.GenerationAssignment, blobs: dict[int, tuple[dict, np.ndarray]]) -> Restored:
        first_meta = blobs[min(blobs)][0]
        views = lay.state_views(first_meta, [(meta["slice"][0], payload) for meta, payload in blobs.values()])
        old_world = first_meta["world_size"]
        own = blobs.get(self.rank) or blobs[self.rank % old_world]
        model_state = {name[6:]: t for name, t in views.items() if name.startswith("model/")}
        model_state.update(own[0].get("buffers", {}))
        self.module.load_state_dict(model_state)
        self.optimizer.load_state_dict(train_state.optimizer_state(views, first_meta["optimizer"]))
        return Restored(first_meta, own[0])

    def _send_to_lacking(self, infos: list[pb.BlobInfo], raw: dict[int, np.ndarray],
                         lacking: set[int]) -> dict[int, np.ndarray]:
        """Step 3 of ftrain.snapshot.restore_plan for a minority that lacks the state: each blob
        goes from its source rank (which read it for the check: its producer's memory, or the
        agents) to every rank that lacks it, point to point and all at once; nothing goes to the
        others. Returns the blobs this rank received."""
        assert self._group is not None
        works: list[tuple[torch.distributed.Work, str]] = []
        received: dict[int, np.ndarray] = {}
        kept: list[torch.Tensor] = []  # alive until every transfer is done
        for tag, info in enumerate(infos):
            for rank in sorted(lacking - {info.source_rank}):
                if self.rank == info.source_rank:
                    tensor = torch.from_numpy(np.ascontiguousarray(raw[info.producer_rank]))
                    kept.append(tensor)
                    works.append((self._group.send(tensor, rank, tag), f"restore of {info.blob_id} to rank {rank}"))
                elif self.rank == rank:
                    buffer = np.empty(info.raw_size or info.size, dtype=np.uint8)
                    kept.append(torch.from_numpy(buffer))
                    works.append((self._group.recv(kept[-1], info.source_rank, tag),
                                  f"restore of {info.blob_id} from rank {info.source_rank}"))
                    received[info.producer_rank] = buffer
        for work, what in works:
            self._group.wait_p2p(work, what)
        return received

    def _restore_live(self, a: pb.GenerationAssignment, meta: dict) -> Restored:
        """This rank's tensors are the restore step's: only the buffers, the optimizer's
        hyperparameters and non-tensor state, and the per-rank state come from its own blob."""
        with torch.no_grad():
            for name, value in meta.get("buffers", {}).items():
                self.module.get_buffer(name).copy_(value)
        train_state.load_optimizer_scalars(self.optimizer, meta["optimizer"])
        self.stats["restores_kept"] = self.stats.get("restores_kept", 0) + 1
        log.info("rank %d kept its live state of step %d (checksums match); nothing was sent to it",
                 self.rank, a.restore_step)
        return Restored(meta, meta)
