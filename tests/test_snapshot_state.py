"""ftrain.snapshot.state: a model and optimizer go to named tensors + meta and come back exactly."""
from __future__ import annotations

import random

import numpy as np
import torch

from ftrain.snapshot import layout as lay
from ftrain.snapshot import state as train_state


def _trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.BatchNorm1d(7), torch.nn.Linear(7, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss = model(torch.randn(8, 5)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, optimizer


def _round_trip(model: torch.nn.Module, optimizer: torch.optim.Optimizer, skip: set[str]) -> tuple[dict, dict]:
    """What a snapshot holds of them, through the flat buffer a blob carries, and back to views."""
    named, opt_meta = train_state.split_state(model.state_dict(), optimizer.state_dict(), skip, sharded=False)
    layout = lay.build_layout(named)
    flat = torch.zeros(layout.total, dtype=torch.uint8)
    lay.SliceCopier().copy([t for _, t in named], layout, 0, layout.total, flat)
    views = lay.tensors_from_flat(lay.StateLayout(layout.entries, layout.total), flat)
    return views, opt_meta


def test_a_model_and_its_optimizer_come_back_bit_exact() -> None:
    source, source_opt = _trained(1)
    buffers = {name for name, _ in source.named_buffers()}
    views, opt_meta = _round_trip(source, source_opt, buffers)
    assert not any(name[6:] in buffers for name in views if name.startswith("model/"))  # per-rank: meta, not views
    assert all(value is None for entry in opt_meta["state"].values() for key, value in entry.items()
               if key in ("exp_avg", "exp_avg_sq"))  # tensors travel in the buffer, scalars in the meta
    target, target_opt = _trained(2)
    target.load_state_dict({**{n[6:]: t for n, t in views.items() if n.startswith("model/")},
                            **{n: b for n, b in source.state_dict().items() if n in buffers}})
    target_opt.load_state_dict(train_state.optimizer_state(views, opt_meta))
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
    batch = torch.randn(8, 5)
    for model, optimizer in ((source, source_opt), (target, target_opt)):  # the next step is the same too
        loss = model(batch).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for a, b in zip(source.parameters(), target.parameters()):
        assert torch.equal(a, b)
    # the optimizer state loaded is a copy: the snapshot's buffer can be reused at once
    assert all(t.untyped_storage().data_ptr() != views[f"optim/{pid}/{k}"].untyped_storage().data_ptr()
               for pid, entry in target_opt.state_dict()["state"].items() for k, t in entry.items()
               if isinstance(t, torch.Tensor) and f"optim/{pid}/{k}" in views)


def test_rng_state_of_torch_numpy_and_random_is_restored() -> None:
    saved = train_state.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(10), np.random.rand(10), random.random()
    train_state.set_rng_state(saved)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_a_sharding_mismatch_names_the_tensor_and_the_fix() -> None:
    saved = {"model/w": "mesh (2,) / ('Shard(dim=0)',) / global (8, 4)", "optim/0/exp_avg": "x"}
    assert train_state.placement_mismatch(saved, dict(saved)) == ""
    assert train_state.placement_mismatch(saved, {**saved, "optim/0/exp_avg": "y"}) == ""  # only the model's count
    message = train_state.placement_mismatch(saved, {"model/w": "mesh (4,) / ('Shard(dim=0)',) / global (8, 4)"})
    assert "model/w was \"mesh (2,)" in message.replace("'", '"') and "1 tensor(s) differ" in message
    assert "fully_shard()" in message
    assert train_state.placements({"w": torch.zeros(2)}, {}) == {}  # plain tensors have no placements


def test_param_names_follow_the_optimizers_numbering() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD([{"params": [model[2].weight, model[0].bias]},
                                 {"params": [model[0].weight, torch.nn.Parameter(torch.zeros(1))]}], lr=0.1)
    assert train_state.param_names(model, optimizer) == ["2.weight", "0.bias", "0.weight", ""]
