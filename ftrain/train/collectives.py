"""Collectives for one generation: a gloo (CPU) or NCCL (GPU) process group on a generation-
prefixed store, installed as torch.distributed's default group, and waits that can be abandoned.

Errors (a dead peer, a timeout) in ftrain's own collectives surface as `CollectiveError` to the
session, never to the user's loop. The gradient all-reduce itself lives in ftrain.train.ddp.
"""
from __future__ import annotations

import datetime
import itertools
import sys
import time
from typing import Any, Callable

import torch
from torch._C._distributed_c10d import BroadcastOptions, PrefixStore, TCPStore

from ftrain.config import parse_host_port
from ftrain.textfmt import short_reason


class CollectiveError(RuntimeError):
    """A collective of the current generation failed (peer lost, timeout, aborted)."""


def connect_store(address: str, timeout_s: float) -> TCPStore:
    host, port = parse_host_port(address, "store address")
    return TCPStore(host, port, is_master=False, wait_for_workers=False,
                    timeout=datetime.timedelta(seconds=timeout_s))


_retired: dict[int, Any] = {}  # old generations' groups, shut down and freed by their reaper threads
_retired_keys = itertools.count()


def _interface_of(host: str) -> str | None:
    """The network interface that holds the address `host` (e.g. 127.0.0.1 -> lo), or None."""
    import fcntl
    import socket
    import struct

    try:
        address = socket.gethostbyname(host)
    except OSError:
        return None
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
            if socket.inet_ntoa(raw[20:24]) == address:
                return name
    finally:
        probe.close()
    return None


def retire_default_group() -> None:
    """Unregisters torch.distributed's default group without waiting for it.

    `destroy_process_group()` shuts gloo down, which waits for collectives still blocked on a
    frozen or unreachable peer (up to the whole collective timeout). The group is unregistered
    with its shutdown skipped, then shut down and freed by a daemon thread of its own.

    Freeing matters as much as shutting down: gloo's destructor joins its worker threads, which
    stay blocked on a partitioned peer (no RST ever comes) until the collective timeout. Whichever
    thread drops the last reference runs that destructor, so the reaper keeps its reference until
    every other one is gone (the loop's `Group`, the pulse thread's local, the reducer's) and
    drops it last: the training and pulse threads never block in it."""
    import torch.distributed as dist
    from torch.distributed import ProcessGroup

    if not dist.is_initialized():
        return
    old = dist.group.WORLD
    shutdown = ProcessGroup.__dict__["shutdown"]
    ProcessGroup.shutdown = lambda self: None  # type: ignore[method-assign]
    try:
        dist.destroy_process_group()
    finally:
        setattr(ProcessGroup, "shutdown", shutdown)
    key = next(_retired_keys)
    _retired[key] = old
    del old

    def reap() -> None:
        group = _retired[key]
        try:
            group.shutdown()  # type: ignore[union-attr]
        except Exception:
            pass
        # references: `group` here, the `_retired` entry and getrefcount's own argument
        delay, deadline = 0.05, time.monotonic() + _REAP_PATIENCE_S
        while sys.getrefcount(group) > 3 and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        if sys.getrefcount(group) > 3:
            return  # held elsewhere for an hour (e.g. the user kept dist.group.WORLD): never freed here
        del _retired[key]
        del group  # the destructor runs here, on this thread

    import threading

    threading.Thread(target=reap, name="ftrain-retire-group", daemon=True).start()


_REAP_PATIENCE_S = 3600.0


