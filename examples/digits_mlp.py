"""A small MLP on sklearn's digits (shipped with scikit-learn), trained with ftrain.

A plain torch loop; the ftrain lines are marked `# ftrain`. Run it directly (single process)
or under `ftrain launch --nodes 3 -- examples/digits_mlp.py`.
Optional arguments: --steps N, --out FILE (rank 0 writes the final parameters, loss and accuracy).
"""
import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import ftrain  # ftrain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    dataset = torch.utils.data.TensorDataset(x, y)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    session = ftrain.init(model, optimizer, dataset=dataset, batch_size=args.batch_size, seed=0)  # ftrain
    for step, (features, labels) in session.steps(args.steps):  # ftrain
        loss = nn.functional.cross_entropy(session.model(features), labels)
        loss.backward()
        session.optimizer.step()  # ftrain
        session.optimizer.zero_grad()
        if session.rank == 0 and step % 20 == 0:
            print(f"step {step} loss {loss.item():.4f} world {session.world_size} gen {session.generation}", flush=True)
    model.eval()
    with torch.no_grad():
        final_loss = nn.functional.cross_entropy(model(x), y).item()
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    if session.rank == 0:
        print(f"final loss {final_loss:.4f} accuracy {accuracy:.3f}", flush=True)
    if session.rank == 0 and args.out:
        torch.save({"params": {k: v.clone() for k, v in model.state_dict().items()},
                    "final_loss": final_loss, "accuracy": accuracy,
                    "step": session.step, "world_size": session.world_size, "generation": session.generation},
                   args.out)
    session.finish()  # ftrain


if __name__ == "__main__":
    main()
