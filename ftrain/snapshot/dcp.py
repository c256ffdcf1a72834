"""A durable checkpoint's state as a `torch.distributed.checkpoint` (DCP) directory.

The checkpoint's rank files are ftrain snapshot blobs (what `--resume` reads, bit for bit). When
the state is replicated (plain ftrain or the script's own DDP: each blob holds a 1/N slice) the
finalizing agent also assembles the whole state and writes it with DCP into `dcp/` beside them,
so standard tools load it without ftrain:

    state = {"model": model.state_dict()}
    torch.distributed.checkpoint.load(state, checkpoint_id="CKPT/step-00000020/dcp")
    model.load_state_dict(state["model"])

or `torch.distributed.checkpoint.format_utils.dcp_to_torch_save(dir, "step20.pt")` for all of it:
`model` (parameters and rank 0's buffers), `optimizer` (the optimizer's state dict, parameter ids
as keys) and `ftrain` (step, world size, the sampler's position, registered objects' state).
Per-rank (FSDP2) state is not written in DCP: each rank's blob holds its own shards, and
resharding them is left to a later version. torch is imported only here, by the one agent that
finalizes a checkpoint.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

DCP_DIR = "dcp"


def state_of(blob_paths: list[str]) -> dict[str, Any] | None:
    """The whole replicated state of a checkpoint's rank blobs (in rank order), as DCP saves it;
    None when the blobs hold per-rank (FSDP2) state."""
    from ftrain.snapshot import layout as lay
    from ftrain.snapshot import state as train_state

    blobs = [lay.read_blob(np.fromfile(path, dtype=np.uint8)) for path in blob_paths]
    first = blobs[0][0]
    if first.get("whole"):
        return None
    flat = lay.assemble(first["total"], [(meta["slice"][0], payload) for meta, payload in blobs])
    entries = tuple(lay.TensorEntry(*e) for e in first["layout"])
    views = lay.tensors_from_flat(lay.StateLayout(entries, first["total"]), flat)
    model = {name[6:]: tensor for name, tensor in views.items() if name.startswith("model/")}
    model.update(first.get("buffers", {}))
    return {"model": model, "optimizer": train_state.optimizer_state(views, first["optimizer"]),
            "ftrain": {"step": first["step"], "world_size": first["world_size"], "sampler": first["sampler"],
                       "registered": first["registered"]}}


def write(checkpoint_dir: str, blob_paths: list[str]) -> str:
    """Writes `checkpoint_dir`/dcp from the rank blobs; returns its name, or "" for per-rank state."""
    state = state_of(blob_paths)
    if state is None:
        return ""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "torch.distributed is disabled ...": one process is the intent
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=os.path.join(checkpoint_dir, DCP_DIR), no_dist=True)
    return DCP_DIR
