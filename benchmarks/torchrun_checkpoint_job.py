"""Baseline for benchmarks/recovery.py: the examples' transformer under plain DDP + torchrun,
restarting from a torch.save checkpoint written every K steps (the usual way).

On the first attempt rank 1 SIGKILLs itself at --kill-step; torchrun (--max-restarts 1)
restarts every worker, which resume from the newest checkpoint. Timestamps go to --timeline.
"""
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from transformer_lm import TinyLM, synthetic_tokens  # noqa: E402

from jobs import KEPT_GROUPS  # noqa: E402


def log(path: str, **event) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"t": time.time(), **event}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--kill-step", type=int, default=30)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--timeline", required=True)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    log(args.timeline, kind="process", attempt=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        rank=int(os.environ.get("RANK", "-1")))
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # each restart attempt rendezvouses under its own prefix: with the plain env:// init, gloo's
    # full-mesh connect in torch 2.13 picks up the dead attempt's addresses and times out
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False)
    dist.init_process_group("gloo", store=dist.PrefixStore(f"attempt{attempt}/", store), rank=rank, world_size=world)
    KEPT_GROUPS.append(dist.group.WORLD)
    torch.manual_seed(0)
    data = synthetic_tokens(4096, 64, 256)
    model = nn.parallel.DistributedDataParallel(TinyLM(dim=args.dim))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    start = 0
    if os.path.exists(args.checkpoint):
        state = torch.load(args.checkpoint, weights_only=False)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
    if rank == 0:
        log(args.timeline, kind="started", attempt=attempt, step=start)
    for step in range(start, args.steps):
        if attempt == 0 and rank == 1 and step == args.kill_step:
            log(args.timeline, kind="kill", step=step)
            os.kill(os.getpid(), signal.SIGKILL)
        g = torch.Generator().manual_seed(step * world + rank)
        index = torch.randint(0, len(data), (args.batch_size,), generator=g)
        inputs, targets = data[index, :-1], data[index, 1:]
        logits = model(inputs)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if rank == 0:
            log(args.timeline, kind="step", attempt=attempt, step=step + 1)
            if (step + 1) % args.checkpoint_every == 0:
                began = time.perf_counter()
                torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict(),
                            "rng": torch.get_rng_state(), "step": step + 1}, args.checkpoint + ".tmp")
                os.replace(args.checkpoint + ".tmp", args.checkpoint)
                log(args.timeline, kind="checkpoint", step=step + 1, seconds=time.perf_counter() - began)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    KEPT_GROUPS.clear()
