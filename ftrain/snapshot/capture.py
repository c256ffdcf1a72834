"""Snapshot capture pipeline of one trainer: copy-out, then encode + place + ship in the background.

The training loop only pays for copying its slice of the state into a preallocated, reused
buffer (two buffers: the newest committed snapshot is never overwritten). A worker thread
then Reed-Solomon codes the blob, streams the shards to their agents and reports them to the
coordinator, which commits the step once every rank's blob is placed. Restores fetch any k
good shards (checksums turn corrupted shards into erasures) and decode.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import grpc
import numpy as np
import torch

from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.rpc import describe_rpc_error
from ftrain.snapshot import compress, local_copy
from ftrain.snapshot.local_copy import FULL_COPY
from ftrain.snapshot import layout as lay
from ftrain.snapshot.erasure import codec, shard_checksum, shard_length
from ftrain.snapshot.placement import effective_code, place_blobs
from ftrain.snapshot.dataplane import lower_thread_priority
from ftrain.snapshot.rebuild import rebuild_blob
from ftrain.snapshot.transfer import AgentPool, agent_full

log = logging.getLogger("ftrain.snapshot")
COMMIT_WAIT_S = 20.0  # how long a snapshot report may wait at the coordinator for the step's commit


@dataclass
class LocalBlob:
    blob_id: str
    step: int
    generation: int
    buffer: np.ndarray      # k * L bytes (blob + zero padding)
    size: int
    slot: int


@dataclass
class _Job:
    blob: LocalBlob
    copy_done: "torch.cuda.Event | None" = None  # GPU state: the side-stream copy must finish first
    done: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    committed: bool = False  # the coordinator committed this step (known by the worker)
    header: tuple[int, bytes] | None = None  # (payload length, meta) until the blob's header is written
    started: float = field(default_factory=time.monotonic)


@dataclass
class Placement:
    generation: int
    rank: int
    world_size: int
    node_id: str
    k: int
    m: int
    targets: list[tuple[str, str]]  # (node_id, address) for shard i


class SnapshotEngine:
    def __init__(self, job_id: str, trainer_uid: str, node_id: str, agents: AgentPool | None,
                 report: Callable[[pb.SnapshotReport], pb.SnapshotAck] | None,
                 await_commit: Callable[[int, int], bool] | None = None) -> None:
        """`report` sends a SnapshotReport; `await_commit(step, generation)` waits (in the worker)
        until the coordinator commits the step, so the training loop need not ask."""
        self.job_id = job_id
        self.trainer_uid = trainer_uid
        self.node_id = node_id
        self.agents = agents
        self.report = report
        self.await_commit = await_commit
        self.placement: Placement | None = None
        self._buffers: list[np.ndarray] = [np.empty(0, np.uint8), np.empty(0, np.uint8)]
        self._parity: np.ndarray = np.empty((0, 0), np.uint8)
        self.blobs: dict[int, LocalBlob] = {}
        self._last_job: _Job | None = None
        self._queue: "queue.Queue[_Job | None]" = queue.Queue()
        self._worker: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ftrain-shard")
        self.encoded_bytes = 0
        self.skipped = 0  # snapshots skipped: an agent's snapshot memory was full
        self.skipping = False  # the newest snapshot was skipped (the next skip is logged at debug level)
        self._stream: "torch.cuda.Stream | None" = None  # side stream for device-to-host snapshot copies
        self.copy_done: "torch.cuda.Event | None" = None  # the newest capture's copy (GPU state only)
        self.compression = "none"  # per job (`--compress`); set from the generation's config
        self.last_duration_s = 0.0
        self._copier = lay.SliceCopier()
        # restart mode: the whole blob is also kept on this node, in its agent's shared-memory
        # directory (ftrain.snapshot.local_copy) or else on the agent itself (gRPC address, shard
        # index FULL_COPY), so a restarted trainer reads it back instead of decoding shards
        self.local_agent = ""
        self.shm_dir = ""
        self.whole_from_shm = 0  # restores whose blob came from this node's shared memory

    # -- configuration per generation --------------------------------------------------------
    def configure(self, generation: int, rank: int, world_size: int, members: list[pb.Member], ec_k: int, ec_m: int) -> None:
        nodes = [member.node_id for member in members]
        address = {member.node_id: member.address for member in members}
        producers = []
        for r in range(world_size):
            producers.append(next(m.node_id for m in members if m.first_rank <= r < m.first_rank + m.nproc))
        k, m = effective_code(ec_k, ec_m, len(nodes))
        if len(nodes) <= 1:
            targets = [(self.node_id, address.get(self.node_id, ""))] if self.agents else []
            k, m = 1, 0
        else:
            row = place_blobs(producers, nodes, k, m)[rank]
            targets = [(node, address[node]) for node in row]
        self.placement = Placement(generation, rank, world_size, self.node_id, k, m, targets)
        self._last_job = None

    # -- capture (training thread) -----------------------------------------------------------
    def wait_previous(self) -> str:
        """Waits until the worker finished the previous blob. Returns '' or the worker's error."""
        job = self._last_job
        if job is None:
            return ""
        job.done.wait()
        return job.error

    def previous_committed(self) -> int | None:
        """The step of the previous blob if the worker saw the coordinator commit it (after wait_previous)."""
        job = self._last_job
        return job.blob.step if job is not None and job.done.is_set() and job.committed else None

    def capture(self, step: int, tensors: list[torch.Tensor], layout: lay.StateLayout, meta: dict,
                keep_step: int | None, whole: bool = False) -> LocalBlob:
        """Copies this rank's slice (`whole`: all of its state, which is its own, e.g. FSDP2 shards)
        + meta into a free buffer; queues it for coding and shipping."""
        placement = self.placement
        assert placement is not None, "configure() first"
        start, end = (0, layout.total) if whole else lay.slice_bounds(layout.total, placement.world_size, placement.rank)
        meta = dict(meta, total=layout.total, slice=(start, end), layout=layout.manifest)
        meta_bytes = lay.encode_meta(meta)
        size = lay.blob_size(end - start, len(meta_bytes))
        k = max(placement.k, 1)
        padded = k * shard_length(size, k)
        protected = {blob.slot for s, blob in self.blobs.items() if s == keep_step}
        slot = 0 if 0 not in protected else 1
        on_gpu = any(t.is_cuda for t in tensors)
        if len(self._buffers[slot]) < padded:
            capacity = int(padded * 1.25) + 4096
            # device-to-host copies run asynchronously only into page-locked memory
            self._buffers[slot] = (torch.empty(capacity, dtype=torch.uint8, pin_memory=True).numpy() if on_gpu
                                   else np.empty(capacity, dtype=np.uint8))
        buffer = self._buffers[slot][:padded]
        out = torch.from_numpy(buffer[lay.HEADER_BYTES:lay.HEADER_BYTES + end - start])
        copy_done = None
        if on_gpu:
            # the copy runs on a side stream after the work queued so far; the training loop makes
            # its stream wait for `copy_done` only before it next writes the state (see Session)
            if self._stream is None:
                self._stream = torch.cuda.Stream()
            self._stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._stream):
                self._copier.copy(tensors, layout, start, end, out, non_blocking=True)
                copy_done = torch.cuda.Event()
                copy_done.record(self._stream)
            self.copy_done = copy_done
        else:
            self._copier.copy(tensors, layout, start, end, out)
        blob = LocalBlob(f"s{step}-g{placement.generation}-r{placement.rank}", step, placement.generation,
                         buffer, size, slot)
        job = _Job(blob, copy_done=copy_done, header=(end - start, meta_bytes))
        if self.report is None:
            self._finish_blob(job)  # no worker (a local run): header and CRC now; GPU: waits for the copy
        for old in [s for s in self.blobs if s != keep_step]:
            del self.blobs[old]
        self.blobs[step] = blob
        if self.report is not None:
            self._last_job = job
            self._ensure_worker()
            self._queue.put(job)
        return blob

    @staticmethod
    def _finish_blob(job: _Job) -> None:
        """Header (with the CRC of the copied bytes) and zero padding, once the copy-out is complete.
        The worker does it, off the training thread (GPU state: after the side-stream copy); the
        next capture uses the other buffer, so nothing writes this one meanwhile."""
        if job.header is None:
            return
        if job.copy_done is not None:
            job.copy_done.synchronize()  # blocks the calling (worker) thread only, never the training loop
        payload_len, meta_bytes = job.header
        lay.write_header(job.blob.buffer, payload_len, meta_bytes)
        job.blob.buffer[job.blob.size:] = 0
        job.header = None

    def keep_only(self, step: int | None) -> None:
        for old in [s for s in self.blobs if s != step]:
            del self.blobs[old]

    # -- background worker -------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run, name="ftrain-snapshot", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        lower_thread_priority()
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._ship(job)
            except grpc.RpcError as error:  # reported to the training thread, never raised here
                job.error = describe_rpc_error(error, "shard transfer")
                log.warning("snapshot of step %d not stored: %s", job.blob.step, job.error)
            except Exception as error:
                job.error = f"{type(error).__name__}: {error}"
                log.warning("snapshot of step %d not stored: %s", job.blob.step, job.error)
            finally:
                self.last_duration_s = time.monotonic() - job.started
                job.done.set()

    def _ship(self, job: _Job) -> None:
        placement = self.placement
        blob = job.blob
        assert placement is not None and self.agents is not None and self.report is not None
        self._finish_blob(job)  # the header's CRC reads the copied bytes (GPU: after the side-stream copy)
        k, m = max(placement.k, 1), placement.m
        if self.compression == "zstd":
            packed = compress.compress(blob.buffer[:blob.size])
            length = shard_length(len(packed), k)
            coded = np.zeros(k * length, dtype=np.uint8)
            coded[:len(packed)] = packed
            coded_size = len(packed)
        else:
            coded, coded_size, length = blob.buffer, blob.size, len(blob.buffer) // k
        data = coded.reshape(k, length)
        shards = [data[i] for i in range(k)]
        if m:
            if self._parity.shape != (m, length):
                self._parity = np.empty((m, length), dtype=np.uint8)
            codec(k, m).encode(data, out=self._parity)
            shards += [self._parity[i] for i in range(m)]
            self.encoded_bytes += len(blob.buffer)
        blob_crc = lay.blob_checksum(blob.buffer)  # from the header's CRC: no second pass over the blob
        if len(shards) == 1 and coded is blob.buffer:  # one full copy: continue the blob's CRC over the padding
            crcs = [shard_checksum(blob.buffer[blob.size:], blob_crc)]
        else:
            crcs = list(self._pool.map(shard_checksum, shards))
        info = pb.BlobInfo(
            blob_id=blob.blob_id, step=blob.step, producer_rank=placement.rank,
            producer_world_size=placement.world_size, producer_trainer=self.trainer_uid, producer_node=self.node_id,
            size=coded_size, k=k, m=m, shard_len=length, crc32=blob_crc,
            compression="" if self.compression == "none" else self.compression, raw_size=blob.size,
            shards=[pb.ShardLocation(index=i, node_id=node, address=address, crc32=crcs[i])
                    for i, (node, address) in enumerate(placement.targets)],
            generation=blob.generation,
        )
        info_bytes = info.SerializeToString()  # agents keep it: a restarted coordinator rebuilds its catalog
        # a deadline scaled to the shard (>= 50 MB/s): an unreachable (partitioned) agent must not hold
        # the pipeline for long; the coordinator finds the node dead and the generation moves on
        deadline = 5.0 + length / 50e6
        if self.local_agent:  # restart mode: a whole copy on this node outlives this process
            self._keep_whole(blob, blob_crc, deadline)
        problems = self.agents.put_shards(self._pool, placement.targets, blob.blob_id, blob.step, shards, crcs,
                                          info_bytes, deadline)
        if problems and all(problem.full for problem in problems):
            # an agent's snapshot memory is full: this step is skipped (never committed), not a failure
            reason = str(problems[0]) + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            log.log(logging.WARNING if not self.skipping else logging.DEBUG, "snapshot of step %d skipped: %s%s",
                    blob.step, reason, "" if self.skipping else "; later skips are logged at debug level until one fits")
            self.skipped += 1
            self.skipping = True
            ack = self.report(pb.SnapshotReport(trainer_uid=self.trainer_uid, generation=blob.generation,
                                                rank=placement.rank, step=blob.step, skipped=reason[:500]))
            if not ack.accepted:
                job.error = f"coordinator refused the snapshot of step {blob.step} (generation moved to {ack.current_generation})"
            return
        if problems:
            raise OSError("shard transfer failed on " + ", ".join(map(str, problems)))
        if self.skipping:
            log.info("snapshot of step %d stored: the agents had room again", blob.step)
            self.skipping = False
        # the coordinator answers once the step is committed (every rank's blob placed): one call, and
        # the training loop learns of the commit without asking
        ack = self.report(pb.SnapshotReport(trainer_uid=self.trainer_uid, generation=blob.generation,
                                            rank=placement.rank, step=blob.step, blob=info,
                                            snapshot_duration_s=time.monotonic() - job.started,
                                            wait_commit_s=COMMIT_WAIT_S if self.await_commit is not None else 0.0))
        if not ack.accepted:
            job.error = f"coordinator refused the snapshot of step {blob.step} (generation moved to {ack.current_generation})"
        elif ack.last_committed_step >= blob.step:
            job.committed = True
        elif self.await_commit is not None:
            try:
                job.committed = self.await_commit(blob.step, blob.generation)
            except Exception as error:  # the blob is stored; the training loop asks the coordinator itself
                log.debug("commit of step %d not confirmed by the worker: %s", blob.step, error)

    def _keep_whole(self, blob: LocalBlob, crc32: int, deadline: float) -> None:
        """In the node's shared memory when there is room, else on this node's agent."""
        assert self.agents is not None
        if self.shm_dir:
            try:
                local_copy.write(self.shm_dir, blob.blob_id, blob.buffer[:blob.size])
                return
            except OSError as error:  # e.g. a container's 64 MiB /dev/shm
                log.warning("cannot keep blob %s in %s (%s); this node's agent keeps it instead", blob.blob_id,
                            self.shm_dir, error)
                self.shm_dir = ""
        try:
            self.agents.put_shard(self.local_agent, blob.blob_id, FULL_COPY, blob.step, blob.buffer[:blob.size],
                                  crc32, b"", deadline)
        except (grpc.RpcError, OSError) as error:
            if not agent_full(error):
                raise
            log.warning("blob %s: no whole copy on this node (%s); a restart decodes it from its shards",
                        blob.blob_id, error)

    # -- restore -----------------------------------------------------------------------------
    def fetch_full_copy(self, info: pb.BlobInfo, address: str) -> np.ndarray | None:
        """The whole blob (restart mode), checked: from this node's shared memory when its producer
        ran here, else from its producer's agent; None when neither has it (or is reachable)."""
        assert self.agents is not None
        if self.shm_dir and info.producer_node == self.node_id:
            data = local_copy.read(self.shm_dir, info.blob_id, info.raw_size or info.size, info.crc32)
            if data is not None:
                self.whole_from_shm += 1
                return data
        try:
            return self.agents.get_shard(address, info.blob_id, FULL_COPY, info.crc32, timeout=10.0 + info.raw_size / 50e6)
        except (grpc.RpcError, OSError) as error:  # ShardCorrupted and data-plane errors are OSErrors
            log.info("no whole copy of blob %s on its producer's agent (%s); rebuilding it from shards",
                     info.blob_id, str(error)[:120])
            return None

    def fetch(self, info: pb.BlobInfo, live_nodes: set[str] | None = None) -> np.ndarray:
        """Rebuilds a blob from any k good shards on the agents (ftrain.snapshot.rebuild); shards
        on `live_nodes` (the current generation's members) are read first. Raises SnapshotLost."""
        agents = self.agents
        assert agents is not None
        return rebuild_blob(info, lambda s: agents.get_shard(s.address, info.blob_id, s.index, s.crc32), self._pool,
                            live_nodes)

    def close(self) -> None:
        self._queue.put(None)
        self._pool.shutdown(wait=False, cancel_futures=True)
