"""Test job: the idioms of real torchrun + DDP loops, run either under ftrain or under plain
`torchrun` + DistributedDataParallel (gloo), with the same batches, so the two can be compared.

Under ftrain (FTRAIN_COORDINATOR set, or plain `python`) the loop uses ftrain.init's three lines;
under torchrun (RANK set) it builds its own DDP and feeds each rank the batch ftrain's sampler
would give it. Idioms: gradient clipping (`--clip`), gradient accumulation with no_sync()
(`--accum`), fp16 autocast + GradScaler that skips steps (`--amp`), fused AdamW (`--fused`),
DataLoader workers (`--workers`), torch.distributed calls inside the loop, `break` (`--break-at`),
a long rank-0 pause inside a step (`--pause-at`, `--pause-s`). Rank 0 writes the final
parameters, the grad norm of every step, the skipped steps and the sample ledger to --out.
"""
import argparse
import collections
import os
import time

import torch
import torch.distributed as dist
from torch import nn

# torchrun reference only: the default group is kept here until main() has returned. Otherwise
# DDP's Reducer can hold the group's last reference, and freeing the Reducer (with the GIL held)
# runs gloo's destructor, which joins a worker thread that may still be dropping the last
# collective's tensors and needs the GIL: plain torch 2.13 then hangs at exit (1 run in 3 here).
# A group freed from Python releases the GIL first.
KEPT_GROUPS: list = []


class Items(torch.utils.data.Dataset):
    """Synthetic regression items; each returns its id so the ledger can count samples."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 16, generator=g)
        self.y = self.x[:, :4].sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class Ledger:
    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.norms: list[float] = []
        self.skipped: list[int] = []

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "norms": list(self.norms), "skipped": list(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.counts = collections.Counter(state["counts"])
        self.norms, self.skipped = list(state["norms"]), list(state["skipped"])


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--samples", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--clip", type=float, default=0.0)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--fused", action="store_true")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--break-at", type=int, default=-1)
    parser.add_argument("--break-rank", type=int, default=-1, help="break on this rank only (-1: every rank)")
    parser.add_argument("--pause-at", type=int, default=-1)
    parser.add_argument("--pause-s", type=float, default=0.0)
    parser.add_argument("--compile", action="store_true", help="torch.compile the (DDP / ftrain) model, aot_eager")
    parser.add_argument("--noise", action="store_true", help="input noise from the global RNG in every step")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = Items(args.samples)
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2, fused=args.fused or None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24, enabled=args.amp)
    ledger = Ledger()
    torchrun = "RANK" in os.environ and "FTRAIN_COORDINATOR" not in os.environ
    if torchrun:  # the reference: plain torchrun + DDP, fed the batches ftrain's sampler gives
        from ftrain.train.data import ElasticSampler

        dist.init_process_group("gloo")
        KEPT_GROUPS.append(dist.group.WORLD)
        rank, world = dist.get_rank(), dist.get_world_size()
        ddp = nn.parallel.DistributedDataParallel(model)
        sampler = ElasticSampler(len(dataset), args.batch_size, seed=5)

        def batches():
            for step in range(args.steps):
                parts = sampler.global_indices(world)
                items = [dataset[i] for i in parts[rank]]
                yield step, torch.utils.data.default_collate(items), parts, sampler.epoch
                sampler.advance(world)

        loop, net, session = batches(), ddp, None
    else:
        import ftrain

        session = ftrain.init(model, optimizer, dataset=dataset, batch_size=args.batch_size, seed=5,
                              num_workers=args.workers)
        session.register("scaler", scaler)
        session.register("ledger", ledger)
        rank, world = session.rank, session.world_size
        assert (dist.get_rank(), dist.get_world_size()) == (rank, world), "default group is not the session's"

        def batches():
            for step, batch in session.steps(args.steps):
                yield step, batch, session.global_batch_indices(), session.sampler.epoch

        loop, net = batches(), session.model
    if args.compile:  # as DDP users do: compile the wrapped model (aot_eager: the autograd graph, no C++ build)
        net = torch.compile(net, backend="aot_eager")
    for step, (x, y, ids), parts, epoch in loop:
        if not torchrun:
            assert ids.tolist() == parts[rank], (step, ids.tolist(), parts[rank])
        if step == args.pause_at and rank == 0:
            time.sleep(args.pause_s)  # an "evaluation" on rank 0 only
        if args.noise:  # the global RNG in the loop (like dropout): a recovery must restore its exact state
            x = x + 0.01 * torch.randn_like(x)
        chunks = list(zip(x.chunk(args.accum), y.chunk(args.accum)))
        for micro, (xm, ym) in enumerate(chunks):
            sync = micro == len(chunks) - 1
            context = net.no_sync() if not sync else torch.enable_grad()
            with context:
                with torch.autocast("cpu", dtype=torch.float16, enabled=args.amp):
                    loss = nn.functional.mse_loss(net(xm), ym) / len(chunks)
                scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip if args.clip > 0 else float("inf"))
        scale_before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if args.amp and scaler.get_scale() < scale_before:
            ledger.skipped.append(step)
        ledger.norms.append(float(norm))
        for part in parts:
            ledger.counts.update(f"{epoch}:{i}" for i in part)
        total = torch.tensor([float(len(ids))])
        dist.all_reduce(total)  # torch.distributed inside the loop: every rank's sample count
        if session is None or not session.discarding:  # a discarded step's collectives are no-ops
            assert int(total.item()) == sum(len(p) for p in parts), (total, parts)
        if step == args.break_at and args.break_rank in (-1, rank):
            break
    loop.close()  # a plain `for ... in session.steps()` closes at the break; this loop wraps it
    if rank == 0:
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "norms": ledger.norms, "skipped": ledger.skipped, "counts": dict(ledger.counts), "samples": args.samples,
                    "world_size": world, "generation": session.generation if session else 0,
                    "step": session.step if session else args.steps,
                    "replayed": session.stats["recoveries"] if session else 0}, args.out)
    if session is not None:
        session.finish()
    else:
        dist.barrier()  # rank 0 has saved before any rank reaches torch 2.13's teardown (it can abort there)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    KEPT_GROUPS.clear()
