"""Benchmark: RS(k, m) erasure coding throughput of ftrain's codec against memcpy and other codecs.

Prints encode/decode GB/s (1 GB = 1e9 bytes of *data*, i.e. the k data shards) for
``ftrain.snapshot.erasure.ReedSolomon`` on every available backend, next to a memcpy of the
same bytes (``np.copyto`` into a preallocated buffer) in the same process, zfec, pyeclib (if
installed) and reedsolo. reedsolo is pure Python and is timed on a small payload
(``--small-kib``) and extrapolated; it codes 4+2 as RSCodec(nsym=2, nsize=6) codewords, the
same redundancy with a different layout. Timing is the best of ``--repeat`` runs
(time.perf_counter) after one warm-up run; each codec run alternates with a memcpy run so that
both see the same machine load; "x memcpy" is the codec's best over memcpy's best.

    python benchmarks/erasure.py --size-mib 64 --repeat 5
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ftrain.snapshot.erasure import ReedSolomon, isal_library_path, shard_checksum  # noqa: E402


def best_of(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: page faults, table building
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=float, default=64, help="payload size in MiB (default 64)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per measurement, best kept (default 5)")
    ap.add_argument("-k", type=int, default=4, help="data shards (default 4)")
    ap.add_argument("-m", type=int, default=2, help="parity shards (default 2)")
    ap.add_argument("--small-kib", type=int, default=64, help="payload for reedsolo, extrapolated (default 64)")
    args = ap.parse_args(argv)
    k, m = args.k, args.m
    if m < 1 or m > k:
        ap.error("this benchmark erases m data shards on decode: need 1 <= m <= k")

    size = int(args.size_mib * (1 << 20)) // k * k
    length = size // k
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(k, length), dtype=np.uint8)
    gb = size / 1e9

    dst = np.empty_like(data)
    copy_times: list[float] = []

    def vs_memcpy(fn: Callable[[], object]) -> float:
        """GB/s of fn, timed alternately with memcpy runs so both see the same machine load."""
        fn()
        np.copyto(dst, data)
        best_fn = best_copy = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            np.copyto(dst, data)
            mid = time.perf_counter()
            fn()
            end = time.perf_counter()
            best_copy, best_fn = min(best_copy, mid - start), min(best_fn, end - mid)
        copy_times.append(best_copy)
        return gb / best_fn

    rows: list[tuple[str, float, float | None, str]] = []  # name, encode GB/s, decode GB/s, note
    lost = list(range(m))  # decode the worst case for a systematic code: m data shards gone
    backends = ["isal", "numpy"] if isal_library_path() else ["numpy"]
    for backend in backends:
        rs = ReedSolomon(k, m, backend=backend)
        parity = np.empty((m, length), dtype=np.uint8)
        out = np.empty((k, length), dtype=np.uint8)
        enc = vs_memcpy(lambda: rs.encode(data, out=parity))
        shards = {i: data[i] for i in range(k) if i not in lost}
        shards.update({k + r: parity[r] for r in range(m)})
        dec = vs_memcpy(lambda: rs.decode(shards, out=out))
        assert np.array_equal(out, data)
        rows.append((f"ftrain ReedSolomon backend={backend}", enc, dec, "zero-copy into preallocated out="))

    crc = vs_memcpy(lambda: shard_checksum(data))
    rows.append(("ftrain shard_checksum (CRC-32)", crc, None, "ISA-L crc32_gzip_refl" if isal_library_path() else "zlib"))

    try:
        import zfec

        blocks = tuple(bytes(data[i]) for i in range(k))
        enc_z = zfec.Encoder(k, k + m)
        parity_z: list = []
        enc = vs_memcpy(lambda: parity_z.__setitem__(slice(None), enc_z.encode(blocks, tuple(range(k, k + m)))))
        dec_z = zfec.Decoder(k, k + m)
        have = [blocks[i] for i in range(k) if i not in lost] + list(parity_z)
        nums = [i for i in range(k) if i not in lost] + list(range(k, k + m))
        dec = vs_memcpy(lambda: dec_z.decode(have, nums))
        rows.append((f"zfec {zfec.__version__}", enc, dec, "allocates its outputs"))
    except ImportError:
        rows.append(("zfec", float("nan"), None, "not installed"))

    try:
        from pyeclib.ec_iface import ECDriver

        drv = ECDriver(k=k, m=m, ec_type="isa_l_rs_cauchy")
        blob = data.tobytes()
        frags: list = []
        enc = vs_memcpy(lambda: frags.__setitem__(slice(None), drv.encode(blob)))
        keep = [f for i, f in enumerate(frags) if i not in lost]
        dec = vs_memcpy(lambda: drv.decode(keep))
        rows.append(("pyeclib isa_l_rs_cauchy (same ISA-L kernel)", enc, dec, "bytes in/out, copies"))
    except Exception as exc:  # not installed, or no ISA-L backend inside it
        rows.append(("pyeclib", float("nan"), None, f"unavailable: {type(exc).__name__}"))

    memcpy = gb / min(copy_times)
    try:
        import reedsolo

        small = bytes(rng.integers(0, 256, size=args.small_kib * 1024 // k * k, dtype=np.uint8))
        codec = reedsolo.RSCodec(nsym=m, nsize=k + m)
        reps = max(1, min(args.repeat, 2))
        encoded = codec.encode(small)
        enc_gbs = len(small) / 1e9 / best_of(lambda: codec.encode(small), reps)
        # erasure decoding is ~100x slower still: time 1/16 of the payload, whole codewords
        part = encoded[: max(1, len(small) // k // 16) * (k + m)]
        erase = [c * (k + m) + i for c in range(len(part) // (k + m)) for i in lost]
        dec_gbs = len(part) // (k + m) * k / 1e9 / best_of(
            lambda: codec.decode(part, erase_pos=erase, only_erasures=True), 1
        )
        rows.append(
            (
                f"reedsolo {importlib.metadata.version('reedsolo')} pure Python ({args.small_kib} KiB, extrapolated)",
                enc_gbs,
                dec_gbs,
                f"RSCodec(nsym={m}, nsize={k + m}); {size / (enc_gbs * 1e9):.0f} s to encode"
                f" / {size / (dec_gbs * 1e9):.0f} s to decode {args.size_mib:g} MiB",
            )
        )
    except ImportError:
        rows.append(("reedsolo", float("nan"), None, "not installed"))

    print(f"# RS({k},{m}) on {size / (1 << 20):.0f} MiB of data, best of {args.repeat}")
    print(f"# python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, ISA-L: {isal_library_path() or 'absent'}")
    print()
    print(f"memcpy (np.copyto of the same {size / (1 << 20):.0f} MiB into a preallocated buffer): best {memcpy:.3g} GB/s;")
    print("codec runs alternate with memcpy runs; 'x memcpy' = codec best / memcpy best (GB/s of data).")
    print()
    print("| codec | encode GB/s | x memcpy | decode GB/s | x memcpy | note |")
    print("|---|---:|---:|---:|---:|---|")
    for name, enc, dec, note in rows:
        dec_s = " | " if dec is None else f"{dec:.3g} | {dec / memcpy:.3g}"
        print(f"| {name} | {enc:.3g} | {enc / memcpy:.3g} | {dec_s} | {note} |")
    print()
    print(f"decode = rebuild the {k} data rows after losing data shards {lost} (reads {m} parity shards)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
