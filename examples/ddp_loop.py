"""A typical torchrun + DDP training script, ported to ftrain with three added lines (marked).

What it keeps from the torchrun original: a DataLoader with worker processes, gradient
accumulation with `model.no_sync()`, gradient clipping, AMP (fp16 + GradScaler on CUDA,
bf16 autocast on CPU), the user's own fused AdamW and LR scheduler, an evaluation on rank 0
every N steps, `dist.all_reduce` of a metric, logging on the master process, and an early stop.

    python examples/ddp_loop.py                                    # one process
    ftrain launch --nodes 3 --inject kill-node:1@step=30 -- examples/ddp_loop.py
"""
import argparse

import torch
import torch.distributed as dist
from torch import nn

import ftrain


class Waves(torch.utils.data.Dataset):
    """Synthetic regression: y = sum of sines of the inputs (no download)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 8, generator=g) * 6 - 3
        self.y = torch.sin(self.x).sum(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--target-loss", type=float, default=0.0, help="stop early below this eval loss")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 1)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, fused=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device, enabled=device == "cuda")
    train, held_out = Waves(4096, seed=1), Waves(512, seed=2)

    session = ftrain.init(model, optimizer, dataset=train, batch_size=args.batch_size, seed=0,  # ftrain
                          num_workers=args.workers, pin_memory=device == "cuda")
    session.register("scheduler", scheduler)                                                   # ftrain
    session.register("scaler", scaler)
    master_process = session.rank == 0
    if master_process:
        print(f"world size {session.world_size}, global batch {args.batch_size * session.world_size}")

    for step, (x, y) in session.steps(args.steps):                                             # ftrain
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for micro, (xm, ym) in enumerate(zip(x.chunk(args.accum), y.chunk(args.accum))):
            last = micro == args.accum - 1
            with (session.model.no_sync() if not last else torch.enable_grad()):
                with torch.autocast(device, dtype=amp_dtype):
                    loss = nn.functional.mse_loss(session.model(xm), ym) / args.accum
                scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        mean_loss = loss.detach().float().cpu() * args.accum
        dist.all_reduce(mean_loss)
        mean_loss /= dist.get_world_size()
        stop = False
        if (step + 1) % args.eval_every == 0:
            if master_process:
                with torch.no_grad():
                    model.eval()
                    eval_loss = nn.functional.mse_loss(model(held_out.x.to(device)), held_out.y.to(device)).item()
                    model.train()
                if not session.replaying:
                    print(f"step {step + 1}: train loss {mean_loss.item():.4f}, eval loss {eval_loss:.4f}, "
                          f"grad norm {grad_norm:.3f}", flush=True)
                stop = args.target_loss > 0 and eval_loss < args.target_loss
            flag = torch.tensor([float(stop)])
            dist.broadcast(flag, 0)  # every rank decides the early stop together
            stop = bool(flag.item())
        if stop:
            break
    session.finish()
    if master_process:
        print(f"done at step {session.step}")


if __name__ == "__main__":
    main()
