"""Erasure codec for in-memory snapshot shards: systematic Reed-Solomon RS(k, m) over GF(2^8).

Role in ftrain: every captured snapshot blob is cut into ``k`` equal data shards
(:func:`split_blob`), :meth:`ReedSolomon.encode` adds ``m`` parity shards, and the ``k + m``
shards are spread over distinct peer nodes (see :mod:`ftrain.snapshot.placement`). Any ``k`` of
them rebuild the blob (:meth:`ReedSolomon.decode`, then :func:`join_blob`).

The code is fixed so that shards written by one backend decode with the other:

* field GF(2^8) with polynomial ``0x11d`` (ISA-L's field), generator 2;
* generator matrix ``[I_k; C]`` where ``C[r, j] = 1 / ((k + r) XOR j)`` is ISA-L's
  ``gf_gen_cauchy1_matrix``; every k x k sub-matrix of a Cauchy-extended identity is
  invertible, so *any* k of the k + m shards decode.

Backends (``ReedSolomon.backend``):

* ``"isal"``: Intel ISA-L (``ec_init_tables`` / ``ec_encode_data``) called through ctypes on
  the caller's numpy buffers, zero-copy (about memcpy speed; the call releases the GIL).
* ``"numpy"``: vectorised fallback using per-coefficient 16-bit lookup tables, processed in
  column chunks of 256 KiB per row so temporaries stay cache-sized; byte-identical output,
  about 1 GB/s of data for RS(4, 2) (ISA-L is 10-20x faster; ``pip install ftrain`` brings it
  with the ``pyeclib`` wheel, apt's ``libisal2`` works too).

Selection: the ``backend=`` argument, else the environment variable
``FTRAIN_EC_BACKEND=isal|numpy``, else ISA-L when it can be loaded, else numpy. The choice is
logged once per process at INFO on the ``ftrain.erasure`` logger.

ISA-L is looked for, in order, at ``$FTRAIN_ISAL_LIB`` (an explicit path), ``libisal.so.2``
(Debian/Ubuntu package ``libisal2``), ``ctypes.util.find_library("isal")``, and finally any
``libisal*.so*`` shipped inside a wheel in site-packages (the ``pyeclib`` wheel carries
``pyeclib.libs/libisal-pyeclib.so.2``).

This module does no I/O apart from loading that shared library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import logging
import os
import site
import sys
import threading
import zlib
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "ReedSolomon",
    "NotEnoughShardsError",
    "shard_checksum",
    "shard_length",
    "split_blob",
    "join_blob",
    "isal_library_path",
    "default_backend",
    "cauchy_matrix",
]

log = logging.getLogger("ftrain.erasure")

GF_POLY = 0x11D
"""Field polynomial x^8 + x^4 + x^3 + x^2 + 1, as used by ISA-L."""

MAX_SHARDS = 255
"""k + m must not exceed this (Cauchy construction over GF(2^8))."""

_BACKENDS = ("isal", "numpy")
_ENV_BACKEND = "FTRAIN_EC_BACKEND"
_ENV_LIB = "FTRAIN_ISAL_LIB"
_NP_CHUNK = 1 << 18  # bytes of each row processed per step by the numpy backend (even)
_DECODE_CHUNK = 1 << 19  # bytes of each row per ISA-L decode step (L2/L3-sized, see decode)
_ISAL_MAX_LEN = 1 << 30  # ec_encode_data takes an int length: feed it at most 1 GiB per call


class NotEnoughShardsError(ValueError):
    """Fewer than k shards were given to :meth:`ReedSolomon.decode`.

    Attributes: ``needed`` (k), ``present`` (sorted indices given), ``missing`` (sorted
    indices absent, out of ``range(k + m)``).
    """

    def __init__(self, needed: int, present: list[int], missing: list[int]) -> None:
        self.needed = needed
        self.present = present
        self.missing = missing
        super().__init__(
            f"cannot decode: need any {needed} of the {len(present) + len(missing)}"
            f" shards but only {len(present)} are present {present}; missing shard indices"
            f" {missing} (supply at least {needed - len(present)} more of them)"
        )


# --------------------------------------------------------------------------- GF(2^8) tables


def _gf_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    exp = np.zeros(512, dtype=np.uint8)
    logt = np.zeros(256, dtype=np.int32)
    x = 1
    for i in range(255):
        exp[i] = x
        logt[x] = i
        x <<= 1
        if x & 0x100:
            x ^= GF_POLY
    exp[255:510] = exp[0:255]
    mul = exp[logt[:, None] + logt[None, :]]
    mul[0, :] = 0
    mul[:, 0] = 0
    inv = np.zeros(256, dtype=np.uint8)
    inv[1:] = exp[255 - logt[1:]]
    return exp, logt, np.ascontiguousarray(mul), inv


_GF_EXP, _GF_LOG, _GF_MUL, _GF_INV = _gf_tables()
_GF_MUL.setflags(write=False)
_GF_INV.setflags(write=False)

_TABLE16: dict[int, np.ndarray] = {}


def _table16(c: int) -> np.ndarray:
    """65536-entry uint16 table multiplying both bytes of a uint16 by ``c`` (endian-neutral)."""
    t = _TABLE16.get(c)
    if t is None:
        row = _GF_MUL[c].astype(np.uint16)
        t = (row[None, :] | (row[:, None] << 8)).reshape(-1)  # index hi*256+lo
        t.setflags(write=False)
        _TABLE16[c] = t
    return t


def cauchy_matrix(k: int, m: int) -> np.ndarray:
    """The (k + m, k) generator matrix ``[I_k; C]``, identical to ISA-L's gf_gen_cauchy1_matrix."""
    a = np.zeros((k + m, k), dtype=np.uint8)
    a[:k] = np.eye(k, dtype=np.uint8)
    if m:
        i = np.arange(k, k + m)[:, None]
        j = np.arange(k)[None, :]
        a[k:] = _GF_INV[i ^ j]
    return a


