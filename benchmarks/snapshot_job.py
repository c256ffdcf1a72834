"""Job for benchmarks/snapshot.py: the examples' transformer, timing every step on each rank.

--mode ftrain: ftrain's in-memory snapshots (frequency set by `ftrain launch --snapshot-every`)
--mode torch-save: additionally rank 0 torch.save()s model+optimizer to a local file every step
--mode dcp-async: additionally torch.distributed.checkpoint.async_save every step (rank 0)
--ab-block B (with --mode ftrain and --snapshot-every 1): alternate B steps with a snapshot every
step and B steps without one (by setting `session.snapshot_every`), so both are measured in the
same processes at the same time; the first 2 steps of each block are left out (the previous
block's last snapshot may still be shipping).
--device cuda: model, optimizer state and batches on the GPU (NCCL; one GPU per node, so a
one-GPU machine runs --nodes 1); each step's time then ends with a sync of the training stream
(the snapshot's side-stream copy may still run).
Rank 0 writes the median step time (seconds) to --out as JSON.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import ftrain  # noqa: E402
from transformer_lm import TinyLM, synthetic_tokens  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["ftrain", "torch-save", "dcp-async"], default="ftrain")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--ab-block", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = synthetic_tokens(2048, 64, 256)
    dataset = torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:])
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    model = TinyLM(dim=args.dim, layers=args.layers).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    session = ftrain.init(model, optimizer, dataset=dataset, batch_size=args.batch_size, seed=0)
    times, pending = [], None
    ab_times: dict[bool, list[float]] = {True: [], False: []}
    every = session.snapshot_every
    with tempfile.TemporaryDirectory(prefix="ftrain-snapbench-") as tmp:
        began = None
        for step, (inputs, targets) in session.steps(args.steps):
            if on_gpu:
                torch.cuda.current_stream().synchronize()  # the previous step's kernels are done
            now = time.perf_counter()
            if began is not None and step > args.warmup:
                times.append(now - began)
                if args.ab_block and (step - 1) % args.ab_block >= 2:  # the step just timed, off its block's start
                    ab_times[((step - 1) // args.ab_block) % 2 == 0].append(now - began)
            began = now
            if args.ab_block:  # blocks alternate: even blocks snapshot every step, odd blocks none
                session.snapshot_every = every if (step // args.ab_block) % 2 == 0 else 10**9
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            logits = session.model(inputs)
            loss = nn.functional.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1))
            loss.backward()
            session.optimizer.step()
            session.optimizer.zero_grad()
            if session.rank == 0 and args.mode == "torch-save":
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, f"{tmp}/ckpt.pt")
            elif session.rank == 0 and args.mode == "dcp-async":
                import torch.distributed.checkpoint as dcp

                if pending is not None:
                    pending.result()
                pending = dcp.async_save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                                         checkpoint_id=f"{tmp}/dcp-{step % 2}")
        if pending is not None:
            pending.result()
    if session.rank == 0:
        params = sum(p.numel() for p in model.parameters())
        ab = {f"median_step_{'on' if on else 'off'}_s": statistics.median(values) for on, values in ab_times.items()
              if values}
        Path(args.out).write_text(json.dumps({"median_step_s": statistics.median(times), "params": params, **ab,
                                              "stall_s": session.stats["stall_s"], "captures": session.stats["captures"]}))
    session.finish()


if __name__ == "__main__":
    main()
