"""Layout: training state -> manifest + one flat byte buffer, and back (zero-copy views).

Replicated state (model and optimizer tensors, identical on every data-parallel rank) is laid
out as one flat byte range with 64-byte-aligned tensor offsets; rank r of N captures only slice
r of it (REFT's trick). A *blob* is what one rank captures for one step:

    [header 32 B: magic, version, payload length, meta length, crc32] [payload: the slice] [meta: pickle]

The meta carries the manifest, the slice bounds and the small per-rank state (RNG, data position,
registered objects). Restoring views the assembled flat buffer as tensors without copying.
"""
from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from ftrain.snapshot.erasure import crc32_combine, shard_checksum  # zlib-compatible CRC-32, ISA-L speed

ALIGN = 64
MAGIC = b"FTRNBLOB"
VERSION = 1
_HEADER = struct.Struct("<8sIQQI")  # magic, version, payload length, meta length, crc32(payload+meta)
HEADER_BYTES = 32
assert _HEADER.size <= HEADER_BYTES


class BlobFormatError(ValueError):
    """A blob's bytes are not a valid ftrain snapshot blob (wrong magic, version or checksum)."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class StateLayout:
    entries: tuple[TensorEntry, ...]
    total: int

    def signature(self) -> tuple:
        return tuple((e.name, e.dtype, e.shape) for e in self.entries)

    @cached_property
    def manifest(self) -> list[tuple[str, str, tuple[int, ...], int, int]]:
        """The entries as plain tuples, as a blob's meta carries them."""
        return [(e.name, e.dtype, e.shape, e.offset, e.nbytes) for e in self.entries]


def _align(value: int) -> int:
    return (value + ALIGN - 1) // ALIGN * ALIGN


def build_layout(tensors: Sequence[tuple[str, torch.Tensor]]) -> StateLayout:
    entries = []
    offset = 0
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        entries.append(TensorEntry(name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), offset, nbytes))
        offset = _align(offset + nbytes)
    return StateLayout(tuple(entries), offset)


