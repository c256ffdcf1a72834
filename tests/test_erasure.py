"""Tests for ftrain.snapshot.erasure: round trips, backend equivalence, reedsolo oracle, errors."""

from __future__ import annotations

import logging
import zlib

import numpy as np
import pytest
import reedsolo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftrain.snapshot import erasure
from ftrain.snapshot.erasure import (
    NotEnoughShardsError,
    ReedSolomon,
    isal_library_path,
    join_blob,
    shard_checksum,
    shard_length,
    split_blob,
)

HAVE_ISAL = isal_library_path() is not None
BACKENDS = ["numpy"] + (["isal"] if HAVE_ISAL else [])
needs_isal = pytest.mark.skipif(not HAVE_ISAL, reason="ISA-L not installed (apt-get install libisal2)")

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTRAIN_EC_BACKEND", raising=False)


def _codec(k: int, m: int, backend: str, _cache: dict = {}) -> ReedSolomon:  # noqa: B006
    key = (k, m, backend)
    if key not in _cache:
        _cache[key] = ReedSolomon(k, m, backend=backend)
    return _cache[key]


def _data(k: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(k, length), dtype=np.uint8)


def _all_shards(data: np.ndarray, parity: np.ndarray) -> dict[int, np.ndarray]:
    k = data.shape[0]
    shards = {i: data[i] for i in range(k)}
    shards.update({k + r: parity[r] for r in range(parity.shape[0])})
    return shards


# --------------------------------------------------------------------------- round trips


@st.composite
def _case(draw: st.DrawFn) -> tuple[int, int, int, int, list[int]]:
    k = draw(st.integers(1, 10))
    m = draw(st.integers(0, 4))
    length = draw(st.integers(0, 700))
    seed = draw(st.integers(0, 2**32 - 1))
    erased = draw(st.lists(st.integers(0, k + m - 1), unique=True, max_size=m))
    return k, m, length, seed, erased


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(case=_case())
def test_decode_recovers_any_erasure_set(backend: str, case: tuple[int, int, int, int, list[int]]) -> None:
    k, m, length, seed, erased = case
    rs = _codec(k, m, backend)
    data = _data(k, length, seed)
    parity = rs.encode(data)
    assert parity.shape == (m, length) and parity.dtype == np.uint8
    shards = {i: s.copy() for i, s in _all_shards(data, parity).items() if i not in erased}
    np.testing.assert_array_equal(rs.decode(shards), data)
    out = np.full((k, length), 0xAB, dtype=np.uint8)
    assert rs.decode(shards, out=out) is out
    np.testing.assert_array_equal(out, data)


@pytest.mark.parametrize("backend", BACKENDS)
@FAST
@given(blob=st.binary(max_size=3000), k=st.integers(1, 8), m=st.integers(0, 3), data=st.data())
def test_blob_round_trip(backend: str, blob: bytes, k: int, m: int, data: st.DataObject) -> None:
    rs = _codec(k, m, backend)
    rows = split_blob(blob, k)
    parity = rs.encode(rows)
    keep = data.draw(st.permutations(range(k + m)))[:k]
    shards = {i: (rows[i] if i < k else parity[i - k]).tobytes() for i in keep}
    assert join_blob(rs.decode(shards), len(blob)).tobytes() == blob


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("length", [0, 1, 2, 3, 63, 65, 2 * (1 << 18) + 3])
def test_lengths_and_chunk_boundaries(backend: str, length: int) -> None:
    rs = _codec(3, 2, backend)
    data = _data(3, length, length)
    parity = rs.encode(data)
    np.testing.assert_array_equal(rs.decode({1: data[1], 3: parity[0], 4: parity[1]}), data)


@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_out_is_filled_and_returned(backend: str) -> None:
    rs = _codec(4, 2, backend)
    data = _data(4, 1001, 7)
    out = np.full((2, 1001), 0x55, dtype=np.uint8)
    assert rs.encode(data, out=out) is out
    np.testing.assert_array_equal(out, rs.encode(data))


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_with_all_data_present_is_a_copy(backend: str) -> None:
    rs = _codec(4, 2, backend)
    data = _data(4, 257, 3)
    parity = rs.encode(data)
    shards = _all_shards(data, parity)
    shards[4] = np.zeros(257, dtype=np.uint8)  # garbage parity must not be read
    result = rs.decode(shards)
    np.testing.assert_array_equal(result, data)
    assert not np.shares_memory(result, data)
    assert rs.decode({i: data[i] for i in range(4)}, out=data) is data  # in-place is allowed


