"""The durable tier's files: one directory per checkpoint, never picked when torn.

    DIR/step-000000030.partial/rank-00000.blob ...  being written (never resumed from)
    DIR/step-000000030/rank-0000R.blob + manifest.json  complete

Each rank file is that rank's committed snapshot blob, byte for byte: ftrain's own format (its
header checksums the meta and payload: state layout, replicated-state slice, data position, RNG
state, registered objects, buffers). The manifest is written last (to a temporary name, then
renamed) and lists every file with its size and CRC-32; only then is the directory renamed from
`.partial`. `newest_complete` picks the newest checkpoint whose manifest and files all check out
and names each newer one it passed over and why.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from ftrain.snapshot.erasure import shard_checksum

FORMAT = "ftrain-checkpoint/1"
MANIFEST = "manifest.json"
PARTIAL = ".partial"
_NAME = re.compile(r"^step-(\d{9,})$")
_READ_CHUNK = 16 << 20


class CheckpointError(IOError):
    """A checkpoint file is missing, short, corrupted or not ftrain's; the message names it."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


def part_name(rank: int) -> str:
    return f"rank-{rank:05d}.blob"


@dataclass(frozen=True)
class Part:
    rank: int
    path: str
    bytes: int
    crc32: int


@dataclass(frozen=True)
class Checkpoint:
    path: str
    step: int
    world_size: int
    generation: int
    job_id: str
    parts: tuple[Part, ...]
    dcp: str = ""  # the path of its DCP copy (ftrain.snapshot.dcp), "" when it has none


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_part(root: str, step: int, rank: int, blob: np.ndarray) -> tuple[str, int, int]:
    """Writes rank `rank`'s blob into the partial checkpoint of `step` (temporary name, fsync,
    rename). Returns (file name, bytes, CRC-32). Raises OSError (full, read-only, ...)."""
    directory = os.path.join(root, checkpoint_name(step) + PARTIAL)
    os.makedirs(directory, exist_ok=True)
    name = part_name(rank)
    temporary = os.path.join(directory, name + ".tmp")
    data = np.ascontiguousarray(blob).reshape(-1)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data.data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, os.path.join(directory, name))
    except OSError:
        try:  # a full disk keeps no half-written file
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return name, int(data.size), shard_checksum(data)


def finalize(root: str, step: int, manifest: dict[str, Any], keep: int,
             export: Callable[[str, list[str]], str] | None = None) -> list[str]:
    """Completes the checkpoint of `step`: checks every listed file is there with its size, lets
    `export` add a copy in another format (ftrain.snapshot.dcp; its name goes into the manifest's
    "dcp"), writes the manifest, renames the directory, then keeps only the newest `keep` complete
    checkpoints (and drops partial ones of earlier steps). Returns what it removed. Raises
    CheckpointError/OSError."""
    partial = os.path.join(root, checkpoint_name(step) + PARTIAL)
    for entry in manifest["parts"]:
        path = os.path.join(partial, entry["file"])
        size = os.path.getsize(path) if os.path.exists(path) else -1
        if size != entry["bytes"]:
            raise CheckpointError(f"{path}: {'missing' if size < 0 else f'{size} bytes'}, expected {entry['bytes']}")
    manifest["dcp"] = export(partial, [os.path.join(partial, entry["file"]) for entry in manifest["parts"]]) \
        if export is not None else ""
    temporary = os.path.join(partial, MANIFEST + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, os.path.join(partial, MANIFEST))
    _fsync_dir(partial)
    final = os.path.join(root, checkpoint_name(step))
    if os.path.exists(final):  # a resumed job writing the step it resumed from again
        shutil.rmtree(final)
    os.replace(partial, final)
    _fsync_dir(root)
    removed = []
    complete = sorted(s for s, partial_dir in _listing(root) if not partial_dir)
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, checkpoint_name(old)), ignore_errors=True)
        removed.append(checkpoint_name(old))
    for old, partial_dir in _listing(root):
        if partial_dir and old < step:
            shutil.rmtree(os.path.join(root, checkpoint_name(old) + PARTIAL), ignore_errors=True)
            removed.append(checkpoint_name(old) + PARTIAL)
    return removed


