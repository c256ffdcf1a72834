"""The agent's shard store: peers' erasure-coded snapshot shards, held in this process's memory.

A trainer crash loses nothing here. Shards arrive and leave as streams of multi-MiB chunks;
every chunk names its job, and a request for another job's shards is refused.
"""
from __future__ import annotations

import threading

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import grpc

from ftrain.proto.ftrain.v1 import agent_pb2 as apb, agent_pb2_grpc
from ftrain.rpc import CHUNK_BYTES
from ftrain.snapshot.erasure import shard_checksum

MAX_SHARD_BYTES = 64 * 1024 * 1024 * 1024


def shard_size_problem(total_len: int) -> str:
    """Why a shard of `total_len` bytes is refused ('' when it is not): one rule for every transport."""
    return f"shard of {total_len} bytes is over the {MAX_SHARD_BYTES}-byte limit" if total_len > MAX_SHARD_BYTES else ""


def job_problem(served: str, requested: str) -> str:
    """Why a request naming job `requested` is refused by an agent of job `served` ('' when it is not)."""
    return f"this agent serves job {served!r}, not {requested!r}" if requested != served else ""


class StoreFull(Exception):
    """A shard would take the store over its snapshot memory limit (the message says by how much)."""


SPARE_BUFFERS = 8  # evicted shard buffers kept for reuse (per-step snapshots reuse the same sizes)


@dataclass
class StoredShard:
    step: int
    data: bytearray
    crc32: int
    blob_info: bytes = b""  # serialized BlobInfo from the producing trainer
    readers: int = 0        # gets streaming it now: its buffer is not reused until they finish