def test_m_zero_and_k_one() -> None:
    for backend in BACKENDS:
        data = _data(1, 50, 1)
        rs = ReedSolomon(1, 3, backend=backend)
        parity = rs.encode(data)
        for r in range(3):  # k = 1: any single shard, data or parity, rebuilds the data
            np.testing.assert_array_equal(rs.decode({1 + r: parity[r]}), data)
        assert ReedSolomon(5, 0, backend=backend).encode(_data(5, 9, 2)).shape == (0, 9)


# --------------------------------------------------------------------------- backend equivalence


@needs_isal
@FAST
@given(k=st.integers(1, 12), m=st.integers(0, 6), length=st.integers(0, 2000), seed=st.integers(0, 2**32 - 1))
def test_isal_and_numpy_parity_identical(k: int, m: int, length: int, seed: int) -> None:
    data = _data(k, length, seed)
    np.testing.assert_array_equal(_codec(k, m, "isal").encode(data), _codec(k, m, "numpy").encode(data))


@needs_isal
def test_isal_and_numpy_cross_decode_large() -> None:
    data = _data(4, (1 << 19) + 77, 11)
    parity = _codec(4, 2, "isal").encode(data)
    np.testing.assert_array_equal(parity, _codec(4, 2, "numpy").encode(data))
    shards = {0: data[0], 3: data[3], 4: parity[0], 5: parity[1]}
    np.testing.assert_array_equal(_codec(4, 2, "numpy").decode(shards), data)
    np.testing.assert_array_equal(_codec(4, 2, "isal").decode(shards), data)


@needs_isal
def test_cauchy_matrix_matches_isal() -> None:
    lib, _ = erasure._load_isal()
    assert lib is not None
    for k, m in [(1, 0), (4, 2), (10, 4), (200, 55)]:
        np.testing.assert_array_equal(lib.cauchy(k, m), erasure.cauchy_matrix(k, m))


def test_wheel_copy_of_isal_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    wheel_libs = erasure._wheel_candidates()
    if not wheel_libs:
        pytest.skip("no libisal*.so* inside site-packages (pip install pyeclib ships one)")
    monkeypatch.setenv("FTRAIN_ISAL_LIB", wheel_libs[0])
    erasure._load_isal.cache_clear()
    try:
        assert isal_library_path() == wheel_libs[0]
        data = _data(4, 999, 5)
        rs = ReedSolomon(4, 2, backend="isal")
        np.testing.assert_array_equal(rs.encode(data), _codec(4, 2, "numpy").encode(data))
    finally:
        monkeypatch.delenv("FTRAIN_ISAL_LIB")
        erasure._load_isal.cache_clear()


# --------------------------------------------------------------------------- independent oracle


def _reedsolo_parity(data: np.ndarray, m: int) -> np.ndarray:
    """Systematic Cauchy RS parity computed only with reedsolo's GF(2^8) (prim 0x11d)."""
    reedsolo.init_tables(prim=0x11D, generator=2, c_exp=8)
    k, length = data.shape
    parity = np.zeros((m, length), dtype=np.uint8)
    for r in range(m):
        for j in range(k):
            coef = reedsolo.gf_inverse((k + r) ^ j)
            assert reedsolo.gf_mult_noLUT(coef, (k + r) ^ j, prim=0x11D) == 1
            for x in range(length):
                prod = reedsolo.gf_mul(coef, int(data[j, x]))
                assert prod == reedsolo.gf_mult_noLUT(coef, int(data[j, x]), prim=0x11D)
                parity[r, x] ^= prod
    return parity


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k,m,length", [(1, 1, 5), (4, 2, 37), (3, 4, 16), (10, 4, 9), (6, 3, 0)])
def test_parity_matches_reedsolo_oracle(backend: str, k: int, m: int, length: int) -> None:
    data = _data(k, length, k * 100 + m)
    np.testing.assert_array_equal(_codec(k, m, backend).encode(data), _reedsolo_parity(data, m))


