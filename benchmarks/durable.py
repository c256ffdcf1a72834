"""The durable checkpoint tier: what it costs the training loop, and how fast it writes.

(a) Step time with the durable tier on vs off. The MLP + Adam loop of
    benchmarks/step_overhead_job.py runs under `ftrain launch --nodes N` with a snapshot every
    step in both runs. "on" adds `--checkpoint-dir TMP --checkpoint-every K --events-file FILE`,
    so the agents write every K-th committed snapshot to disk in the background, with
    `--checkpoint-dcp-every D` for each D of --dcp-every (the DCP copy on every D-th checkpoint;
    0: none), one "on" run per D. For each state
    size it prints the step time of each run (the job's `step_s`: the mean wall time per step
    after its warm-up steps) and the ratio on/off. From the events file it prints how many
    checkpoints completed, how many were skipped because the previous one was still being
    written ("busy"), how many failed, and the mean seconds and MiB/s of the completed ones
    (bytes / seconds of each `checkpoint` event: from the commit of the step to the rename of its
    directory, so the shards' rebuild and the fsyncs are included).
(b) Write throughput of the same state, in this one process: the job's model + Adam state (after
    one step, so the moments exist), written with
      - torch.save(state_dict, file) + fsync of the file;
      - torch.distributed.checkpoint.async_save (DCP, FileSystemWriter with its default fsync) in
        a 1-rank gloo group on 127.0.0.1, timed from the call until its future completes (the
        time until the call returns, the staging copy, is printed beside it);
      - ftrain's writer: ftrain.snapshot.durable.write_part (temporary name, fsync, rename,
        CRC-32) of one uint8 blob holding the same bytes, then finalize (manifest, fsyncs,
        rename), as an agent does for a 1-rank checkpoint (without the rebuild from shards).
    Median of --repeat writes each; ratios are throughput / torch.save's. Everything is written
    under a temporary directory in /tmp, removed at the end.

Runs alternate in --rounds in this one invocation; figures are medians over the rounds.

Usage: python benchmarks/durable.py [--nodes 3] [--state-mib 20 400] [--rounds 1]
                                    [--checkpoint-every 10] [--dcp-every 1 ...] [--steps 0] [--repeat 3]
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from jobs import free_port, run_for
from step_overhead_job import batch, build_model
from torch import nn

JOB = str(Path(__file__).resolve().parent / "step_overhead_job.py")
ROOT = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, ROOT)

from ftrain.snapshot import durable  # noqa: E402 (after the sys.path line above)

MIB = 2**20


# -- (a) step time with the durable tier on / off ------------------------------------------------
def job_steps(mib: float, steps: int) -> tuple[int, int]:
    if steps:
        return steps, 5 if mib <= 64 else 4
    return (100, 5) if mib <= 64 else (60, 4)


def run_job(mib: float, args: argparse.Namespace, env: dict[str, str], workdir: str,
            dcp_every: int | None) -> tuple[float, dict]:
    """One job; dcp_every None: the durable tier off."""
    on = dcp_every is not None
    steps, warmup = job_steps(mib, args.steps)
    job = f"bench-durable-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "ftrain", "launch", "--nodes", str(args.nodes), "--job-id", job,
               "--snapshot-every", "1"]
    events = os.path.join(workdir, f"{job}.events.jsonl")
    checkpoints = os.path.join(workdir, f"{job}.checkpoints")
    if on:
        command += ["--checkpoint-dir", checkpoints, "--checkpoint-every", str(args.checkpoint_every),
                    "--checkpoint-dcp-every", str(dcp_every), "--events-file", events]
    command += ["--", JOB, "--state-mib", str(mib), "--steps", str(steps), "--warmup", str(warmup),
                "--snapshot-every", "1"]
    load = os.getloadavg()[0]
    try:
        step_s = run_for("step_s", command, env, timeout=900)
        summary = read_events(events) if on else {}
    finally:
        shutil.rmtree(checkpoints, ignore_errors=True)
    summary["load"] = load
    return step_s, summary


def read_events(path: str) -> dict:
    written, skipped, failed = [], [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["kind"] == "checkpoint":
                written.append(record)
            elif record["kind"] == "checkpoint-skipped":
                skipped.append(record)
            elif record["kind"] == "checkpoint-failed":
                failed.append(record)
    seconds = [r["seconds"] for r in written]
    rates = [r["bytes"] / MIB / r["seconds"] for r in written if r["seconds"] > 0]
    return {"written": len(written), "busy": sum(1 for r in skipped if r.get("reason") == "busy"),
            "skipped": len(skipped), "failed": len(failed),
            "failures": sorted({r.get("reason", "") for r in failed}),
            "seconds": statistics.mean(seconds) if seconds else float("nan"),
            "mib_s": statistics.mean(rates) if rates else float("nan"),
            "mib": statistics.mean(r["bytes"] for r in written) / MIB if written else float("nan"),
            "steps": [r["step"] for r in written]}


# -- (b) write throughput of the same state --------------------------------------------------------
def build_state(mib: float) -> dict:
    torch.manual_seed(0)
    model, width = build_model(mib)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = batch(0, 0, 32, width)
    nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()  # Adam's moments exist only after a step
    optimizer.zero_grad(set_to_none=True)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in tensors(v)]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in tensors(v)]
    return []


def timed_torch_save(state: dict, directory: str) -> tuple[float, float]:
    path = os.path.join(directory, "state.pt")
    began = time.perf_counter()
    with open(path, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return time.perf_counter() - began, 0.0


def timed_dcp(state: dict, directory: str) -> tuple[float, float]:
    writer = dcp.FileSystemWriter(os.path.join(directory, "dcp"))  # sync_files=True: fsyncs its files
    began = time.perf_counter()
    response = dcp.async_save(state, storage_writer=writer)
    returned = time.perf_counter() - began
    if isinstance(response, dcp.state_dict_saver.AsyncSaveResponse):
        response.upload_completion.result()
    else:
        response.result()
    return time.perf_counter() - began, returned


def timed_ftrain(blob: np.ndarray, directory: str) -> tuple[float, float]:
    began = time.perf_counter()
    name, size, crc = durable.write_part(directory, 0, 0, blob)
    manifest = {"format": durable.FORMAT, "job_id": "bench-durable", "step": 0, "generation": 0, "world_size": 1,
                "parts": [{"rank": 0, "file": name, "bytes": size, "crc32": crc}]}
    durable.finalize(directory, 0, manifest, keep=2)
    elapsed = time.perf_counter() - began
    return elapsed, 0.0


def write_throughput(mib: float, repeat: int, workdir: str) -> dict:
    state = build_state(mib)
    nbytes = sum(t.numel() * t.element_size() for t in tensors(state))
    blob = np.concatenate([t.detach().contiguous().reshape(-1).numpy().view(np.uint8) for t in tensors(state)])
    assert blob.size == nbytes
    results = {"bytes": nbytes}
    for label, write, what in (("torch.save", timed_torch_save, state), ("dcp", timed_dcp, state),
                               ("ftrain", timed_ftrain, blob)):
        times, returns = [], []
        for _ in range(repeat):
            directory = tempfile.mkdtemp(prefix=f"{label}-", dir=workdir)
            try:
                elapsed, returned = write(what, directory)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            times.append(elapsed)
            returns.append(returned)
        results[label] = (statistics.median(times), statistics.median(returns))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--state-mib", type=float, nargs="+", default=[20, 400])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--dcp-every", type=int, nargs="+", default=[1],
                        help="--checkpoint-dcp-every of the 'on' runs, one run per value (default 1)")
    parser.add_argument("--steps", type=int, default=0, help="steps per job (default: 100 at <= 64 MiB, else 60)")
    parser.add_argument("--repeat", type=int, default=3, help="writes per method in (b) (median)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTRAIN_", "TORCHFT_"))}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    workdir = tempfile.mkdtemp(prefix="ftrain-bench-durable-", dir="/tmp")
    began = time.time()
    store = None
    try:
        print(f"{args.nodes} nodes on {os.cpu_count()} CPUs, MLP + Adam, batch 32, a snapshot every step; "
              f"durable tier on = --checkpoint-every {args.checkpoint_every}; {args.rounds} round(s), medians",
              flush=True)
        variants: list[int | None] = [None, *args.dcp_every]
        label = {v: "off" if v is None else f"on, DCP every {v}" if v else "on, no DCP" for v in variants}
        jobs = {m: {v: ([], []) for v in variants} for m in args.state_mib}  # (step_s, event summaries)
        for round_ in range(args.rounds):
            for mib in args.state_mib:
                for variant in (variants if round_ % 2 == 0 else variants[::-1]):
                    step_s, summary = run_job(mib, args, env, workdir, variant)
                    jobs[mib][variant][0].append(step_s)
                    jobs[mib][variant][1].append(summary)
                    extra = (f" checkpoints {summary['written']} at steps {summary['steps']}, busy {summary['busy']}, "
                             f"failed {summary['failed']} {summary['failures'] or ''}, mean {summary['seconds']:.2f} s"
                             if variant is not None else "")
                    print(f"  round {round_ + 1} {mib:g} MiB durable {label[variant]}: step_s {step_s:.4f} "
                          f"(load avg {summary['load']:.2f} before){extra}", flush=True)
        print(f"\n(a) step time, durable tier on vs off ({time.time() - began:.0f} s so far)")
        print(f"{'state':>7} {'steps':>5} {'run':>17} {'step':>8} {'on/off':>6} {'ckpts':>5} {'busy':>4} "
              f"{'failed':>6} {'ckpt MiB':>8} {'ckpt s':>6} {'ckpt MiB/s':>10}")
        for mib in args.state_mib:
            off = statistics.median(jobs[mib][None][0])
            steps = job_steps(mib, args.steps)[0]
            for variant in variants:
                step, ev = statistics.median(jobs[mib][variant][0]), jobs[mib][variant][1]
                row = f"{mib:>5g} M {steps:>5} {label[variant]:>17} {step:>6.3f} s {step / off:>5.2f}x"
                if variant is not None:
                    done = [e for e in ev if e["written"]]

                    def mean(key: str, done: list = done) -> float:
                        return statistics.mean(e[key] for e in done) if done else float("nan")
                    row += (f" {sum(e['written'] for e in ev):>5} {sum(e['busy'] for e in ev):>4} "
                            f"{sum(e['failed'] for e in ev):>6} {mean('mib'):>8.1f} {mean('seconds'):>6.2f} "
                            f"{mean('mib_s'):>10.0f}")
                print(row, flush=True)
        if args.rounds > 1:
            print("(ckpts / busy / failed: totals over the rounds; ckpt s and MiB/s: means)")

        store = dist.TCPStore("127.0.0.1", free_port(), 1, True)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        print(f"\n(b) write throughput of the same state, one process, median of {args.repeat} "
              f"(MiB/s; x = throughput / torch.save's; dir {workdir}, ext4)")
        print(f"{'state':>7} {'torch.save+fsync':>22} {'DCP async_save':>28} {'ftrain write_part+finalize':>28}")
        for mib in args.state_mib:
            r = write_throughput(mib, args.repeat, workdir)
            n = r["bytes"] / MIB
            base = n / r["torch.save"][0]

            def cell(label: str, r: dict = r, n: float = n, base: float = base) -> str:
                seconds = r[label][0]
                return f"{seconds:.3f} s {n / seconds:5.0f} MiB/s" + ("" if label == "torch.save" else
                                                                    f" {n / seconds / base:.2f}x")
            print(f"{n:>5.0f} M {cell('torch.save'):>22} {cell('dcp'):>28} {cell('ftrain'):>28}"
                  f"   (DCP call returned after {r['dcp'][1]:.3f} s)", flush=True)
        print(f"\ntotal {time.time() - began:.0f} s")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