class ShardStore:
    """Thread-safe map (blob_id, index) -> shard bytes, with eviction by step, within a memory limit.

    Buffers of evicted shards are kept (a few) and handed out again for incoming shards of the
    same size: with a snapshot every step, fresh multi-MiB allocations would cost a page fault
    per 4 KiB every step. With a `limit`, a shard that would take the shards held, those still
    arriving and `outside_bytes` (restart mode's whole copies in /dev/shm) over it is refused
    (StoreFull) before any memory is taken.
    """

    def __init__(self, limit: int = 0) -> None:
        self._lock = threading.Lock()
        self._shards: dict[tuple[str, int], StoredShard] = {}
        self._spare: list[bytearray] = []
        self._corrupting = False  # fault injection: this node's shard memory has gone bad
        self.on_read: Callable[[int], None] | None = None  # a shard of this index was served over the network
        self.limit = limit          # bytes (0: none)
        self.outside_bytes = 0      # snapshot memory of this node held outside the store (set by the agent)
        self._held = 0              # bytes of the shards held
        self._arriving = 0          # bytes of buffers handed out for shards still arriving
        self.refused = 0            # shards refused for the limit (ftrain_shard_refusals_total)

    def take_buffer(self, size: int) -> bytearray:
        """A writable buffer of exactly `size` bytes for an incoming shard (reused when one fits).
        Raises StoreFull when the shard does not fit in the limit."""
        with self._lock:
            used = self._held + self._arriving + self.outside_bytes
            if self.limit and used + size > self.limit:
                self.refused += 1
                raise StoreFull(f"snapshot memory limit reached: this agent holds {used} of its {self.limit} bytes, "
                                f"a shard of {size} bytes does not fit (raise --snapshot-memory, or spread the "
                                f"state over more nodes)")
            self._arriving += size
            for i, spare in enumerate(self._spare):
                if len(spare) == size:
                    return self._spare.pop(i)
        return bytearray(size)

    def give_back(self, buffer: bytearray) -> None:
        """Returns a buffer that was taken but not stored (a transfer failed)."""
        with self._lock:
            self._arriving = max(0, self._arriving - len(buffer))
            self._recycle(buffer)

    def _recycle(self, buffer: bytearray) -> None:
        if isinstance(buffer, bytearray) and len(buffer) >= 1 << 20:
            self._spare.append(buffer)
            del self._spare[:-SPARE_BUFFERS]

    def _evict(self, key: tuple[str, int]) -> None:
        shard = self._shards.pop(key)
        self._held -= len(shard.data)
        if shard.readers == 0:
            self._recycle(shard.data)

    def put(self, blob_id: str, index: int, step: int, data: bytearray, crc32: int, blob_info: bytes = b"") -> None:
        with self._lock:
            if self._corrupting and data:
                data[len(data) // 2] ^= 0xFF
            if (blob_id, index) in self._shards:
                self._evict((blob_id, index))
            self._shards[(blob_id, index)] = StoredShard(step, data, crc32, blob_info)
            self._held += len(data)
            self._arriving = max(0, self._arriving - len(data))

    def put_checked(self, blob_id: str, index: int, step: int, data: bytearray, crc32: int,
                    blob_info: bytes = b"") -> str:
        """Stores a received shard if it matches its CRC. Returns '' or why it was refused (the
        buffer then goes back for reuse)."""
        if shard_checksum(data) != crc32:
            self.give_back(data)
            return f"shard {blob_id}#{index} arrived corrupted (crc mismatch)"
        self.put(blob_id, index, step, data, crc32, blob_info)
        return ""

    def acquire(self, blob_id: str, index: int) -> StoredShard | None:
        """The shard, pinned against buffer reuse until :meth:`release` (for streaming it out)."""
        with self._lock:
            shard = self._shards.get((blob_id, index))
            if shard is not None:
                shard.readers += 1
            return shard

    def serve(self, blob_id: str, index: int) -> StoredShard | None:
        """:meth:`acquire` for a peer reading the shard over the network, counted (`on_read`)."""
        shard = self.acquire(blob_id, index)
        if shard is not None and self.on_read is not None:
            self.on_read(index)
        return shard

    def release(self, shard: StoredShard) -> None:
        with self._lock:
            shard.readers -= 1

    def held(self) -> list[tuple[bytes, int]]:
        """(serialized BlobInfo, shard index) of every shard held: what a restarted coordinator reads."""
        with self._lock:
            return [(shard.blob_info, index) for (_blob, index), shard in self._shards.items() if shard.blob_info]

    def get(self, blob_id: str, index: int) -> StoredShard | None:
        with self._lock:
            return self._shards.get((blob_id, index))

    def drop_older_than(self, min_step: int, skipped: Iterable[int] = (), pinned: Iterable[int] = (),
                        blobs: Iterable[str] = ()) -> int:
        """Drops the shards of steps below `min_step` (except the `pinned` ones), of the `skipped`
        steps (never committed) and of the given-up `blobs`."""
        gone, kept, dropped = set(skipped), set(pinned), set(blobs)
        with self._lock:
            old = [key for key, shard in self._shards.items()
                   if (shard.step < min_step and shard.step not in kept) or shard.step in gone or key[0] in dropped]
            for key in old:
                self._evict(key)
            return len(old)

    def corrupt(self, step: int) -> list[str]:
        """Fault injection (corrupt-shard): flips a byte in every shard of steps <= `step` held now,
        and in every shard stored from now on, as a node whose memory went bad would."""
        hit = []
        with self._lock:
            self._corrupting = True
            for (blob_id, index), shard in self._shards.items():
                if shard.step <= step and shard.data:
                    shard.data[len(shard.data) // 2] ^= 0xFF
                    hit.append(f"{blob_id}#{index}")
        return hit

    def stats(self) -> tuple[int, int]:
        with self._lock:
            return len(self._shards), self._held


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(self, store: ShardStore, job_id: str, node_id_ref: list[str], data_address: str = "") -> None:
        self.store = store
        self.job_id = job_id
        self.node_id_ref = node_id_ref
        self.data_address = data_address  # the agent's shard data plane (ftrain.agent.dataplane), if any

    def _check_job(self, job_id: str, context: grpc.ServicerContext) -> None:
        problem = job_problem(self.job_id, job_id)
        if problem:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)

    def PutShard(self, request_iterator: Iterator[apb.ShardChunk], context: grpc.ServicerContext) -> apb.PutShardResponse:
        buffer: bytearray | None = None
        first: apb.ShardChunk | None = None
        try:
            for chunk in request_iterator:
                if first is None:
                    self._check_job(chunk.job_id, context)
                    too_big = shard_size_problem(chunk.total_len)
                    if too_big:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, too_big)
                    first = chunk
                    try:
                        buffer = self.store.take_buffer(chunk.total_len)
                    except StoreFull as full:
                        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(full))
                end = chunk.offset + len(chunk.data)
                if end > len(buffer):  # type: ignore[arg-type]
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"chunk at offset {chunk.offset} (+{len(chunk.data)}) overruns the shard ({len(buffer)} bytes)")  # type: ignore[arg-type]
                buffer[chunk.offset:end] = chunk.data  # type: ignore[index]
        except BaseException:  # the stream broke or was refused: the buffer is not stored (nor counted)
            if buffer is not None:
                self.store.give_back(buffer)
            raise
        if first is None or buffer is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "empty shard stream")
            raise AssertionError("unreachable: abort raises")
        corrupted = self.store.put_checked(first.blob_id, first.index, first.step, buffer, first.crc32,  # type: ignore[union-attr]
                                           first.blob_info)  # type: ignore[union-attr]
        if corrupted:
            context.abort(grpc.StatusCode.DATA_LOSS, corrupted)
        return apb.PutShardResponse(ok=True, bytes=len(buffer))

    def GetShard(self, request: apb.GetShardRequest, context: grpc.ServicerContext) -> Iterator[apb.ShardChunk]:
        self._check_job(request.job_id, context)
        shard = self.store.serve(request.blob_id, request.index)
        if shard is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no shard {request.blob_id}#{request.index} on this agent")
        try:
            view = memoryview(shard.data)  # type: ignore[union-attr]
            total = len(view)
            offset = 0
            while True:
                piece = bytes(view[offset:offset + CHUNK_BYTES])
                yield apb.ShardChunk(job_id=self.job_id, blob_id=request.blob_id, index=request.index, step=shard.step,  # type: ignore[union-attr]
                                     offset=offset, total_len=total, crc32=shard.crc32, data=piece)  # type: ignore[union-attr]
                offset += len(piece)
                if offset >= total:
                    return
        finally:
            self.store.release(shard)  # type: ignore[arg-type]

    def Ping(self, request: apb.PingRequest, context: grpc.ServicerContext) -> apb.PingResponse:
        count, size = self.store.stats()
        return apb.PingResponse(node_id=self.node_id_ref[0], job_id=self.job_id, shard_count=count, shard_bytes=size,
                                data_address=self.data_address)

    def CorruptShards(self, request: apb.CorruptRequest, context: grpc.ServicerContext) -> apb.CorruptResponse:
        self._check_job(request.job_id, context)
        return apb.CorruptResponse(corrupted=self.store.corrupt(request.step))
