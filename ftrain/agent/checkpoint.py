"""The agent's durable-tier writer: a thread that carries out the coordinator's checkpoint orders.

"write": rebuild one rank's committed blob from k of its shards (this agent's own from memory,
the others from its peers' data planes) and write it into the checkpoint directory; "finalize":
write the manifest and rename the checkpoint complete (ftrain.snapshot.durable). Results go back
with the next heartbeat. Nothing here touches a trainer: a slow or full disk only delays or fails
a checkpoint, and the failure is reported with its cause.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from ftrain.agent.dcp_export import DcpExporter, ExportFailed
from ftrain.agent.store import ShardStore
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.snapshot import dataplane, durable
from ftrain.snapshot.erasure import shard_checksum
from ftrain.snapshot.rebuild import SnapshotLost, rebuild_blob
from ftrain.snapshot.transfer import AgentPool, ShardCorrupted
from ftrain.wire import from_wire

log = logging.getLogger("ftrain.agent")
_REASONS = {errno.ENOSPC: "disk-full", errno.EDQUOT: "disk-full", errno.EROFS: "read-only",
            errno.EACCES: "permission", errno.EPERM: "permission"}


def failure_reason(error: BaseException) -> str:
    """A short label for the failures metric."""
    if isinstance(error, SnapshotLost):
        return "shards-unreadable"
    if isinstance(error, durable.CheckpointError):
        return "incomplete"
    if isinstance(error, OSError):
        return _REASONS.get(error.errno or 0, "io-error")
    return "error"


class CheckpointWriter:
    def __init__(self, store: ShardStore, pool: AgentPool, node_id_ref: list[str], dir_override: str = "",
                 on_result: Callable[[], None] | None = None) -> None:
        self.store = store
        self.pool = pool
        self.node_id_ref = node_id_ref
        self.dir_override = dir_override  # where this node mounts the checkpoint directory, if not the job's path
        self.on_result = on_result  # called when a result is ready (the agent heartbeats at once)
        self._orders: "queue.Queue[pb.CheckpointOrder | None]" = queue.Queue()
        self._results: list[pb.CheckpointResult] = []
        self._lock = threading.Lock()
        self._fetch = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ftrain-ckpt-fetch")
        # started for the first DCP copy this agent writes, not before: its torch import takes a
        # CPU-second or more, which a node whose checkpoints have no copy (or that never finalizes
        # one) should not pay, and which on shared CPUs slowed every trainer's step
        self._exporter = DcpExporter()
        self._thread = threading.Thread(target=self._run, name="ftrain-checkpoint", daemon=True)
        self._thread.start()

    def submit(self, order: pb.CheckpointOrder) -> None:
        self._orders.put(order)

    def take_results(self) -> list[pb.CheckpointResult]:
        with self._lock:
            results, self._results = self._results, []
        return results

    def give_back(self, results: list[pb.CheckpointResult]) -> None:
        """Results whose heartbeat failed: sent with the next one."""
        with self._lock:
            self._results[:0] = results

    def idle(self) -> bool:
        return self._orders.unfinished_tasks == 0

    def has_results(self) -> bool:
        with self._lock:
            return bool(self._results)

    def close(self) -> None:
        self._orders.put(None)
        self._fetch.shutdown(wait=False, cancel_futures=True)
        self._exporter.close()

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        # rebuilding blobs and writing them yield the CPU to this node's trainers, as the shard
        # data plane does (the DCP copy is written by a helper process at the same low priority)
        dataplane.lower_thread_priority()
        while True:
            order = self._orders.get()
            try:
                if order is None:
                    return
                self._carry_out(order)
            finally:
                self._orders.task_done()

    def _carry_out(self, order: pb.CheckpointOrder) -> None:
        root = self.dir_override or order.dir
        began = time.monotonic()
        rank = order.blob.producer_rank if order.kind == pb.CHECKPOINT_KIND_WRITE else -1
        result = pb.CheckpointResult(kind=order.kind, step=order.step, rank=rank)
        try:
            if order.kind == pb.CHECKPOINT_KIND_WRITE:
                blob = self._rebuild(order.blob)
                result.file, size, result.crc32 = durable.write_part(root, order.step, rank, blob)
                result.bytes = size
            elif order.kind == pb.CHECKPOINT_KIND_FINALIZE:
                manifest = json.loads(order.manifest_json)
                manifest["written_unix"] = round(time.time(), 3)
                removed = durable.finalize(root, order.step, manifest, max(1, order.keep),
                                           export=self._export if order.dcp else None)
                if removed:
                    log.info("checkpoint: removed %s", ", ".join(removed))
            else:
                raise ValueError(f"unknown checkpoint order kind {order.kind} (a newer coordinator?)")
            result.ok = True
        except (OSError, SnapshotLost, ValueError, KeyError) as error:
            result.ok, result.reason = False, failure_reason(error)
            result.detail = f"{type(error).__name__}: {error}"[:500]
            log.warning("checkpoint of step %d (%s%s) failed: %s", order.step, from_wire(pb.CheckpointKind, order.kind),
                        f" rank {rank}" if rank >= 0 else "", error)
        result.seconds = time.monotonic() - began
        with self._lock:
            self._results.append(result)
        if self.on_result is not None:
            self.on_result()

    def _export(self, directory: str, blob_paths: list[str]) -> str:
        """The DCP copy of a checkpoint (ftrain.agent.dcp_export). It is an extra: when it cannot be
        written the checkpoint still completes (`--resume` reads the rank files), with a warning."""
        size = sum(os.path.getsize(path) for path in blob_paths)
        try:  # bounded: 2 minutes plus 4 MiB/s of state (the helper yields the CPU to trainers)
            return self._exporter.export(directory, blob_paths, timeout_s=120.0 + size / (4 << 20))
        except ExportFailed as error:  # torch missing on this node, a full disk, a state DCP refuses...
            log.warning("checkpoint %s: no DCP copy (%s); the checkpoint itself is complete",
                        os.path.basename(directory), error)
            return ""

    def _read_shard(self, info: pb.BlobInfo, location: pb.ShardLocation) -> np.ndarray:
        if location.node_id == self.node_id_ref[0]:
            shard = self.store.acquire(info.blob_id, location.index)
            if shard is None:
                raise ShardCorrupted(f"shard {info.blob_id}#{location.index} is no longer held here")
            try:
                data = np.frombuffer(shard.data, dtype=np.uint8).copy()
            finally:
                self.store.release(shard)
            if shard_checksum(data) != location.crc32:
                raise ShardCorrupted(f"shard {info.blob_id}#{location.index} failed its checksum")
            return data
        return self.pool.get_shard(location.address, info.blob_id, location.index, location.crc32)

    def _rebuild(self, info: pb.BlobInfo) -> np.ndarray:
        mine = {self.node_id_ref[0]}
        return rebuild_blob(info, lambda location: self._read_shard(info, location), self._fetch,
                            live_nodes=mine)
