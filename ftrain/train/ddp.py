"""`session.model`: DistributedDataParallel semantics over the current generation's group.

When `loss.backward()` returns, every rank holds the averaged gradient, as under
`torch.nn.parallel.DistributedDataParallel`, so `clip_grad_norm_`, grad-norm logging and
`GradScaler` see what they see under DDP. Gradients are copied into fixed buckets (reverse
parameter order, one dtype and device per bucket, at most `bucket_cap_mb`); a bucket's
all-reduce starts as soon as its last gradient is accumulated, in bucket order on every rank,
so communication overlaps the rest of the backward pass. The bucket layout never changes, so
the same world size always sums in the same order and a replayed step is bit-identical.

Differences from DDP, each deliberate:
* A failed collective (a lost peer) does not raise inside `backward()`: the gradients are left
  as they were, the error is kept on the reducer and the session discards the step after the
  loop body returns (the body's remaining code sees local gradients for that one step).
* The process group can change between steps (a new generation): `set_group()`.
* Parameters that got no gradient on a rank contribute zeros; after the all-reduce every
  parameter has a gradient (DDP with `find_unused_parameters=True` behaves alike on values).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from ftrain.train.collectives import CollectiveError, Group

DEFAULT_BUCKET_CAP_MB = 25.0


@dataclass
class _Bucket:
    params: list[torch.nn.Parameter]
    offsets: list[int]
    numel: int
    dtype: torch.dtype
    device: torch.device
    flat: torch.Tensor | None = None
    ready: set[int] = field(default_factory=set)  # indices into params
    work: Any = None


def plan_buckets(params: list[torch.nn.Parameter], cap_bytes: int) -> list[_Bucket]:
    """Buckets in reverse parameter order (the order backward produces gradients), split by dtype
    and device and by `cap_bytes`; deterministic for the same parameters."""
    buckets: list[_Bucket] = []
    open_by_key: dict[tuple[torch.dtype, torch.device], _Bucket] = {}
    for p in reversed(params):
        key = (p.dtype, p.device)
        bucket = open_by_key.get(key)
        if bucket is not None and bucket.numel and (bucket.numel + p.numel()) * p.element_size() > cap_bytes:
            bucket = None
        if bucket is None:
            bucket = _Bucket([], [], 0, p.dtype, p.device)
            buckets.append(bucket)
            open_by_key[key] = bucket
        bucket.params.append(p)
        bucket.offsets.append(bucket.numel)
        bucket.numel += p.numel()
    return buckets


class Reducer:
    """Averages gradients during backward over a `Group` (see the module docstring)."""

    def __init__(self, params: list[torch.nn.Parameter], bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.buckets = plan_buckets(self.params, int(bucket_cap_mb * 2**20))
        self._where: dict[int, tuple[int, int]] = {}  # id(param) -> (bucket, index)
        for b, bucket in enumerate(self.buckets):
            for i, p in enumerate(bucket.params):
                self._where[id(p)] = (b, i)
        self.group: Group | None = None
        self.weight = 1.0  # this rank's share of the step's samples (count / total count)
        self.error: CollectiveError | None = None
        self.comm_wait_s = 0.0  # time spent waiting for the all-reduce at the end of backward
        self.synced_backwards = 0  # backward passes whose gradients were averaged
        self._armed = False
        self._queued = False
        self._next_launch = 0
        self.on_error: Callable[[CollectiveError], None] | None = None  # called once per failed step
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    # -- configuration --------------------------------------------------------------------------
    def set_group(self, group: Group | None) -> None:
        """A new generation's group; the flat buffers are dropped (an abandoned collective may still
        write into the old ones)."""
        self.group = group
        self.error = None
        self._armed = self._queued = False
        for bucket in self.buckets:
            bucket.flat, bucket.work = None, None
            bucket.ready.clear()

    def arm(self) -> None:
        """The next backward pass averages gradients (called by a forward outside `no_sync`)."""
        if self.group is not None and self.group.size > 1:
            self._armed = True

    def fail(self, error: CollectiveError) -> None:
        """A collective of this step failed: the step is discarded after the loop body returns."""
        if self.error is None:
            self.error = error
            if self.on_error is not None:
                self.on_error(error)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    # -- backward -------------------------------------------------------------------------------
    def _on_grad(self, param: torch.Tensor) -> None:
        if not self._armed:
            return
        if not self._queued:
            self._begin_reduction()
            torch.autograd.Variable._execution_engine.queue_callback(self._finish_backward)
        b, i = self._where[id(param)]
        bucket = self.buckets[b]
        if i in bucket.ready:
            return
        self._fill(bucket, i)
        bucket.ready.add(i)
        self._launch_ready()

    def _begin_reduction(self) -> None:
        """A backward pass starts reducing: no bucket is ready or launched yet."""
        self._queued = True
        self._next_launch = 0
        for bucket in self.buckets:
            bucket.ready.clear()
            bucket.work = None

    def _flat(self, bucket: _Bucket) -> torch.Tensor:
        if bucket.flat is None:
            bucket.flat = torch.zeros(bucket.numel, dtype=bucket.dtype, device=bucket.device)
        return bucket.flat

    def _fill(self, bucket: _Bucket, i: int) -> None:
        p, offset = bucket.params[i], bucket.offsets[i]
        view = self._flat(bucket)[offset:offset + p.numel()]
        if p.grad is None:
            view.zero_()
        else:  # as DDP: the bucket holds grad * (1 / world size), here grad * this rank's share
            torch.mul(p.grad.reshape(-1), self.weight, out=view)

    def _launch_ready(self) -> None:
        """Starts the all-reduce of every complete bucket, strictly in bucket order."""
        while self._next_launch < len(self.buckets):
            bucket = self.buckets[self._next_launch]
            if len(bucket.ready) < len(bucket.params) or self.error is not None:
                return
            self._launch(bucket)
            self._next_launch += 1

    def _launch(self, bucket: _Bucket) -> None:
        assert self.group is not None
        try:
            bucket.work = self.group.pg.allreduce([self._flat(bucket)])
        except RuntimeError as error:
            self.fail(CollectiveError(f"gradient all-reduce failed to start: {str(error).splitlines()[0][:300]}"))

    def _finish_backward(self) -> None:
        """End of backward: unused parameters contribute zeros, every bucket is reduced and the
        averaged gradients are written back into `param.grad`."""
        self._armed = self._queued = False
        started = time.perf_counter()
        try:
            for bucket in self.buckets:
                for i in range(len(bucket.params)):
                    if i not in bucket.ready:
                        self._fill(bucket, i)
                        bucket.ready.add(i)
            self._launch_ready()
            if self.error is not None:
                return
            assert self.group is not None
            for bucket in self.buckets:
                try:
                    self.group.wait(bucket.work, "gradient all-reduce")
                except CollectiveError as error:
                    self.fail(error)
                    return
            for bucket in self.buckets:
                flat = self._flat(bucket)
                for p, offset in zip(bucket.params, bucket.offsets):
                    averaged = flat[offset:offset + p.numel()].view_as(p)
                    if p.grad is None:
                        p.grad = averaged.clone()
                    else:
                        p.grad.copy_(averaged)
            self.synced_backwards += 1
        finally:
            for bucket in self.buckets:
                bucket.work = None
            self.comm_wait_s += time.perf_counter() - started

    def reduce_zero(self) -> None:
        """A rank with no samples in a step (the epoch's tail): joins the all-reduce with zero
        gradients, as if it had run a backward pass."""
        for p in self.params:
            p.grad = None
        self.arm()
        if not self._armed:
            return
        self._begin_reduction()
        self._finish_backward()


class DistributedModule(torch.nn.Module):
    """The user's module with DDP semantics: `session.model(...)`, `.module`, `.no_sync()`.

    Like DDP, a forward pass in training mode with gradients enabled first makes the module's
    buffers (BatchNorm statistics) equal to rank 0's, then arms the reducer so that the next
    backward averages gradients; inside `no_sync()` neither happens and gradients accumulate
    locally until the first backward outside it.
    """

    def __init__(self, module: torch.nn.Module, reducer: Reducer) -> None:
        super().__init__()
        self.module = module
        self.reducer = reducer
        self.require_backward_grad_sync = True
        self._buffers_to_sync = [b for b in module.buffers() if b.numel()]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled() and self.require_backward_grad_sync:
            group = self.reducer.group
            if self.module.training and self._buffers_to_sync and group is not None and group.size > 1 \
                    and self.reducer.error is None:
                try:
                    for buffer in self._buffers_to_sync:
                        group.broadcast(buffer.data, 0, "buffer broadcast")
                except CollectiveError as error:
                    self.reducer.fail(error)
            self.reducer.arm()
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Gradient accumulation: backward passes inside accumulate locally, as with DDP."""
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous
