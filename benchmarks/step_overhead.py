"""Steady-state step time: ftrain (snapshot every step, and off) vs torchrun + DDP vs TorchFT.

The same MLP + Adam loop (benchmarks/step_overhead_job.py, batch 32) runs with N ranks under
  - torchrun --nproc-per-node N + DistributedDataParallel (gloo)           the baseline
  - ftrain launch --nodes N, snapshot every step                           (and --snapshot-every 0)
  - TorchFT: a Rust lighthouse + N replica groups of one process each      (if torchft is importable
    by --torchft-python; skipped with a line otherwise)
at each state size (parameters + Adam moments), alternating runtimes in rounds in this one
invocation, and prints each one's median step time as a ratio of the baseline's.

Usage: python benchmarks/step_overhead.py [--ranks 3] [--state-mib 20 400] [--rounds 2]
                                          [--torchft-python /path/to/venv/bin/python]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from jobs import figure, free_port, kill_group, run_for

JOB = str(Path(__file__).resolve().parent / "step_overhead_job.py")
ROOT = str(Path(__file__).resolve().parent.parent)


def run(command: list[str], env: dict[str, str]) -> float:
    return run_for("step_s", command, env, timeout=900)


def run_torchft(python: str, ranks: int, job_args: list[str], env: dict[str, str]) -> float:
    lighthouse_bin = shutil.which("torchft_lighthouse", path=str(Path(python).parent)) or "torchft_lighthouse"
    port = free_port()
    lighthouse = subprocess.Popen([lighthouse_bin, "--min_replicas", str(ranks), "--bind", f"127.0.0.1:{port}",
                                   "--join_timeout_ms", "10000", "--quorum_tick_ms", "100"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    replicas: list[subprocess.Popen] = []
    logs = [tempfile.TemporaryFile("w+") for _ in range(ranks)]  # files, not pipes: TorchFT logs a lot
    try:
        time.sleep(0.5)
        for replica in range(ranks):
            command = [python, JOB, *job_args, "--torchft", "--replica", str(replica), "--replicas", str(ranks),
                       "--lighthouse", f"http://127.0.0.1:{port}"]
            replicas.append(subprocess.Popen(command, env=env, stdout=logs[replica], stderr=subprocess.STDOUT,
                                             text=True, start_new_session=True))
        for p in replicas:
            p.wait(timeout=900)
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
        for p, output in zip(replicas, outputs):
            if p.returncode != 0:
                raise SystemExit(f"TorchFT replica failed ({p.returncode}):\n{output[-3000:]}")
        return figure(outputs[0], "step_s", "torchft replica 0")
    finally:
        for p in replicas:
            kill_group(p)
        kill_group(lighthouse)
        for log in logs:
            log.close()


def has_torchft(python: str) -> bool:
    return subprocess.run([python, "-c", "import torchft"], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--state-mib", type=float, nargs="+", default=[20, 400])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0, help="steps per run (default: 40 at <= 64 MiB, else 14)")
    parser.add_argument("--torchft-python", default=sys.executable,
                        help="interpreter that can import torchft (e.g. a venv with torchft-nightly)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTRAIN_", "TORCHFT_"))}
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    torchft_ok = has_torchft(args.torchft_python)
    if not torchft_ok:
        print(f"TorchFT: not importable by {args.torchft_python}; its column is skipped "
              f"(pip install torchft-nightly into a venv and pass --torchft-python)")
    print(f"{args.ranks} ranks on {os.cpu_count()} CPUs, MLP + Adam, batch 32; medians of {args.rounds} rounds; "
          f"ratio = step time / torchrun+DDP's")
    header = f"{'state':>8} {'torchrun+DDP':>13} {'ftrain snap/step':>17} {'ftrain snap off':>16} {'TorchFT':>9}"
    rows = []
    for mib in args.state_mib:
        steps = args.steps or (40 if mib <= 64 else 14)
        warmup = 5 if mib <= 64 else 4
        job_args = ["--state-mib", str(mib), "--steps", str(steps), "--warmup", str(warmup)]
        figures: dict[str, list[float]] = {"ddp": [], "ft1": [], "ft0": [], "tft": []}
        for _ in range(args.rounds):
            figures["ddp"].append(run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                                       str(args.ranks), "--master-addr", "127.0.0.1", "--master-port",
                                       str(free_port()), JOB, *job_args], env))
            for every in (1, 0):
                job = f"bench-step-{uuid.uuid4().hex[:8]}"
                figures[f"ft{every}"].append(run([sys.executable, "-m", "ftrain", "launch", "--nodes", str(args.ranks),
                                                  "--job-id", job, "--snapshot-every",
                                                  "1" if every else str(10**6), "--", JOB, *job_args, "--snapshot-every", str(every)], env))
            if torchft_ok:
                figures["tft"].append(run_torchft(args.torchft_python, args.ranks, job_args, env))
        med = {k: statistics.median(v) for k, v in figures.items() if v}
        base = med["ddp"]

        def cell(key: str, width: int) -> str:
            if key not in med:
                return f"{'-':>{width}}"
            text = f"{med[key]:.3f} s" + ("" if key == "ddp" else f" {med[key] / base:.2f}x")
            return f"{text:>{width}}"

        rows.append(f"{mib:>6g} M {cell('ddp', 13)} {cell('ft1', 17)} {cell('ft0', 16)} {cell('tft', 15)}")
        print(header, *rows, sep="\n", flush=True)
        rows.clear()


if __name__ == "__main__":
    main()
