"""A durable checkpoint's state as a `torch.distributed.checkpoint` (DCP) directory.

The checkpoint's rank files are ftrain snapshot blobs (what `--resume` reads, bit for bit). When
the state is replicated (plain ftrain or the script's own DDP: each blob holds a 1/N slice) the
finalizing agent also assembles the whole state and writes it with DCP into `dcp/` beside them,
so standard tools load it without ftrain:

    state = {"model": model.state_dict()}
    torch.distributed.checkpoint.load(state, checkpoint_id="CKPT/step-00000020/dcp")
    model.load_state_dict(state["model"])

or `torch.distributed.checkpoint.format_utils.dcp_to_torch_save(dir, "step20.pt")` for all of it:
`model` (parameters and rank 0's buffers), `optimizer` (the optimizer's state dict keyed by
parameter names, as `torch.distributed.checkpoint.state_dict.get_optimizer_state_dict` makes it,
so `set_state_dict` loads it; by parameter ids where names are unknown) and `ftrain` (step, world
size, the sampler's position, registered objects' state). A DDP-wrapped model's names keep DDP's
`module.` prefix.
Per-rank (FSDP2) state, where each rank's blob holds its own shards, is written the same way once
the shards are put together into whole tensors (DTensors sharded on dim d of a 1-D mesh, FSDP2's
layout, concatenated in rank order; replicated ones taken from rank 0); DCP then loads it into a
model sharded over any number of ranks (`load`: what `ftrain launch --resume` does for FSDP2 state
on another world size). Other layouts (2-D meshes) get no DCP copy. torch is imported in the
functions only: agents import this module and need torch only to finalize a checkpoint.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Any

import numpy as np

DCP_DIR = "dcp"


def state_of(blob_paths: list[str]) -> dict[str, Any] | None:
    """The whole state of a checkpoint's rank blobs (in rank order), as DCP saves it; None for a
    per-rank layout that is not put together (see the module docstring)."""
    from ftrain.snapshot import layout as lay
    from ftrain.snapshot import state as train_state

    blobs = [lay.read_blob(np.fromfile(path, dtype=np.uint8)) for path in blob_paths]
    first = blobs[0][0]
    if first.get("whole"):
        whole = _whole_tensors(blobs)
        if whole is None:
            return None
        views = whole
    else:
        views = lay.state_views(first, [(meta["slice"][0], payload) for meta, payload in blobs])
    model = {name[6:]: tensor for name, tensor in views.items() if name.startswith("model/")}
    model.update(first.get("buffers", {}))
    return {"model": model, "optimizer": _by_name(train_state.optimizer_state(views, first["optimizer"]),
                                                  first["optimizer"].get("param_names", [])),
            "ftrain": {"step": first["step"], "world_size": first["world_size"], "sampler": first["sampler"],
                       "registered": first["registered"]}}


def _by_name(optimizer: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter names, as torch.distributed.checkpoint.state_dict's
    get_optimizer_state_dict makes it (so its set_optimizer_state_dict loads it), from one keyed by
    parameter ids; as it is when the names are unknown or not unique."""
    pids = [pid for group in optimizer["param_groups"] for pid in group["params"]]
    if not names or "" in names or len(set(names)) != len(names) or sorted(pids) != list(range(len(names))):
        return optimizer
    return {"state": {names[pid]: entry for pid, entry in optimizer["state"].items()},
            "param_groups": [dict(group, params=[names[pid] for pid in group["params"]])
                             for group in optimizer["param_groups"]]}


def load(directory: str, module: Any, optimizer: Any) -> None:
    """Loads the DCP copy in `directory` into a model and its optimizer sharded in any way (FSDP2
    over another number of ranks: DCP reads each rank's part of every tensor), with torch's own
    recipe: get_state_dict, torch.distributed.checkpoint.load, set_state_dict. Every rank of the
    default process group calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(module, optimizer)
    dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=directory)  # in place
    set_state_dict(module, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


# as ftrain.snapshot.state.placements writes them: "mesh (4,) / ('S(0)',) / global (64, 16)" (str() of a
# placement: S(d) or Shard(dim=d), R or Replicate())
_PLACEMENT = re.compile(r"^mesh \((\d+),\) / \('(?:S\((\d+)\)|Shard\(dim=(\d+)\)|R|Replicate\(\))',\) / "
                        r"global \(([\d, ]*)\)$")


def _whole_tensors(blobs: list[tuple[dict[str, Any], np.ndarray]]) -> dict[str, Any] | None:
    """Whole tensors from every rank's own shards (see the module docstring), or None for a
    layout this does not put together."""
    import torch

    from ftrain.snapshot import layout as lay

    views = [lay.state_views(meta, [(0, payload)]) for meta, payload in blobs]
    placements: dict[str, str] = blobs[0][0]["optimizer"].get("placements", {})
    whole: dict[str, Any] = {}
    for name, tensor in views[0].items():
        spec = placements.get(name)
        if spec is None:  # a plain tensor: the same on every rank
            whole[name] = tensor
            continue
        match = _PLACEMENT.match(spec)
        if match is None or int(match.group(1)) != len(views):
            return None
        dim = match.group(2) or match.group(3)
        if dim is None:  # replicated
            whole[name] = tensor
            continue
        joined = torch.cat([v[name] for v in views], dim=int(dim))
        if tuple(joined.shape) != tuple(int(x) for x in match.group(4).split(",") if x.strip()):
            return None
        whole[name] = joined
    return whole


def write(checkpoint_dir: str, blob_paths: list[str]) -> str:
    """Writes `checkpoint_dir`/dcp from the rank blobs; returns its name, or "" for a layout that
    is not put together (see the module docstring)."""
    state = state_of(blob_paths)
    if state is None:
        return ""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "torch.distributed is disabled ...": one process is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=os.path.join(checkpoint_dir, DCP_DIR), no_dist=True)
    return DCP_DIR