def _gf_invert(mat: np.ndarray) -> np.ndarray:
    """Invert a square matrix over GF(2^8) (Gauss-Jordan, one numpy op per pivot)."""
    n = mat.shape[0]
    a = np.concatenate([mat.astype(np.uint8), np.eye(n, dtype=np.uint8)], axis=1)
    for col in range(n):
        nz = np.nonzero(a[col:, col])[0]
        if nz.size == 0:
            raise ValueError("matrix is singular over GF(2^8)")
        piv = col + int(nz[0])
        if piv != col:
            a[[col, piv]] = a[[piv, col]]
        a[col] = _GF_MUL[_GF_INV[a[col, col]], a[col]]
        factors = a[:, col].copy()
        factors[col] = 0
        a ^= _GF_MUL[factors[:, None], a[col][None, :]]
    return np.ascontiguousarray(a[:, n:])


def _np_matmul(coefs: np.ndarray, srcs: list[np.ndarray], outs: list[np.ndarray], length: int) -> None:
    """outs[i] = XOR_j coefs[i, j] * srcs[j] over GF(2^8), chunked, no per-byte Python loops."""
    rows, k = coefs.shape
    if rows == 0 or length == 0:
        return
    even = length & ~1
    tables = {int(c): _table16(int(c)) for c in np.unique(coefs) if c > 1}
    tmp = np.empty(min(_NP_CHUNK, even) // 2, dtype=np.uint16)
    for start in range(0, even, _NP_CHUNK):
        stop = min(start + _NP_CHUNK, even)
        s16 = [s[start:stop].view(np.uint16) for s in srcs]
        t = tmp[: (stop - start) // 2]
        for i in range(rows):
            acc = outs[i][start:stop].view(np.uint16)
            first = True
            for j in range(k):
                c = int(coefs[i, j])
                if c == 0:
                    continue
                if first:
                    if c == 1:
                        np.copyto(acc, s16[j])
                    else:
                        np.take(tables[c], s16[j], out=acc, mode="clip")
                    first = False
                elif c == 1:
                    np.bitwise_xor(acc, s16[j], out=acc)
                else:
                    np.take(tables[c], s16[j], out=t, mode="clip")
                    np.bitwise_xor(acc, t, out=acc)
            if first:
                acc.fill(0)
    if length & 1:
        last = np.array([int(s[length - 1]) for s in srcs], dtype=np.intp)
        vals = np.bitwise_xor.reduce(_GF_MUL[coefs, last[None, :]], axis=1)
        for i in range(rows):
            outs[i][length - 1] = vals[i]


# --------------------------------------------------------------------------- ISA-L via ctypes


class _IsaL:
    """Typed handles on the few ISA-L entry points the codec needs."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.path = path
        vp, ci = ctypes.c_void_p, ctypes.c_int
        self.ec_init_tables = lib.ec_init_tables
        self.ec_init_tables.argtypes = [ci, ci, vp, vp]
        self.ec_init_tables.restype = None
        self.ec_encode_data = lib.ec_encode_data
        self.ec_encode_data.argtypes = [ci, ci, ci, vp, vp, vp]
        self.ec_encode_data.restype = None
        self.gf_gen_cauchy1_matrix = lib.gf_gen_cauchy1_matrix
        self.gf_gen_cauchy1_matrix.argtypes = [vp, ci, ci]
        self.gf_gen_cauchy1_matrix.restype = None
        self.gf_invert_matrix = lib.gf_invert_matrix
        self.gf_invert_matrix.argtypes = [vp, vp, ci]
        self.gf_invert_matrix.restype = ci
        self.crc32_gzip_refl: Any = getattr(lib, "crc32_gzip_refl", None)
        if self.crc32_gzip_refl is not None:
            self.crc32_gzip_refl.argtypes = [ctypes.c_uint32, vp, ctypes.c_uint64]
            self.crc32_gzip_refl.restype = ctypes.c_uint32

    def cauchy(self, k: int, m: int) -> np.ndarray:
        a = np.zeros((k + m, k), dtype=np.uint8)
        self.gf_gen_cauchy1_matrix(a.ctypes.data, k + m, k)
        return a

    def invert(self, mat: np.ndarray) -> np.ndarray:
        n = mat.shape[0]
        src = np.array(mat, dtype=np.uint8, order="C")  # ISA-L destroys its input
        dst = np.zeros((n, n), dtype=np.uint8)
        if self.gf_invert_matrix(src.ctypes.data, dst.ctypes.data, n) != 0:
            raise ValueError("matrix is singular over GF(2^8)")
        return dst

    def tables(self, coefs: np.ndarray) -> np.ndarray:
        rows, k = coefs.shape
        c = np.ascontiguousarray(coefs, dtype=np.uint8)
        g = np.zeros(k * rows * 32, dtype=np.uint8)
        if rows:
            self.ec_init_tables(k, rows, c.ctypes.data, g.ctypes.data)
        return g

    def matmul(self, gftbls: np.ndarray, src_addrs: list[int], out_addrs: list[int], length: int) -> None:
        k, rows = len(src_addrs), len(out_addrs)
        if rows == 0 or length == 0:
            return
        for off in range(0, length, _ISAL_MAX_LEN):
            n = min(_ISAL_MAX_LEN, length - off)
            srcs = (ctypes.c_void_p * k)(*[a + off for a in src_addrs])
            outs = (ctypes.c_void_p * rows)(*[a + off for a in out_addrs])
            self.ec_encode_data(n, k, rows, gftbls.ctypes.data, srcs, outs)


_REQUIRED_SYMBOLS = ("ec_init_tables", "ec_encode_data", "gf_gen_cauchy1_matrix", "gf_invert_matrix")


def _wheel_candidates() -> list[str]:
    dirs: list[str] = []
    try:
        dirs.extend(site.getsitepackages())
    except AttributeError:  # some virtualenv layouts
        pass
    try:
        dirs.append(site.getusersitepackages())
    except AttributeError:
        pass
    dirs.extend(p for p in sys.path if p.endswith("-packages"))
    found: list[str] = []
    for d in dict.fromkeys(dirs):
        for pattern in ("libisal*.so*", os.path.join("*", "libisal*.so*")):
            for p in sorted(glob.glob(os.path.join(d, pattern))):
                if p not in found:
                    found.append(p)
    return found


@lru_cache(maxsize=None)
def _load_isal() -> tuple[_IsaL | None, str]:
    """Return (handles, path) or (None, why-not). Cached: the search runs once per process."""
    candidates: list[str] = []
    explicit = os.environ.get(_ENV_LIB)
    if explicit:
        candidates.append(explicit)
    candidates.append("libisal.so.2")
    found = ctypes.util.find_library("isal")
    if found:
        candidates.append(found)
    candidates.extend(_wheel_candidates())
    tried: list[str] = []
    for cand in dict.fromkeys(candidates):
        try:
            lib = ctypes.CDLL(cand)
        except OSError:
            tried.append(cand)
            continue
        if all(hasattr(lib, s) for s in _REQUIRED_SYMBOLS):
            return _IsaL(lib, cand), cand
        tried.append(f"{cand} (lacks ec_* symbols)")
    return None, "ISA-L not found (tried " + ", ".join(tried) + ")"


def isal_library_path() -> str | None:
    """Path or soname of the ISA-L library this process uses, or None when it is absent."""
    lib, path = _load_isal()
    return path if lib is not None else None


_logged: set[str] = set()
_log_lock = threading.Lock()


def _log_choice(backend: str, detail: str) -> None:
    with _log_lock:
        if backend in _logged:
            return
        _logged.add(backend)
    log.info("erasure codec backend: %s (%s)", backend, detail)


def default_backend() -> str:
    """The backend a ``ReedSolomon`` made in this process without ``backend=`` uses: ``"isal"`` or
    ``"numpy"`` (``"unavailable: ..."`` when ``$FTRAIN_EC_BACKEND`` asks for one that cannot load)."""
    try:
        return _select_backend(None)[0]
    except (RuntimeError, ValueError) as error:
        return f"unavailable: {error}"


def _select_backend(requested: str | None) -> tuple[str, _IsaL | None]:
    source = "backend= argument"
    if requested is None:
        requested = os.environ.get(_ENV_BACKEND, "").strip().lower() or None
        source = f"{_ENV_BACKEND}"
    if requested is not None and requested not in _BACKENDS:
        raise ValueError(f"{source} must be one of {_BACKENDS} (or unset for auto), got {requested!r}")
    if requested == "numpy":
        _log_choice("numpy", f"forced by {source}")
        return "numpy", None
    lib, detail = _load_isal()
    if lib is None:
        if requested == "isal":
            raise RuntimeError(
                f"{source} asks for the isal backend but {detail}; install the Debian/Ubuntu"
                f" package libisal2 (apt-get install libisal2), pip install pyeclib, or set"
                f" {_ENV_LIB}=/path/to/libisal.so.2"
            )
        _log_choice("numpy", f"{detail}; pip install pyeclib (or apt-get install libisal2) for ~10x faster coding")
        return "numpy", None
    _log_choice("isal", f"{detail}" + (f", forced by {source}" if requested else ""))
    return "isal", lib


# --------------------------------------------------------------------------- validation


def _as_shard(value: Any, name: str) -> np.ndarray:
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = np.frombuffer(value, dtype=np.uint8)
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a 1-D uint8 numpy array or bytes-like, got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise ValueError(f"{name} must have dtype uint8, got {value.dtype}; fix: pass arr.view(np.uint8)")
    if value.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {value.shape}; fix: pass arr.reshape(-1)")
    if not value.flags.c_contiguous:
        raise ValueError(f"{name} must be contiguous; fix: pass np.ascontiguousarray({name})")
    return value


def _check_out(out: Any, shape: tuple[int, int], name: str = "out") -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.uint8)
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.uint8
        or out.shape != shape
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        got = (
            f"{type(out).__name__}"
            if not isinstance(out, np.ndarray)
            else f"dtype {out.dtype}, shape {out.shape}, contiguous={out.flags.c_contiguous},"
            f" writeable={out.flags.writeable}"
        )
        raise ValueError(
            f"{name} must be a writeable C-contiguous uint8 array of shape {shape}, got {got};"
            f" fix: np.empty({shape}, dtype=np.uint8) or pass {name}=None"
        )
    return out


# --------------------------------------------------------------------------- the codec


class ReedSolomon:
    """Systematic RS(k, m) over GF(2^8): k data shards + m parity shards, any k decode.

    ``backend`` is ``"isal"``, ``"numpy"`` or None (auto: ``$FTRAIN_EC_BACKEND``, else ISA-L if
    found, else numpy). Instances are immutable apart from a small decode-matrix cache and may
    be shared between threads; ISA-L calls release the GIL.
    """

    def __init__(self, k: int, m: int, *, backend: str | None = None) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k (data shards) must be an int >= 1, got {k!r}")
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 0:
            raise ValueError(f"m (parity shards) must be an int >= 0, got {m!r}")
        if k + m > MAX_SHARDS:
            raise ValueError(f"k + m must be <= {MAX_SHARDS} over GF(2^8), got k={k}, m={m}")
        self.k = int(k)
        self.m = int(m)
        self.backend, self._isal = _select_backend(backend)
        matrix = cauchy_matrix(self.k, self.m)
        if self._isal is not None:
            lib_matrix = self._isal.cauchy(self.k, self.m)
            if not np.array_equal(lib_matrix, matrix):  # would break cross-backend decoding
                raise RuntimeError(f"ISA-L at {self._isal.path} produced an unexpected Cauchy matrix")
        matrix.setflags(write=False)
        self.matrix = matrix
        """(k + m, k) generator matrix; row i produces shard i."""
        self._parity = np.ascontiguousarray(matrix[self.k :])
        self._gftbls = self._isal.tables(self._parity) if self._isal is not None else None
        self._decode_cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray | None]] = {}
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ReedSolomon(k={self.k}, m={self.m}, backend={self.backend!r})"

    @property
    def n(self) -> int:
        """Total shards k + m."""
        return self.k + self.m

    def encode(self, data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Parity of ``data`` (uint8, shape (k, L), C-contiguous) as an (m, L) array.

        ``out``: an optional preallocated writeable C-contiguous (m, L) uint8 array that is
        filled and returned (no allocation). Shard i < k is ``data[i]``, shard k + r is
        ``parity[r]``.
        """
        if not isinstance(data, np.ndarray):
            raise ValueError(
                f"data must be a numpy uint8 array of shape (k, L) = ({self.k}, L), got"
                f" {type(data).__name__}; fix: split_blob(np.frombuffer(buf, np.uint8), {self.k})"
            )
        if data.dtype != np.uint8:
            raise ValueError(f"data must have dtype uint8, got {data.dtype}; fix: pass data.view(np.uint8)")
        if data.ndim != 2 or data.shape[0] != self.k:
            raise ValueError(
                f"data must have shape (k, L) = ({self.k}, L), got {data.shape}; fix: split_blob(blob, {self.k})"
            )
        if not data.flags.c_contiguous:
            raise ValueError("data must be C-contiguous; fix: np.ascontiguousarray(data)")
        length = data.shape[1]
        parity = _check_out(out, (self.m, length))
        if self.m == 0 or length == 0:
            return parity
        if self._isal is not None:
            assert self._gftbls is not None
            base, pbase = data.ctypes.data, parity.ctypes.data
            self._isal.matmul(
                self._gftbls,
                [base + i * length for i in range(self.k)],
                [pbase + r * length for r in range(self.m)],
                length,
            )
        else:
            _np_matmul(self._parity, list(data), list(parity), length)
        return parity

    def decode(self, shards: Mapping[int, Any], out: np.ndarray | None = None) -> np.ndarray:
        """Rebuild the (k, L) data rows from any k of the k + m shards.

        ``shards`` maps shard index (0..k+m-1; data shards are 0..k-1) to a 1-D uint8 array
        (or bytes-like) of length L. Extra shards are ignored (data shards preferred). When
        every data shard is present this is a plain copy. ``out``: optional preallocated
        writeable C-contiguous (k, L) uint8 array; it must not overlap any given shard except
        that ``out[i]`` may be shard i itself. Raises :class:`NotEnoughShardsError` with fewer
        than k shards.
        """
        if not isinstance(shards, Mapping):
            raise ValueError(
                f"shards must be a mapping {{shard index: 1-D uint8 array}}, got {type(shards).__name__}"
            )
        n = self.n
        arrays: dict[int, np.ndarray] = {}
        length = -1
        for idx, value in shards.items():
            if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or not 0 <= idx < n:
                raise ValueError(f"shard index {idx!r} is out of range: indices are 0..{n - 1} for k={self.k}, m={self.m}")
            arr = _as_shard(value, f"shards[{int(idx)}]")
            if length < 0:
                length = arr.shape[0]
            elif arr.shape[0] != length:
                raise ValueError(
                    f"shards[{int(idx)}] has length {arr.shape[0]} but other shards have length {length};"
                    " all shards of one blob must be the same length"
                )
            arrays[int(idx)] = arr
        present = sorted(arrays)
        if len(present) < self.k:
            missing = [i for i in range(n) if i not in arrays]
            raise NotEnoughShardsError(self.k, present, missing)
        result = _check_out(out, (self.k, length))
        chosen = tuple(present[: self.k])  # all present data shards come first
        lost = [i for i in range(self.k) if i not in arrays]
        kept = [i for i in range(self.k) if i in arrays]
        if lost and length:
            coefs, gftbls = self._decode_matrix(chosen)
            srcs = [arrays[i] for i in chosen]
            if self._isal is not None:
                assert gftbls is not None
                # Column chunks: copying the surviving data rows right after ISA-L has read the
                # same chunk of them hits cache, saving one DRAM pass over those rows.
                rbase = result.ctypes.data
                src_addrs = [s.ctypes.data for s in srcs]
                for start in range(0, length, _DECODE_CHUNK):
                    stop = min(start + _DECODE_CHUNK, length)
                    self._isal.matmul(
                        gftbls,
                        [a + start for a in src_addrs],
                        [rbase + i * length + start for i in lost],
                        stop - start,
                    )
                    for i in kept:
                        np.copyto(result[i, start:stop], arrays[i][start:stop])
                return result
            _np_matmul(coefs, srcs, [result[i] for i in lost], length)
        for i in kept:
            np.copyto(result[i], arrays[i])
        return result

    def _decode_matrix(self, chosen: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        cached = self._decode_cache.get(chosen)
        if cached is not None:
            return cached
        sub = self.matrix[list(chosen)]
        inv = self._isal.invert(sub) if self._isal is not None else _gf_invert(sub)
        lost = [i for i in range(self.k) if i not in chosen]
        coefs = np.ascontiguousarray(inv[lost])
        entry = (coefs, self._isal.tables(coefs) if self._isal is not None else None)
        with self._cache_lock:
            if len(self._decode_cache) >= 256:
                self._decode_cache.clear()
            self._decode_cache[chosen] = entry
        return entry


# --------------------------------------------------------------------------- blob helpers


def shard_length(size: int, k: int, align: int = 64) -> int:
    """Shard length L for a blob of ``size`` bytes: ceil(size / k) rounded up to ``align``.

    Rounding to 64 bytes keeps every shard row cache-line aligned relative to the buffer
    start (ISA-L's AVX-512 kernels work on 64-byte vectors) at a cost of < 64 * k padding bytes.
    """
    if size < 0 or k < 1 or align < 1:
        raise ValueError(f"need size >= 0, k >= 1, align >= 1; got size={size}, k={k}, align={align}")
    per = -(-size // k)
    return -(-per // align) * align


def split_blob(blob: Any, k: int, *, align: int = 64, out: np.ndarray | None = None) -> np.ndarray:
    """View or copy a byte blob as (k, L) zero-padded data rows, L = :func:`shard_length`.

    ``blob`` is a contiguous 1-D uint8 array or bytes-like. When its size is already exactly
    k * L (and no ``out`` is given) the result is a zero-copy view of it; otherwise the bytes are
    copied into ``out`` (a preallocated (k, L) uint8 array) or a new array and the tail is
    zero-filled. Keep the blob's size to undo this with :func:`join_blob`.
    """
    arr = _as_shard(blob, "blob")
    size = arr.shape[0]
    length = shard_length(size, k, align)
    if out is None and size == k * length:
        return arr.reshape(k, length)
    rows = _check_out(out, (k, length))
    flat = rows.reshape(-1)
    flat[:size] = arr
    flat[size:] = 0
    return rows


def join_blob(data_rows: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` bytes of the (k, L) data rows as a 1-D uint8 array (a view when contiguous)."""
    if not isinstance(data_rows, np.ndarray) or data_rows.dtype != np.uint8 or data_rows.ndim != 2:
        raise ValueError("data_rows must be a 2-D uint8 numpy array of shape (k, L), e.g. ReedSolomon.decode()'s result")
    if not 0 <= size <= data_rows.size:
        raise ValueError(f"size must be in 0..{data_rows.size} (k * L) for data_rows of shape {data_rows.shape}, got {size}")
    return data_rows.reshape(-1)[:size]


def shard_checksum(buf: Any, value: int = 0) -> int:
    """CRC-32 of a contiguous buffer, equal to ``zlib.crc32(buf, value)``.

    Uses ISA-L's ``crc32_gzip_refl`` (PCLMUL/VPCLMUL, ~30-50 GB/s measured) when ISA-L is
    loaded, and ``zlib.crc32`` when it is absent or ``FTRAIN_EC_BACKEND=numpy`` (about 4 GB/s on
    the 2-vCPU Zen5 dev machine: ~16 ms per 64 MiB). Both give the same value.
    ``value`` continues a running CRC, so a shard streamed in chunks can be checked piecewise.
    """
    mv = memoryview(buf)
    if not mv.c_contiguous:
        raise ValueError("buf must be C-contiguous; fix: pass np.ascontiguousarray(buf)")
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    if mv.nbytes == 0:
        return value & 0xFFFFFFFF
    if os.environ.get(_ENV_BACKEND, "").strip().lower() != "numpy":
        lib, _ = _load_isal()
        if lib is not None and lib.crc32_gzip_refl is not None:
            addr = np.frombuffer(mv, dtype=np.uint8).ctypes.data
            return int(lib.crc32_gzip_refl(value & 0xFFFFFFFF, addr, mv.nbytes))
    return zlib.crc32(mv, value) & 0xFFFFFFFF


_CRC_POLY = 0xEDB88320  # CRC-32 (zlib, gzip), reflected


def _crc_multiply(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (reflected bit order), as zlib's multmodp."""
    m, product = 1 << 31, 0
    while True:
        if a & m:
            product ^= b
            if a & (m - 1) == 0:
                return product
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^n) modulo the polynomial, n = 0..31
for _ in range(31):
    _X2N.append(_crc_multiply(_X2N[-1], _X2N[-1]))


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A + B from crc(A), crc(B) and len(B), without reading the bytes (zlib's
    crc32_combine; about 32 * log2(len2) integer steps)."""
    factor, n, k = 1 << 31, len2, 3  # x^(8 * len2) modulo the polynomial
    while n:
        if n & 1:
            factor = _crc_multiply(_X2N[k & 31], factor)
        n >>= 1
        k += 1
    return _crc_multiply(factor, crc1 & 0xFFFFFFFF) ^ (crc2 & 0xFFFFFFFF)


@lru_cache(maxsize=64)
def codec(k: int, m: int) -> ReedSolomon:
    """The process's codec for RS(k, m): its tables are built once (a ReedSolomon is thread-safe)."""
    return ReedSolomon(k, m)
