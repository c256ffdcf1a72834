"""FSDP2 on a small transformer language model, as a torchrun script, plus ftrain's three lines.

The script makes its own process group from torchrun's environment and shards the model with
`fully_shard` (each transformer block, then the whole model), exactly as it would under
`torchrun --nproc-per-node N examples/fsdp2_lm.py`. Under ftrain, restart recovery gives every
trainer that environment again after a failure and each rank snapshots its own shards:

    ftrain launch --nodes 4 --recovery restart -- examples/fsdp2_lm.py --steps 200

gloo on CPU; NCCL (one GPU per trainer, LOCAL_RANK) when CUDA is available. Synthetic tokens, no
download. The ftrain lines are marked `# ftrain`.
"""
import argparse
import math
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import ftrain  # ftrain
from transformer_lm import TinyLM, synthetic_tokens


# FSDP2 warns that the model returns a view (nn.Linear on a 3-D input); the loop does no in-place op on it
warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--context", type=int, default=64)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    torch.manual_seed(0)
    torch.set_num_threads(1)
    device = torch.device("cuda") if cuda else torch.device("cpu")
    data = synthetic_tokens(4096, args.context, 256)
    dataset = torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:])
    model = TinyLM(dim=args.dim, layers=args.layers, context=args.context).to(device)
    for block in model.blocks.layers:
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20))

    session = ftrain.init(model, optimizer, dataset=dataset, batch_size=args.batch_size, seed=0)  # ftrain
    session.register("scheduler", scheduler)  # ftrain
    for step, (inputs, targets) in session.steps(args.steps):  # ftrain
        logits = model(inputs.to(device))
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.to(device).reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        if dist.get_rank() == 0 and step % 20 == 0 and not session.replaying:
            print(f"step {step} loss {loss.item():.3f} ppl {math.exp(loss.item()):.1f} world {dist.get_world_size()}",
                  flush=True)
    session.finish()  # ftrain
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
