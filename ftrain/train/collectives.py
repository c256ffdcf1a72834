"""Collectives for one generation: a gloo (CPU) or NCCL (GPU) process group on a generation-
prefixed store, and a deterministic flat-buffer gradient all-reduce.

The gradient layout is fixed (parameter order, one flat buffer per dtype), so the same world
size always sums in the same order: a run with failures stays bit-identical to one without.
Errors (a dead peer, a timeout) surface as `CollectiveError` to the session, never to the
user's loop.
"""
from __future__ import annotations

import datetime
import time
from typing import Callable, Sequence

import torch
from torch._C._distributed_c10d import BroadcastOptions, PrefixStore, ProcessGroupGloo, TCPStore

from ftrain.config import parse_host_port


class CollectiveError(RuntimeError):
    """A collective of the current generation failed (peer lost, timeout, aborted)."""


def connect_store(address: str, timeout_s: float) -> TCPStore:
    host, port = parse_host_port(address, "store address")
    return TCPStore(host, port, is_master=False, wait_for_workers=False,
                    timeout=datetime.timedelta(seconds=timeout_s))


def build_group(store: TCPStore, job_id: str, generation: int, rank: int, world_size: int, timeout_s: float,
                bind_host: str, use_cuda: bool = False) -> torch.distributed.ProcessGroup:
    prefix = PrefixStore(f"ftrain/{job_id}/g{generation}/", store)
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        if use_cuda:
            from torch._C._distributed_c10d import ProcessGroupNCCL

            options = ProcessGroupNCCL.Options()
            options._timeout = timeout
            return ProcessGroupNCCL(prefix, rank, world_size, options)
        options = ProcessGroupGloo._Options()
        options._devices = [ProcessGroupGloo.create_device(hostname=bind_host)]
        options._timeout = timeout
        return ProcessGroupGloo(prefix, rank, world_size, options)
    except RuntimeError as error:
        raise CollectiveError(f"building the process group of generation {generation} failed: {error}") from error


class Group:
    """A generation's process group whose waits can be abandoned.

    gloo's abort() does not close its sockets, so a rank blocked on a dead or departed peer would
    sit out the whole collective timeout. Waits here poll instead and give up as soon as
    `abandoned()` says the generation moved on (the coordinator's watcher sets it).
    """

    def __init__(self, pg: torch.distributed.ProcessGroup, abandoned: Callable[[], bool]) -> None:
        self.pg = pg
        self.abandoned = abandoned
        self.rank = pg.rank()
        self.size = pg.size()
        self.waiting_since: float | None = None  # read by the trainer's pulse (hang attribution)

    def wait(self, work: torch.distributed.Work, what: str) -> None:
        delay = 2e-5
        self.waiting_since = time.monotonic()
        try:
            while not work.is_completed():
                if self.abandoned():
                    raise CollectiveError(f"{what} abandoned: the generation moved on")
                time.sleep(delay)
                delay = min(delay * 2, 2e-3)
            work.wait()
        except RuntimeError as error:
            if isinstance(error, CollectiveError):
                raise
            raise CollectiveError(f"{what} failed: {str(error).splitlines()[0][:300]}") from None
        finally:
            self.waiting_since = None

    def allreduce(self, tensor: torch.Tensor, what: str = "all-reduce") -> None:
        self.wait(self.pg.allreduce([tensor]), what)

    def broadcast(self, tensor: torch.Tensor, root: int, what: str = "broadcast") -> None:
        options = BroadcastOptions()
        options.rootRank = root
        options.rootTensor = 0
        self.wait(self.pg.broadcast([tensor], options), what)


class GradientSynchronizer:
    """Averages gradients over the group through one flat buffer per dtype (fixed layout)."""

    def __init__(self, params: Sequence[torch.nn.Parameter]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self._groups: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
        for p in self.params:
            self._groups.setdefault((p.dtype, p.device), []).append(p)
        self._flats: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def drop_buffers(self) -> None:
        """Forgets the flat buffers: an abandoned collective may still write into the old ones."""
        self._flats.clear()

    def allreduce(self, group: Group | None, local_weight: float, total_weight: float) -> None:
        """grad <- sum_r(local_weight_r * grad_r) / total_weight, for every parameter."""
        for key, params in self._groups.items():
            numel = sum(p.numel() for p in params)
            flat = self._flats.get(key)
            if flat is None or flat.numel() != numel:
                flat = self._flats[key] = torch.zeros(numel, dtype=key[0], device=key[1])
            offset = 0
            for p in params:
                n = p.numel()
                if p.grad is None:
                    flat[offset:offset + n].zero_()
                else:
                    flat[offset:offset + n].copy_(p.grad.reshape(-1))
                offset += n
            if local_weight != 1.0:
                flat.mul_(local_weight)
            if group is not None:
                group.allreduce(flat, "gradient all-reduce")
            if total_weight != 1.0:
                flat.div_(total_weight)
            offset = 0
            for p in params:
                n = p.numel()
                if p.grad is None:
                    p.grad = torch.empty_like(p)
                p.grad.copy_(flat[offset:offset + n].view_as(p))
                offset += n


def broadcast_buffers(group: Group, module: torch.nn.Module) -> None:
    """Makes module buffers (e.g. BatchNorm statistics) identical to rank 0's, as DDP does."""
    for buffer in module.buffers():
        if buffer.numel():
            group.broadcast(buffer.data, 0, "buffer broadcast")
