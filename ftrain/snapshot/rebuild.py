"""A blob rebuilt from any k of its k+m shards: read them (current members first, data shards
before parity), decode, decompress, check the whole blob's checksum.

Used by a restoring trainer (shards from the agents) and by an agent writing a durable
checkpoint (its own shards from memory, the others from its peers). Reading one shard is the
caller's function; every failure to read one counts as an erasure.
"""
from __future__ import annotations

import logging
from concurrent.futures import Executor
from typing import Callable

import grpc
import numpy as np

from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.rpc import describe_rpc_error
from ftrain.snapshot import compress
from ftrain.snapshot.erasure import NotEnoughShardsError, codec, join_blob, shard_checksum
from ftrain.snapshot.transfer import ShardCorrupted

log = logging.getLogger("ftrain.snapshot")


class SnapshotLost(RuntimeError):
    """Fewer than k good shards of a blob could be read."""


def rebuild_blob(info: pb.BlobInfo, read_shard: Callable[[pb.ShardLocation], np.ndarray], pool: Executor,
                 live_nodes: set[str] | None = None) -> np.ndarray:
    """The blob `info` describes, from any k good shards. Shards on `live_nodes` are read first: a
    partitioned node does not refuse connections, it swallows them. Raises SnapshotLost."""
    k = info.k
    got: dict[int, np.ndarray] = {}
    problems: list[str] = []
    order = sorted(info.shards, key=lambda s: (live_nodes is not None and s.node_id not in live_nodes, s.index))
    pending = list(order)
    while len(got) < k and pending:
        batch, pending = pending[: k - len(got)], pending[k - len(got):]
        futures = {pool.submit(read_shard, s): s for s in batch}
        for future, shard in futures.items():
            try:
                got[shard.index] = future.result()
            except grpc.RpcError as error:  # unreachable agent or missing shard: an erasure
                problems.append(f"shard {shard.index} on {shard.node_id}: "
                                f"{describe_rpc_error(error, 'agent ' + shard.node_id)[:160]}")
            except ShardCorrupted as error:  # bad checksum: an erasure too
                problems.append(f"shard {shard.index} on {shard.node_id}: {error}")
            except OSError as error:  # data plane: refused, unreachable, timed out: an erasure
                problems.append(f"shard {shard.index} on {shard.node_id}: {str(error)[:160]}")
    if len(got) < k:
        raise SnapshotLost(f"blob {info.blob_id} (step {info.step}, rank {info.producer_rank}): only {len(got)} of "
                           f"the {k} shards needed could be read; " + "; ".join(problems))
    if problems:
        log.warning("blob %s rebuilt around bad shards: %s", info.blob_id, "; ".join(problems))
    try:
        rows = codec(k, info.m).decode(got) if info.m else np.stack([got[i] for i in range(k)])
    except NotEnoughShardsError as error:
        raise SnapshotLost(str(error)) from error
    blob = join_blob(np.ascontiguousarray(rows), info.size)
    if info.compression:
        blob = compress.decompress(blob, info.raw_size)
    if shard_checksum(blob) != info.crc32:
        raise SnapshotLost(f"blob {info.blob_id} decoded with a wrong checksum")
    return blob
