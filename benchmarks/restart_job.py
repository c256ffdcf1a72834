"""Job for benchmarks/restart.py: one MLP + AdamW loop (benchmarks/step_overhead_job.py's model,
sized by --state-mib = parameters + AdamW's two moments) under four runtimes, chosen by the
environment the script is started in:

- ftrain restart mode (`ftrain launch --recovery restart`: FTRAIN_COORDINATOR and RANK are set):
  a torchrun-style script. It calls dist.init_process_group("gloo") itself (env://), wraps its own
  DistributedDataParallel (or, with --fsdp2, fully_shard()s each Linear and the model), then
  ftrain.init(model, optimizer) adopts the group and snapshots the state;
- ftrain in-process mode (`ftrain launch`, FTRAIN_COORDINATOR set, no RANK): ftrain.init with the
  plain model, trained through session.model;
- torchrun + DDP + torch.distributed.checkpoint (RANK set, no FTRAIN_COORDINATOR): dcp.save of
  the model + optimizer state every --dcp-every steps to --dcp-dir/step-N (rank 0 then writes
  --dcp-dir/latest); a restarted attempt dcp.load()s the newest one. On attempt 0, rank
  --kill-rank SIGKILLs itself at the top of step --kill-step (as ftrain's kill-rank fault does).

Every rank appends marks to --timeline (JSON lines, time.time()): "process" (top of the script,
before torch is imported), "imported" (torch, torch._dynamo, which the first DDP() or AdamW()
would import anyway, and ftrain), "group" (process group made), "built" (the plain model),
"wrapped" (its DDP / FSDP2 wrapper), "optimizer" (AdamW made), "restored" (ftrain.init returned /
DCP checkpoint loaded; with the step), "step" (each step's body done), "kill", "checkpoint"
(seconds of each dcp.save). Rank 0 prints `step_s S`: the mean wall time per step after --warmup
steps (for the FSDP2 stall runs).
"""
import json
import os
import time

PROCESS_T = time.time()

import argparse  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch._dynamo  # noqa: E402,F401  (the first DDP() / AdamW() imports it anyway: 2-4 s here)
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from jobs import KEPT_GROUPS  # noqa: E402
from step_overhead_job import batch, build_model  # noqa: E402


class Timeline:
    def __init__(self, path: str, rank: int, attempt: int) -> None:
        self.path, self.rank, self.attempt = path, rank, attempt

    def mark(self, kind: str, t: float | None = None, **extra) -> None:
        if not self.path:
            return
        record = {"t": time.time() if t is None else t, "kind": kind, "rank": self.rank, "attempt": self.attempt,
                  "pid": os.getpid(), **extra}
        with open(self.path, "a") as f:  # one short O_APPEND write per mark
            f.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-mib", type=float, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timeline", default="")
    parser.add_argument("--fsdp2", action="store_true", help="restart mode: FSDP2 (fully_shard) instead of DDP")
    parser.add_argument("--snapshot-every", type=int, default=1, help="ftrain.init(snapshot_every=); 0 = 10**9")
    parser.add_argument("--kill-step", type=int, default=-1, help="torchrun: rank --kill-rank dies here")
    parser.add_argument("--kill-rank", type=int, default=1)
    parser.add_argument("--die-mid-step", action="store_true",
                        help="ftrain in-process: rank --kill-rank SIGKILLs itself after the forward pass of step "
                             "--kill-step of generation 0 (1 s after the step began, so the previous snapshot "
                             "commits), its peers waiting in the gradient all-reduce")
    parser.add_argument("--dcp-every", type=int, default=10)
    parser.add_argument("--dcp-dir", default="")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ftrain_job = "FTRAIN_COORDINATOR" in os.environ
    own_group = "RANK" in os.environ  # torchrun, or ftrain's restart mode (torchrun's environment)
    rank = int(os.environ.get("RANK", "-1"))
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    timeline = Timeline(args.timeline, rank, attempt)
    timeline.mark("process", PROCESS_T)
    if ftrain_job:
        import ftrain
    timeline.mark("imported")

    if own_group:
        if ftrain_job:
            dist.init_process_group("gloo")  # env://, exactly as under torchrun (a fresh store per generation)
        else:
            # as benchmarks/torchrun_checkpoint_job.py: each attempt rendezvouses under its own prefix
            world = int(os.environ["WORLD_SIZE"])
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False)
            dist.init_process_group("gloo", store=dist.PrefixStore(f"attempt{attempt}/", store), rank=rank,
                                    world_size=world)
        KEPT_GROUPS.append(dist.group.WORLD)
        timeline.mark("group")
    model, width = build_model(args.state_mib)
    timeline.mark("built")
    if own_group and args.fsdp2:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        net: nn.Module = model
    elif own_group:
        net = nn.parallel.DistributedDataParallel(model)
    else:
        net = model  # in-process mode: session.model below
    timeline.mark("wrapped")
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    timeline.mark("optimizer")

    session = None
    start = 0
    if ftrain_job:
        every = args.snapshot_every if args.snapshot_every > 0 else 10**9
        session = ftrain.init(net, optimizer, snapshot_every=every)
        rank = session.rank
        timeline.rank = rank
        if not own_group:
            net = session.model
        start = session.step
        timeline.mark("restored", step=start, generation=session.generation, resumed_from=session.resumed_from)
        steps = (step for step, _ in session.steps(args.steps))
    else:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        latest = Path(args.dcp_dir) / "latest"
        if latest.exists():
            start = int(latest.read_text())
            model_sd, optim_sd = get_state_dict(net, optimizer)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=str(Path(args.dcp_dir) / f"step-{start}"))
            set_state_dict(net, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        timeline.mark("restored", step=start)
        steps = iter(range(start, args.steps))

    started, counted = 0.0, 0
    ended = time.perf_counter()  # end of the previous step's body: the gap between bodies is part of a step
    for step in steps:
        if not ftrain_job and attempt == 0 and rank == args.kill_rank and step == args.kill_step:
            timeline.mark("kill", step=step)
            os.kill(os.getpid(), signal.SIGKILL)
        if step == args.warmup and not started:
            started, counted = ended, 0
        optimizer.zero_grad()
        x, y = batch(step, rank, args.batch_size, width)
        loss = nn.functional.mse_loss(net(x), y)
        if args.die_mid_step and session is not None and session.generation == 0 and rank == args.kill_rank \
                and step == args.kill_step:
            time.sleep(1.0)
            timeline.mark("kill", step=step)
            os.kill(os.getpid(), signal.SIGKILL)
        loss.backward()
        optimizer.step()
        counted += 1 if started else 0
        ended = time.perf_counter()
        timeline.mark("step", step=step + 1)
        if not ftrain_job and (step + 1) % args.dcp_every == 0 and step + 1 < args.steps:
            began = time.perf_counter()
            model_sd, optim_sd = get_state_dict(net, optimizer)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(Path(args.dcp_dir) / f"step-{step + 1}"))
            if rank == 0:  # dcp.save returned on every rank: the checkpoint is complete
                (Path(args.dcp_dir) / "latest.tmp").write_text(str(step + 1))
                os.replace(Path(args.dcp_dir) / "latest.tmp", latest)
            timeline.mark("checkpoint", step=step + 1, seconds=time.perf_counter() - began)
    if rank == 0 and started and counted:
        print(f"step_s {(ended - started) / counted:.4f}", flush=True)
    if session is not None:
        session.finish()
    if own_group:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    KEPT_GROUPS.clear()
