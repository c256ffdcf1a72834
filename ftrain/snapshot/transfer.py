"""Bulk shard movement between trainers and agents.

Shards go over each agent's shard data plane (raw TCP, ``ftrain.snapshot.dataplane``) when the
agent advertises one in Ping, and as streamed multi-MiB gRPC chunks otherwise (or with
FTRAIN_SHARD_TRANSPORT=grpc). Either way a shard is checked against its CRC on arrival.
"""
from __future__ import annotations

import threading
from concurrent.futures import Executor
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Iterator, Sequence

import grpc
import numpy as np

from ftrain.proto.ftrain.v1 import agent_pb2 as apb, agent_pb2_grpc
from ftrain.rpc import CHUNK_BYTES, open_channel, token_metadata
from ftrain.snapshot import dataplane
from ftrain.snapshot.erasure import shard_checksum


class ShardCorrupted(IOError):
    pass


def agent_full(error: BaseException) -> bool:
    """The agent refused a shard because its snapshot memory limit is reached (either transport)."""
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[no-any-return]
    return isinstance(error, dataplane.ShardTransferError) and error.code == dataplane.RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class ShardProblem:
    """Why a shard was not stored on `node`; `full`: its agent's snapshot memory limit is reached."""

    node: str
    why: str
    full: bool = False

    def __str__(self) -> str:
        return f"{self.node}: {self.why}"


class AgentPool:
    """One channel + stub per agent address, shared by threads."""

    def __init__(self, token: str, job_id: str) -> None:
        self.metadata = token_metadata(token)
        self.job_id = job_id
        self._lock = threading.Lock()
        self._stubs: dict[str, tuple[grpc.Channel, agent_pb2_grpc.AgentStub]] = {}
        self._use_data_plane = dataplane.transport() == "tcp"
        self._data_addresses: dict[str, str] = {}  # agent gRPC address -> its data plane address ("" = none)
        self.data = dataplane.DataPlaneClient(token, job_id)

    def data_address(self, address: str, timeout: float) -> str:
        """The agent's data plane address, asked once (Ping) and remembered; '' when it has none."""
        if not self._use_data_plane:
            return ""
        with self._lock:
            known = self._data_addresses.get(address)
        if known is None:
            reply = self.stub(address).Ping(apb.PingRequest(), timeout=min(timeout, 10.0), metadata=self.metadata)
            known = reply.data_address
            with self._lock:
                self._data_addresses[address] = known
        return known

    def forget(self, address: str) -> None:
        """Drops what is known about an agent (its data port may have changed after a restart)."""
        with self._lock:
            self._data_addresses.pop(address, None)

    @contextmanager
    def _forgotten_if_refused(self, address: str) -> Iterator[None]:
        """A refused data-plane connection: the agent may have restarted on another data port."""
        try:
            yield
        except ConnectionRefusedError:
            self.forget(address)
            raise

    def stub(self, address: str) -> agent_pb2_grpc.AgentStub:
        with self._lock:
            if address not in self._stubs:
                channel = open_channel(address)
                self._stubs[address] = (channel, agent_pb2_grpc.AgentStub(channel))
            return self._stubs[address][1]

    def put_shard(self, address: str, blob_id: str, index: int, step: int, data: np.ndarray, crc32: int,
                  blob_info: bytes = b"", timeout: float = 60.0) -> None:
        data_address = self.data_address(address, timeout)
        if data_address:
            with self._forgotten_if_refused(address):
                self.data.put(data_address, blob_id, index, step, data, crc32, blob_info, timeout)
            return
        view = np.ascontiguousarray(data).data.cast("B")
        total = len(view)

        def chunks() -> Iterator[apb.ShardChunk]:
            offset = 0
            while True:
                piece = view[offset:offset + CHUNK_BYTES]
                yield apb.ShardChunk(job_id=self.job_id, blob_id=blob_id, index=index, step=step, offset=offset,
                                     total_len=total, crc32=crc32 if offset == 0 else 0, data=bytes(piece),
                                     blob_info=blob_info if offset == 0 else b"")
                offset += len(piece)
                if offset >= total:
                    return

        self.stub(address).PutShard(chunks(), timeout=timeout, metadata=self.metadata)

    def put_shards(self, executor: Executor, targets: Sequence[tuple[str, str]], blob_id: str, step: int,
                   shards: Sequence[np.ndarray], crcs: Sequence[int], blob_info: bytes = b"",
                   timeout: float = 60.0) -> list[ShardProblem]:
        """Puts shard i on targets[i] = (node, address), all at once on `executor` (one target: on
        this thread). Returns why for each shard that was not stored."""
        def put(i: int) -> None:
            self.put_shard(targets[i][1], blob_id, i, step, shards[i], crcs[i], blob_info, timeout)

        problems = []
        futures = [executor.submit(put, i) for i in range(len(targets))] if len(targets) > 1 else []
        for i, (node, _address) in enumerate(targets):
            try:
                futures[i].result() if futures else put(i)
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
                why = (error.details() or "") if agent_full(error) else ""  # type: ignore[attr-defined]
                problems.append(ShardProblem(node, why or (code.name if code is not None else str(error)), bool(why)))
            except OSError as error:  # shard data plane: refused, unreachable, timed out, corrupted, full
                problems.append(ShardProblem(node, str(error), agent_full(error)))
        return problems

    def get_shard(self, address: str, blob_id: str, index: int, expected_crc: int, timeout: float = 60.0) -> np.ndarray:
        data_address = self.data_address(address, timeout)
        buffer: np.ndarray | None = None
        if data_address:
            with self._forgotten_if_refused(address):
                buffer, _held_crc = self.data.get(data_address, blob_id, index, timeout)
        else:
            for chunk in self.stub(address).GetShard(apb.GetShardRequest(job_id=self.job_id, blob_id=blob_id,
                                                                         index=index),
                                                     timeout=timeout, metadata=self.metadata):
                if buffer is None:
                    buffer = np.empty(chunk.total_len, dtype=np.uint8)
                buffer[chunk.offset:chunk.offset + len(chunk.data)] = np.frombuffer(chunk.data, dtype=np.uint8)
            if buffer is None:
                raise ShardCorrupted(f"shard {blob_id}#{index} from {address}: empty stream")
        if shard_checksum(buffer) != expected_crc:
            raise ShardCorrupted(f"shard {blob_id}#{index} from {address} failed its checksum")
        return buffer

    def corrupt(self, address: str, step: int) -> list[str]:
        return list(self.stub(address).CorruptShards(apb.CorruptRequest(job_id=self.job_id, step=step),
                                                     timeout=10.0, metadata=self.metadata).corrupted)

    def close(self) -> None:
        with self._lock:
            for channel, _ in self._stubs.values():
                channel.close()
            self._stubs.clear()
        self.data.close()