def _listing(root: str) -> list[tuple[int, bool]]:
    """(step, is partial) for every checkpoint directory under `root`."""
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        base, partial = (name[:-len(PARTIAL)], True) if name.endswith(PARTIAL) else (name, False)
        match = _NAME.match(base)
        if match:
            found.append((int(match.group(1)), partial))
    return found


def file_checksum(path: str) -> tuple[int, int]:
    """(bytes, CRC-32) of a whole file, read in 16 MiB pieces."""
    crc, size = 0, 0
    with open(path, "rb") as handle:
        while True:
            piece = handle.read(_READ_CHUNK)
            if not piece:
                return size, crc
            crc = shard_checksum(piece, crc)
            size += len(piece)


def load_manifest(directory: str, verify: bool = True) -> Checkpoint:
    """The checkpoint in `directory`, its files checked against the manifest (size, and CRC-32
    unless not `verify`: the files are not read). Raises CheckpointError naming the file at fault."""
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ftrain checkpoint manifest (format {FORMAT!r})")
    parts = []
    try:
        for entry in manifest["parts"]:
            file = os.path.join(directory, entry["file"])
            if not os.path.exists(file):
                raise CheckpointError(f"{file} is missing")
            size, crc = file_checksum(file) if verify else (os.path.getsize(file), entry["crc32"])
            if size != entry["bytes"]:
                raise CheckpointError(f"{file} has {size} bytes, the manifest says {entry['bytes']} (truncated?)")
            if crc != entry["crc32"]:
                raise CheckpointError(f"{file} failed its checksum (corrupted)")
            parts.append(Part(int(entry["rank"]), file, size, crc))
        checkpoint = Checkpoint(directory, int(manifest["step"]), int(manifest["world_size"]),
                                int(manifest.get("generation", -1)), str(manifest.get("job_id", "")),
                                tuple(sorted(parts, key=lambda p: p.rank)),
                                os.path.join(directory, manifest["dcp"]) if manifest.get("dcp") else "")
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is malformed: {error!r}") from None
    if sorted(p.rank for p in checkpoint.parts) != list(range(checkpoint.world_size)):
        raise CheckpointError(f"{path} lists ranks {[p.rank for p in checkpoint.parts]}, "
                              f"not 0..{checkpoint.world_size - 1}")
    return checkpoint


def _newest_first(root: str, verify: bool, below_step: int | None = None) -> Iterator[tuple[Checkpoint | None, str]]:
    """Each checkpoint under `root` (older than `below_step`), newest first: (it, "") when it is
    complete and checks out, else (None, why not)."""
    for step, partial in sorted(_listing(root), reverse=True):
        if below_step is not None and step >= below_step:
            continue
        if partial:
            yield None, (f"{os.path.join(root, checkpoint_name(step) + PARTIAL)}: incomplete (interrupted while "
                         f"being written)")
            continue
        try:
            yield load_manifest(os.path.join(root, checkpoint_name(step)), verify), ""
        except CheckpointError as error:
            yield None, str(error)


def newest_complete(root: str, verify: bool = True) -> tuple[Checkpoint | None, list[str]]:
    """The newest complete checkpoint that checks out (`verify`: every file's CRC-32 too), and why
    each newer one was passed over."""
    passed: list[str] = []
    for checkpoint, problem in _newest_first(root, verify):
        if checkpoint is not None:
            return checkpoint, passed
        passed.append(problem)
    return None, passed


def older_complete(root: str, below_step: int) -> list[Checkpoint]:
    """The complete checkpoints older than `below_step`, newest first: what a resume falls back to
    when the newest cannot be restored. Their files are checked for size only here (a restore
    checks each file's CRC-32 as it reads it)."""
    return [checkpoint for checkpoint, _ in _newest_first(root, False, below_step) if checkpoint is not None]


def read_part(path: str, size: int, crc32: int) -> np.ndarray:
    """One rank file, checked. Raises CheckpointError naming it."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read: {error}") from None
    if data.size != size:
        raise CheckpointError(f"{path} has {data.size} bytes, the manifest says {size}")
    if shard_checksum(data) != crc32:
        raise CheckpointError(f"{path} failed its checksum (corrupted)")
    return data
