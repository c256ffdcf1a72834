"""Restart mode: a trainer's own blob, kept whole in its node's shared memory.

A restarted trainer process needs its own newest committed blob back. Its agent makes a directory
in /dev/shm (`make_dir`) whose lifetime is the agent's and hands it to its trainers
(FTRAIN_SHM_DIR); a trainer writes each blob there whole (`write`, one copy, no socket), and after
a restart reads it back (`read`, checked against its CRC-32): no decode, nothing over the network.
The agent drops blobs of steps the coordinator no longer keeps (`prune`) and the directory when
it exits. Where /dev/shm is missing or too small (a container's default is 64 MiB) the trainer
sends the whole copy to its agent instead, as shard index FULL_COPY.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Iterable

import numpy as np

from ftrain.snapshot.erasure import shard_checksum

FULL_COPY = 255  # the shard index of a whole blob kept by its producer's own agent
ENV_DIR = "FTRAIN_SHM_DIR"  # the directory, as the agent tells its trainers
SHM = "/dev/shm"
_STEP = re.compile(r"^s(\d+)-")  # blob ids are s{step}-g{generation}-r{rank}


def make_dir(job_id: str, node_id: str, root: str = SHM) -> str:
    """A fresh directory for this agent's trainers' whole copies, or "" without a usable /dev/shm."""
    if not (os.path.isdir(root) and os.access(root, os.W_OK)):
        return ""
    return tempfile.mkdtemp(prefix=f"ftrain-{job_id}-{node_id}-", dir=root)


def _path(directory: str, blob_id: str) -> str:
    return os.path.join(directory, blob_id + ".blob")


def write(directory: str, blob_id: str, data: np.ndarray) -> None:
    """Writes the blob whole (to a temporary name, then renamed: a reader never sees half of it).
    Raises OSError (e.g. ENOSPC on a small /dev/shm)."""
    temporary = _path(directory, blob_id) + ".tmp"
    try:
        with open(temporary, "wb") as handle:
            handle.write(np.ascontiguousarray(data).data)
        os.replace(temporary, _path(directory, blob_id))
    except OSError:
        _remove(temporary)
        raise


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def read(directory: str, blob_id: str, size: int, crc32: int) -> np.ndarray | None:
    """The blob, or None when it is not there or fails its size or CRC-32 check."""
    path = _path(directory, blob_id)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    return data if len(data) == size and shard_checksum(data) == crc32 else None


def prune(directory: str, min_step: int, skipped: Iterable[int] = (), pinned: Iterable[int] = ()) -> int:
    """Removes the blobs of steps below `min_step` (except the `pinned` ones) and of the `skipped`
    steps; returns how many."""
    removed, gone, kept = 0, set(skipped), set(pinned)
    for name in os.listdir(directory) if directory and os.path.isdir(directory) else []:
        match = _STEP.match(name)
        step = int(match.group(1)) if match else -1
        if match and ((step < min_step and step not in kept) or step in gone):
            _remove(os.path.join(directory, name))
            removed += 1
    return removed


def bytes_held(directory: str) -> int:
    total = 0
    for name in os.listdir(directory) if directory and os.path.isdir(directory) else []:
        try:
            total += os.path.getsize(os.path.join(directory, name))
        except OSError:
            pass
    return total


def remove_dir(directory: str) -> None:
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