def test_numpy_field_tables_match_reedsolo() -> None:
    reedsolo.init_tables(prim=0x11D, generator=2, c_exp=8)
    rng = np.random.default_rng(0)
    for a, b in rng.integers(0, 256, size=(500, 2)):
        assert erasure._GF_MUL[a, b] == reedsolo.gf_mult_noLUT(int(a), int(b), prim=0x11D)
    for a in range(1, 256):
        assert erasure._GF_INV[a] == reedsolo.gf_inverse(a)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "k,m,match",
    [(0, 2, "k"), (4, -1, "m"), (200, 56, "k \\+ m"), (True, 1, "k"), (2.0, 1, "k"), (3, None, "m")],
)
def test_bad_parameters(k: object, m: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ReedSolomon(k, m)  # type: ignore[arg-type]


def test_encode_validation() -> None:
    rs = _codec(4, 2, "numpy")
    good = _data(4, 10, 0)
    with pytest.raises(ValueError, match="dtype uint8"):
        rs.encode(good.astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(k, L\) = \(4, L\)"):
        rs.encode(good[:3])
    with pytest.raises(ValueError, match=r"shape \(k, L\)"):
        rs.encode(good.reshape(-1))
    with pytest.raises(ValueError, match="C-contiguous"):
        rs.encode(_data(4, 20, 0)[:, ::2])
    with pytest.raises(ValueError, match="numpy uint8 array"):
        rs.encode(good.tolist())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"out must be .* shape \(2, 10\)"):
        rs.encode(good, out=np.empty((2, 11), dtype=np.uint8))
    with pytest.raises(ValueError, match="out must be"):
        rs.encode(good, out=np.empty((2, 10), dtype=np.int16))
    ro = np.empty((2, 10), dtype=np.uint8)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        rs.encode(good, out=ro)


@pytest.mark.parametrize("backend", BACKENDS)
def test_not_enough_shards(backend: str) -> None:
    rs = _codec(4, 2, backend)
    data = _data(4, 8, 0)
    parity = rs.encode(data)
    with pytest.raises(NotEnoughShardsError) as info:
        rs.decode({0: data[0], 2: data[2], 5: parity[1]})
    err = info.value
    assert isinstance(err, ValueError)
    assert err.missing == [1, 3, 4] and err.present == [0, 2, 5] and err.needed == 4
    assert "[1, 3, 4]" in str(err) and "need any 4 of the 6" in str(err)
    with pytest.raises(NotEnoughShardsError, match=r"missing shard indices \[0, 1, 2, 3, 4, 5\]"):
        rs.decode({})


def test_decode_validation() -> None:
    rs = _codec(4, 2, "numpy")
    s = np.zeros(8, dtype=np.uint8)
    with pytest.raises(ValueError, match="out of range"):
        rs.decode({0: s, 1: s, 2: s, 6: s})
    with pytest.raises(ValueError, match="out of range"):
        rs.decode({0: s, 1: s, 2: s, -1: s})
    with pytest.raises(ValueError, match=r"shards\[2\] has length 9"):
        rs.decode({0: s, 1: s, 2: np.zeros(9, np.uint8), 3: s})
    with pytest.raises(ValueError, match=r"shards\[1\] must have dtype uint8"):
        rs.decode({0: s, 1: s.astype(np.int32), 2: s, 3: s})
    with pytest.raises(ValueError, match=r"shards\[1\] must be 1-D"):
        rs.decode({0: s, 1: s.reshape(2, 4), 2: s, 3: s})
    with pytest.raises(ValueError, match="mapping"):
        rs.decode([s, s, s, s])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"out must be .* shape \(4, 8\)"):
        rs.decode({0: s, 1: s, 2: s, 3: s}, out=np.empty((4, 9), dtype=np.uint8))


# --------------------------------------------------------------------------- backend selection


def test_env_forces_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTRAIN_EC_BACKEND", "numpy")
    assert ReedSolomon(4, 2).backend == "numpy"
    monkeypatch.setenv("FTRAIN_EC_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FTRAIN_EC_BACKEND"):
        ReedSolomon(4, 2)