def install_default_group(store: TCPStore, job_id: str, generation: int, rank: int, world_size: int,
                          timeout_s: float, bind_host: str, use_cuda: bool = False) -> torch.distributed.ProcessGroup:
    """Makes the generation's group torch.distributed's default group (so `dist.get_rank()`,
    `dist.all_reduce` and `DistributedSampler` work in the loop) and returns it. The store prefix
    includes the generation, so a rank of an older generation can never join."""
    import os

    import torch.distributed as dist

    retire_default_group()
    if "GLOO_SOCKET_IFNAME" not in os.environ:
        interface = _interface_of(bind_host)
        if interface:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    prefix = PrefixStore(f"ftrain/{job_id}/g{generation}/", store)
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if use_cuda else "gloo", store=prefix, rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as error:
        raise CollectiveError(f"building the process group of generation {generation} failed: "
                              f"{short_reason(str(error))}") from None
    group = dist.group.WORLD
    assert group is not None
    _mark_ours()
    return group


def install_single_process_group() -> None:
    """A plain `python train.py` run: a world of one, so torch.distributed calls in the loop work."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
        _mark_ours()


_OURS: set[int] = set()  # ids of the default groups ftrain installed (the script's own are not among them)


def _mark_ours() -> None:
    import torch.distributed as dist

    if dist.group.WORLD is not None:
        _OURS.add(id(dist.group.WORLD))


def script_owns_default_group() -> bool:
    """True when the script made the default group itself (torchrun style), not ftrain."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and id(dist.group.WORLD) not in _OURS


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
            raise CollectiveError(f"{what} failed: {short_reason(str(error))}") from None
        finally:
            self.waiting_since = None

    def allreduce(self, tensor: torch.Tensor, what: str = "all-reduce") -> None:
        self.wait(self.pg.allreduce([tensor]), what)

    def send(self, tensor: torch.Tensor, dst: int, tag: int) -> torch.distributed.Work:
        """Posts a point-to-point send (finish it with `wait_p2p`)."""
        return self.pg.send([tensor], dst, tag)

    def recv(self, tensor: torch.Tensor, src: int, tag: int) -> torch.distributed.Work:
        """Posts a point-to-point receive (finish it with `wait_p2p`)."""
        return self.pg.recv([tensor], src, tag)

    def wait_p2p(self, work: torch.distributed.Work, what: str) -> None:
        """Waits for a send or receive. gloo's point-to-point work says it is complete only once
        waited on, so this blocks in `wait()`, bounded by the group's timeout (a lost peer's closed
        connection fails it at once), instead of polling as `wait` does."""
        if self.abandoned():
            raise CollectiveError(f"{what} abandoned: the generation moved on")
        self.waiting_since = time.monotonic()
        try:
            work.wait()
        except RuntimeError as error:
            raise CollectiveError(f"{what} failed: {short_reason(str(error))}") from None
        finally:
            self.waiting_since = None

    def broadcast(self, tensor: torch.Tensor, root: int, what: str = "broadcast") -> None:
        options = BroadcastOptions()
        options.rootRank = root
        options.rootTensor = 0
        self.wait(self.pg.broadcast([tensor], options), what)


def _create_discarded_backend(common_opts: Any, backend_opts: Any) -> Any:
    from torch._C._distributed_c10d import FakeProcessGroup

    return FakeProcessGroup._create_internal(common_opts.group_rank, common_opts.group_size,  # type: ignore[call-arg]
                                             backend_opts)  # torch's stub lacks the options argument


def install_discarded_group(rank: int, world_size: int) -> None:
    """A collective of this step failed (a lost peer): the step will be discarded and redone after
    recovery. torch.distributed's default group becomes one whose collectives return at once and
    leave tensors as they are (same rank and world size), so the rest of the loop body of the
    discarded step runs to its end instead of raising inside the user's code."""
    import torch.distributed as dist

    if not _discarded_backend_registered:
        try:
            dist.Backend.register_backend(dist.Backend.FAKE, _create_discarded_backend, extended_api=True,
                                          devices=["cpu", "cuda"])
        except (ValueError, RuntimeError):  # registered already (e.g. by torch's own test helpers)
            pass
        _discarded_backend_registered.append(True)
    retire_default_group()
    dist.init_process_group(dist.Backend.FAKE, store=torch.distributed.HashStore(), rank=rank, world_size=world_size)
    _mark_ours()


_discarded_backend_registered: list[bool] = []
