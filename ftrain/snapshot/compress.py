"""Optional snapshot compression (`--compress zstd`): byte-shuffle, then zstd level 1.

Shuffling groups the k-th byte of every 4-byte word together (exponents with exponents), which
is what makes float training state compressible at all (measured in benchmarks/compression.py:
fp32 Adam state barely shrinks unshuffled). It only pays when the network is slower than the
compressor (about 1 GB/s per core) or for bf16 / sparse data, so it is off by default.
"""
from __future__ import annotations

import numpy as np

CODECS = ("none", "zstd")
_WORD = 4


def shuffle(data: np.ndarray) -> np.ndarray:
    """Byte-shuffles the whole 4-byte words of a uint8 array; the tail bytes stay in place."""
    whole = len(data) // _WORD * _WORD
    out = np.empty_like(data)
    out[:whole] = data[:whole].reshape(-1, _WORD).T.reshape(-1)
    out[whole:] = data[whole:]
    return out


def unshuffle(data: np.ndarray) -> np.ndarray:
    whole = len(data) // _WORD * _WORD
    out = np.empty_like(data)
    out[:whole] = data[:whole].reshape(_WORD, -1).T.reshape(-1)
    out[whole:] = data[whole:]
    return out


def _zstd():  # imported lazily: only jobs that ask for compression need the package
    try:
        import zstandard
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError("--compress zstd needs the 'zstandard' package: pip install zstandard") from error
    return zstandard


def compress(data: np.ndarray, level: int = 1) -> np.ndarray:
    packed = _zstd().ZstdCompressor(level=level).compress(shuffle(data).data)
    return np.frombuffer(packed, dtype=np.uint8)


def decompress(data: np.ndarray, size: int) -> np.ndarray:
    raw = _zstd().ZstdDecompressor().decompress(np.ascontiguousarray(data).data, max_output_size=size)
    if len(raw) != size:
        raise ValueError(f"decompressed {len(raw)} bytes, expected {size}")
    return unshuffle(np.frombuffer(raw, dtype=np.uint8))
