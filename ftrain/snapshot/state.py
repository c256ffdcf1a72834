"""Train state <-> named tensors + meta (no I/O): what a snapshot of a model and its optimizer
holds, and how it is put back.

A model's parameters and its optimizer's tensor state become named tensors (`model/<name>`,
`optim/<param id>/<key>`) that ftrain.snapshot.layout flattens; everything else (the optimizer's
param groups and scalar state, the layout of FSDP2 DTensors) goes into a meta dict. A DTensor
contributes its local shard. RNG state of torch, numpy and `random` (and CUDA when in use) is
captured and set here too.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2: this rank's part, captured by its owner); others as they are."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) and hasattr(tensor, "placements") else tensor


def placements(model_state: dict[str, Any], optimizer_state: dict[Any, Any]) -> dict[str, str]:
    """name -> 'mesh shape / placements / global shape' of every DTensor in the state."""
    out = {}
    named = [(f"model/{n}", t) for n, t in model_state.items()]
    named += [(f"optim/{pid}/{k}", v) for pid, entry in optimizer_state.items() for k, v in entry.items()]
    for name, tensor in named:
        if hasattr(tensor, "placements") and hasattr(tensor, "device_mesh"):
            out[name] = f"mesh {tuple(tensor.device_mesh.shape)} / {tuple(str(p) for p in tensor.placements)} / " \
                        f"global {tuple(tensor.shape)}"
    return out


def placement_mismatch(saved: dict[str, str], current: dict[str, str]) -> str:
    """'' when the model's DTensors are laid out as in the snapshot, else what differs and the fix."""
    diff = sorted(k for k in set(saved) | set(current) if k.startswith("model/") and saved.get(k) != current.get(k))
    if not diff:
        return ""
    return (f"the sharding differs from the snapshot's: {diff[0]} was {saved.get(diff[0])!r}, is now "
            f"{current.get(diff[0])!r} ({len(diff)} tensor(s) differ); build the model, mesh and fully_shard() "
            f"calls as the job that wrote it did")


def param_names(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name (as in the module's state dict) of each parameter the optimizer holds, in the
    numbering of its state dict; '' for one the module does not have."""
    names = {id(p): name for name, p in module.named_parameters()}
    return [names.get(id(p), "") for group in optimizer.param_groups for p in group["params"]]


def split_state(model_state: dict[str, torch.Tensor], optimizer_state: dict[str, Any], skip: set[str],
                sharded: bool, names: list[str] | None = None) -> tuple[list[tuple[str, torch.Tensor]], dict[str, Any]]:
    """(named tensors, optimizer meta) of a model's state dict (less the names in `skip`) and an
    optimizer's state dict; `sharded`: also record how each DTensor is laid out; `names`: each
    optimizer parameter's name (param_names), kept in the meta for the DCP copy."""
    tensors = [(f"model/{name}", local(t)) for name, t in model_state.items() if name not in skip]
    opt_meta: dict[str, Any] = {"param_groups": optimizer_state["param_groups"], "state": {}}
    if names is not None:
        opt_meta["param_names"] = names
    for pid in sorted(optimizer_state["state"]):
        entry: dict[str, Any] = {}
        for key in sorted(optimizer_state["state"][pid]):
            value = optimizer_state["state"][pid][key]
            if isinstance(value, torch.Tensor):
                tensors.append((f"optim/{pid}/{key}", local(value)))
                entry[key] = None
            else:
                entry[key] = value
        opt_meta["state"][pid] = entry
    if sharded:  # checked at restore
        opt_meta["placements"] = placements(model_state, optimizer_state["state"])
    return tensors, opt_meta


def optimizer_state(views: dict[str, torch.Tensor], opt_meta: dict[str, Any],
                    params: list[torch.Tensor] | None = None) -> dict[str, Any]:
    """The optimizer state dict to load from a snapshot's tensor views and optimizer meta. With
    `params` (sharded state), a tensor saved from a DTensor parameter's state becomes a DTensor
    laid out as that parameter is."""
    saved = opt_meta.get("placements", {})
    state: dict[Any, dict[str, Any]] = {}
    for pid, entry in opt_meta["state"].items():
        state[pid] = {}
        for key, value in entry.items():
            if value is not None:
                state[pid][key] = value
                continue
            tensor = views[f"optim/{pid}/{key}"].clone()
            param = params[pid] if params is not None else None
            if param is not None and f"optim/{pid}/{key}" in saved and hasattr(param, "placements"):
                from torch.distributed.tensor import DTensor

                tensor = DTensor.from_local(tensor, param.device_mesh, param.placements, run_check=False,
                                            shape=param.shape, stride=param.stride())
            state[pid][key] = tensor
    return {"state": state, "param_groups": opt_meta["param_groups"]}


def load_optimizer_scalars(optimizer: torch.optim.Optimizer, opt_meta: dict[str, Any]) -> None:
    """An optimizer's hyperparameters (param_groups) and non-tensor state from a snapshot's meta,
    its state tensors left as they are (for a rank whose live tensors are the snapshot's)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for group, saved in zip(optimizer.param_groups, opt_meta["param_groups"]):
        group.update({key: value for key, value in saved.items() if key != "params"})
    for pid, entry in opt_meta["state"].items():
        state = optimizer.state[params[int(pid)]]
        for key, value in entry.items():
            if value is not None:
                state[key] = value


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
