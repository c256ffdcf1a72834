"""A small transformer language model on synthetic tokens, trained with ftrain.

A plain torch loop; the ftrain lines are marked `# ftrain`. The data is a synthetic
"copy with noise" sequence task generated from a fixed seed (nothing is downloaded).
Run directly, or `ftrain launch --nodes 3 -- examples/transformer_lm.py`.
"""
import argparse
import math

import torch
from torch import nn

import ftrain  # ftrain


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 256, dim: int = 128, layers: int = 2, heads: int = 4, context: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.zeros(context, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.1, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        h = self.embed(tokens) + self.position[:n]
        return self.head(self.blocks(h, mask=self.mask[:n, :n], is_causal=True))


def synthetic_tokens(samples: int, context: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Sequences whose second half repeats the first half (learnable), with 5% noise."""
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(0, vocab, (samples, context // 2 + 1), generator=g)
    seq = torch.cat([half, half], dim=1)[:, : context + 1]
    noise = torch.rand(seq.shape, generator=g) < 0.05
    return torch.where(noise, torch.randint(0, vocab, seq.shape, generator=g), seq)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = synthetic_tokens(4096, args.context, 256)
    dataset = torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:])
    model = TinyLM(dim=args.dim, layers=args.layers, context=args.context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20))

    session = ftrain.init(model, optimizer, dataset=dataset, batch_size=args.batch_size, seed=0)  # ftrain
    session.register("scheduler", scheduler)  # ftrain
    for step, (inputs, targets) in session.steps(args.steps):  # ftrain
        logits = session.model(inputs)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        session.optimizer.step()  # ftrain
        session.optimizer.zero_grad()
        scheduler.step()
        if session.rank == 0 and step % 20 == 0:
            print(f"step {step} loss {loss.item():.3f} ppl {math.exp(loss.item()):.1f} world {session.world_size}", flush=True)
    if session.rank == 0 and args.out:
        torch.save({"params": {k: v.clone() for k, v in model.state_dict().items()}, "step": session.step}, args.out)
    session.finish()  # ftrain


if __name__ == "__main__":
    main()