def slice_bounds(total: int, world_size: int, rank: int) -> tuple[int, int]:
    """Byte range [a, b) of the flat replicated state that `rank` captures (64-byte aligned)."""
    per = _align(-(-total // world_size)) if total else 0
    return min(total, rank * per), min(total, (rank + 1) * per)


def byte_view(tensor: torch.Tensor) -> torch.Tensor:
    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8, device=flat.device)


def copy_slice(tensors: Sequence[torch.Tensor], layout: StateLayout, start: int, end: int, out: torch.Tensor,
               non_blocking: bool = False) -> None:
    """Copies bytes [start, end) of the flat layout of `tensors` into `out` (uint8, length end-start)."""
    _copy_pieces(*_slice_views(tensors, layout, start, end, out), non_blocking)


class SliceCopier:
    """`copy_slice` for a training loop that captures the same tensors every step: the per-tensor
    source and destination views are built once per (layout, slice, tensors, output buffer)
    instead of every step. A tensor that was re-allocated
    (another data pointer), a new layout object or another output buffer rebuilds the views (the
    kept views pin the old storages, so an equal data pointer is the same memory). Non-contiguous
    tensors are copied the plain way each time."""

    def __init__(self) -> None:
        self._layout: StateLayout | None = None
        self._key: tuple = ()
        self._plans: dict[tuple[int, int], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def copy(self, tensors: Sequence[torch.Tensor], layout: StateLayout, start: int, end: int, out: torch.Tensor,
             non_blocking: bool = False) -> None:
        if not all(t.is_contiguous() for t in tensors):  # their byte views are copies: nothing to keep
            copy_slice(tensors, layout, start, end, out, non_blocking)
            return
        key = (start, end, tuple(t.data_ptr() for t in tensors))
        if layout is not self._layout or key != self._key:
            self._layout, self._key, self._plans = layout, key, {}
        plan = self._plans.get((out.data_ptr(), len(out)))
        if plan is None:
            if len(self._plans) >= 2:  # one per snapshot buffer; a re-allocated buffer's views must not pin it
                self._plans.clear()
            plan = self._plans[(out.data_ptr(), len(out))] = _slice_views(tensors, layout, start, end, out)
        _copy_pieces(*plan, non_blocking)


def _copy_pieces(destinations: list[torch.Tensor], sources: list[torch.Tensor], non_blocking: bool) -> None:
    if not destinations:
        return
    if destinations[0].device == sources[0].device and hasattr(torch, "_foreach_copy_"):  # CPU state: one call
        torch._foreach_copy_(destinations, sources, non_blocking=non_blocking)
    else:  # device-to-host (side-stream copies): one copy_ a piece
        for destination, source in zip(destinations, sources):
            destination.copy_(source, non_blocking=non_blocking)


def _pieces(layout: StateLayout, start: int, end: int) -> Iterator[tuple[int, TensorEntry, int, int]]:
    """(tensor index, entry, lo, hi) of each tensor's bytes [lo, hi) within [start, end) of the flat layout."""
    for index, entry in enumerate(layout.entries):
        lo, hi = max(start, entry.offset), min(end, entry.offset + entry.nbytes)
        if lo < hi:
            yield index, entry, lo, hi


def _slice_views(tensors: Sequence[torch.Tensor], layout: StateLayout, start: int, end: int,
                 out: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    destinations, sources = [], []
    for index, entry, lo, hi in _pieces(layout, start, end):
        sources.append(byte_view(tensors[index])[lo - entry.offset:hi - entry.offset])
        destinations.append(out[lo - start:hi - start])
    return destinations, sources


def slice_checksum(layout: StateLayout, start: int, end: int, tensors: Sequence[torch.Tensor] | None = None,
                   payload: np.ndarray | None = None) -> int:
    """CRC-32 of the tensor bytes in [start, end) of the flat layout, alignment padding left out:
    read from the live `tensors` (GPU ones through host copies), or from a blob's `payload` (its
    bytes [start, end)). The two are equal when the live tensors hold the blob's bytes."""
    crc = 0
    for index, entry, lo, hi in _pieces(layout, start, end):
        if payload is not None:
            piece = payload[lo - start:hi - start]
        else:
            assert tensors is not None
            view = byte_view(tensors[index])[lo - entry.offset:hi - entry.offset]
            piece = (view if view.device.type == "cpu" else view.cpu()).numpy()
        crc = shard_checksum(np.ascontiguousarray(piece), crc)
    return crc


def tensors_from_flat(layout: StateLayout, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of `flat` (uint8, layout.total bytes) as the laid-out tensors (no copy)."""
    views = {}
    for entry in layout.entries:
        dtype = getattr(torch, entry.dtype)
        raw = flat[entry.offset:entry.offset + entry.nbytes]
        views[entry.name] = raw.view(dtype).reshape(entry.shape) if entry.nbytes else torch.empty(entry.shape, dtype=dtype)
    return views


def encode_meta(meta: dict[str, Any]) -> bytes:
    return pickle.dumps(meta, protocol=5)


def blob_size(payload_len: int, meta_len: int) -> int:
    return HEADER_BYTES + payload_len + meta_len


def write_header(buffer: np.ndarray, payload_len: int, meta: bytes) -> int:
    """Writes meta after the payload already in buffer[32:32+payload_len], then the header. Returns size."""
    end = HEADER_BYTES + payload_len
    buffer[end:end + len(meta)] = np.frombuffer(meta, dtype=np.uint8)
    size = end + len(meta)
    crc = shard_checksum(buffer[HEADER_BYTES:size])
    header = _HEADER.pack(MAGIC, VERSION, payload_len, len(meta), crc)
    buffer[:len(header)] = np.frombuffer(header, dtype=np.uint8)
    buffer[len(header):HEADER_BYTES] = 0
    return size


def blob_checksum(buffer: np.ndarray) -> int:
    """CRC-32 of a whole blob written by `write_header` (header + payload + meta), from the header's
    CRC of payload + meta: reads 32 bytes instead of the blob."""
    _magic, _version, payload_len, meta_len, crc = _HEADER.unpack(buffer[:_HEADER.size].tobytes())
    return crc32_combine(shard_checksum(buffer[:HEADER_BYTES]), crc, payload_len + meta_len)


def read_blob(buffer: np.ndarray | bytes | memoryview) -> tuple[dict[str, Any], np.ndarray]:
    """Parses and verifies a blob. Returns (meta, payload view)."""
    array = np.frombuffer(buffer, dtype=np.uint8) if not isinstance(buffer, np.ndarray) else buffer
    if len(array) < HEADER_BYTES:
        raise BlobFormatError(f"snapshot blob too short ({len(array)} bytes)")
    magic, version, payload_len, meta_len, crc = _HEADER.unpack(array[:_HEADER.size].tobytes())
    if magic != MAGIC:
        raise BlobFormatError("not an ftrain snapshot blob (bad magic)")
    if version != VERSION:
        raise BlobFormatError(f"snapshot blob version {version}; this ftrain reads version {VERSION}")
    size = HEADER_BYTES + payload_len + meta_len
    if len(array) < size:
        raise BlobFormatError(f"snapshot blob truncated: {len(array)} of {size} bytes")
    if shard_checksum(array[HEADER_BYTES:size]) != crc:
        raise BlobFormatError("snapshot blob checksum mismatch (corrupted)")
    meta = pickle.loads(array[HEADER_BYTES + payload_len:size].tobytes())
    return meta, array[HEADER_BYTES:HEADER_BYTES + payload_len]


def assemble(total: int, pieces: Iterable[tuple[int, np.ndarray]]) -> torch.Tensor:
    """Builds the full flat replicated state from (offset, bytes) slices; checks full coverage."""
    flat = torch.empty(total, dtype=torch.uint8)
    covered = 0
    for offset, data in pieces:
        if len(data):
            flat[offset:offset + len(data)].copy_(torch.from_numpy(np.ascontiguousarray(data)))
            covered += len(data)
    if covered != total:
        raise BlobFormatError(f"snapshot slices cover {covered} of {total} bytes: a rank's blob is missing")
    return flat


def state_views(meta: dict[str, Any], pieces: Iterable[tuple[int, np.ndarray]]) -> dict[str, torch.Tensor]:
    """The named tensors of a snapshot whose blobs' meta is `meta` (its "layout" and "total"), put
    together from their (offset, payload) pieces: one piece at 0 for a rank's whole own state."""
    return tensors_from_flat(layout_of(meta), assemble(meta["total"], pieces))


def layout_of(meta: dict[str, Any]) -> StateLayout:
    """The state layout a blob's meta records."""
    return StateLayout(tuple(TensorEntry(*e) for e in meta["layout"]), meta["total"])