def test_auto_prefers_isal() -> None:
    assert ReedSolomon(4, 2).backend == ("isal" if HAVE_ISAL else "numpy")


def test_forced_isal_without_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(erasure, "_load_isal", lambda: (None, "ISA-L not found (tried nothing)"))
    monkeypatch.setattr(erasure, "_logged", set())
    with pytest.raises(RuntimeError, match="libisal2"):
        ReedSolomon(4, 2, backend="isal")
    monkeypatch.setenv("FTRAIN_EC_BACKEND", "isal")
    with pytest.raises(RuntimeError, match="FTRAIN_EC_BACKEND"):
        ReedSolomon(4, 2)
    monkeypatch.delenv("FTRAIN_EC_BACKEND")
    assert ReedSolomon(4, 2).backend == "numpy"


def test_backend_logged_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(erasure, "_logged", set())
    with caplog.at_level(logging.INFO, logger="ftrain.erasure"):
        for _ in range(3):
            ReedSolomon(4, 2)
    records = [r for r in caplog.records if r.name == "ftrain.erasure"]
    assert len(records) == 1 and "backend" in records[0].getMessage()


# --------------------------------------------------------------------------- helpers


@settings(max_examples=100, deadline=None)
@given(size=st.integers(0, 5000), k=st.integers(1, 12))
def test_split_blob_layout(size: int, k: int) -> None:
    blob = np.arange(size, dtype=np.uint8)
    rows = split_blob(blob, k)
    length = shard_length(size, k)
    assert rows.shape == (k, length) and length % 64 == 0
    assert length * k >= size and (length == 0 or length - 64 < -(-size // k))
    assert not rows.reshape(-1)[size:].any()
    np.testing.assert_array_equal(join_blob(rows, size), blob)


def test_split_blob_zero_copy_and_out() -> None:
    blob = np.arange(4 * 128, dtype=np.uint8)
    assert np.shares_memory(split_blob(blob, 4), blob)
    out = np.full((4, 64), 7, dtype=np.uint8)
    assert split_blob(b"abc", 4, out=out) is out
    assert out.reshape(-1)[:3].tobytes() == b"abc" and not out.reshape(-1)[3:].any()
    with pytest.raises(ValueError, match="out must be"):
        split_blob(b"abc", 4, out=np.empty((4, 63), dtype=np.uint8))
    with pytest.raises(ValueError, match="size must be"):
        join_blob(out, 4 * 64 + 1)


@settings(max_examples=50, deadline=None)
@given(payload=st.binary(max_size=4096), cut=st.integers(0, 4096))
def test_shard_checksum_is_zlib_crc32(payload: bytes, cut: int) -> None:
    cut = min(cut, len(payload))
    assert shard_checksum(payload) == zlib.crc32(payload)
    assert shard_checksum(payload[cut:], shard_checksum(payload[:cut])) == zlib.crc32(payload)
    assert shard_checksum(np.frombuffer(payload, np.uint8)) == zlib.crc32(payload)


def test_shard_checksum_other_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    arr = np.linspace(0, 1, 1000, dtype=np.float32)
    assert shard_checksum(arr) == zlib.crc32(arr.tobytes())
    big = _data(1, (1 << 20) + 3, 9)[0]
    expected = zlib.crc32(big)
    assert shard_checksum(big) == expected
    monkeypatch.setenv("FTRAIN_EC_BACKEND", "numpy")  # zlib path
    assert shard_checksum(big) == expected
    with pytest.raises(ValueError, match="contiguous"):
        shard_checksum(big[::2])


@settings(max_examples=60, deadline=None)
@given(a=st.binary(max_size=300), b=st.binary(max_size=3000), seed=st.integers(0, 2**32 - 1))
def test_crc32_combine_equals_the_crc_of_the_concatenation(a: bytes, b: bytes, seed: int) -> None:
    assert erasure.crc32_combine(zlib.crc32(a, seed), zlib.crc32(b), len(b)) == zlib.crc32(a + b, seed)


def test_crc32_combine_over_a_long_second_part() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.bytes(32), rng.bytes((10 << 20) + 17)
    assert erasure.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
