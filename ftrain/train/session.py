"""The Session: a user's existing torch loop, made fault tolerant with three added lines.

    session = ftrain.init(model, optimizer, dataset=ds, batch_size=32, seed=0, num_workers=2)
    for step, batch in session.steps(total_steps):
        loss = loss_fn(session.model(batch[0]), batch[1]); loss.backward()   # averaged, as DDP
        optimizer.step(); optimizer.zero_grad()                              # the user's optimizer
    session.finish()

`ftrain.init` joins the first generation (rank and world size are known when it returns),
makes its process group torch.distributed's default group, and restores the newest committed
snapshot or broadcasts rank 0's initial state. `session.model` has DDP semantics
(ftrain.train.ddp); `session.optimizer` is the user's optimizer itself, and no call in the
loop is mandatory. `session.steps` hands out batches (ftrain.train.loader), captures
snapshots, and, when a peer fails, discards the failed step after the loop body returns,
re-forms, restores and replays: replayed steps are marked by `session.replaying`. A `break` out
of `session.steps()` on every rank at the same step ends the job cleanly.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import random
import sys
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ftrain import metrics
from ftrain.config import ConfigError, TrainerEnv
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.snapshot import layout as lay
from ftrain.snapshot.capture import SnapshotEngine
from ftrain.snapshot.rebuild import SnapshotLost
from ftrain.snapshot.transfer import AgentPool
from ftrain.snapshot import local_copy, state as train_state
from ftrain.train import collectives, faults
from ftrain.textfmt import short_reason
from ftrain.train.client import CoordinatorClient, JobFailed
from ftrain.train.data import ElasticSampler, make_collate
from ftrain.train.ddp import DEFAULT_BUCKET_CAP_MB, DistributedModule, Reducer
from ftrain.train.loader import BatchFeed, check_dataset
from ftrain.train.restore import Restorer

log = logging.getLogger("ftrain.session")


class _StepFailed(Exception):
    pass


_CURRENT: "weakref.ref[Session] | None" = None  # the session the process-wide hooks below act for
_PREVIOUS_HOOK = sys.excepthook


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """An exception escaped the trainer's script. The job's own end (JobFailed: the coordinator
    already says why, once) exits quietly; the user's own exception is reported to the coordinator
    (the same one after a restart is a bug and fails the job) and its traceback printed once per
    attempt. The process then exits at once (code 1): no shutdown noise from ftrain's threads."""
    session = _CURRENT() if _CURRENT is not None else None
    if session is None or session.client is None or issubclass(exc_type, KeyboardInterrupt):
        _PREVIOUS_HOOK(exc_type, exc, tb)
        return
    # torch.distributed's own hook wraps this one and buffers sys.stderr until it returns (never: this
    # one exits), so write to the process's real stderr
    if sys.__stderr__ is not None:
        sys.stderr = sys.__stderr__
    if issubclass(exc_type, JobFailed):
        log.info("rank %d: the job failed: %s", session.rank, exc)
    elif session.recovery == "restart" and (session._moved.is_set() or _is_distributed_error(exc)):
        # restart mode: the script's own collective failed because a peer was lost: a fault, not a bug.
        # Every trainer is restarted; this one only says so first
        log.warning("rank %d: %s: %s; waiting to be restarted", session.rank, exc_type.__name__, short_reason(str(exc)))
        session._report_failure(f"{exc_type.__name__}: {exc}")
        session._await_restart()
    elif exc_type.__module__.startswith("ftrain.") and not issubclass(exc_type, ConfigError):
        # ftrain's own error (coordinator unreachable...); a ConfigError is the script's doing (reported)
        print(f"ftrain: rank {session.rank}: {exc_type.__name__}: {exc}", file=sys.stderr)
    else:
        print_traceback, step = session._report_user_error(exc)
        if print_traceback:
            _PREVIOUS_HOOK(exc_type, exc, tb)
        else:
            print(f"ftrain: rank {session.rank} raised {exc_type.__name__}({str(exc)[:200]!r}) at step {step} "
                  f"(the same traceback as another rank's, printed once)", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(1)


def _is_distributed_error(error: BaseException) -> bool:
    """A failed collective or rendezvous of torch.distributed (gloo/NCCL: a peer went away)."""
    dist_error = getattr(torch.distributed, "DistError", None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(marker in text for marker in (
        "Connection closed by peer", "Connection reset by peer", "gloo/transport", "ProcessGroupGloo", "NCCL error"))


def _at_exit() -> None:
    """The script ended without session.finish() after leaving the loop: end the job there."""
    session = _CURRENT() if _CURRENT is not None else None
    if session is not None and session._pending_finish and not session._closed.is_set():
        try:
            session.finish()
        except BaseException as error:  # the interpreter is exiting: say it, no traceback
            print(f"ftrain: {error}", file=sys.stderr)


def _install_hooks(session: "Session") -> None:
    global _CURRENT
    first = _CURRENT is None
    _CURRENT = weakref.ref(session)
    if first:
        sys.excepthook = _excepthook
        atexit.register(_at_exit)


class Session:
    """A fault-tolerant training session (see the module docstring).

    Public attributes: `model` (DDP semantics), `optimizer` (the user's own), `rank`,
    `world_size`, `generation`, `step` (steps done), `resumed_from` (the step this process's
    state was restored to when it joined: a recovery or `ftrain launch --resume`; None when it
    started fresh at step 0), `replaying` (True while a step whose body
    already ran once is redone after a recovery), `discarding` (True when the current step has
    failed and will be redone), `sampler` (the elastic sampler's position).

    Its step context, for the loop drivers (ftrain.train.async_worker): `adopt` (a generation),
    `inject_faults` (a step's fault point), `begin_compute` / `end_compute` (the loop body),
    `take_compute`, `mark_committed`, `report_state`.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dataset: Any = None,
                 batch_size: int = 32, seed: int = 0, *, collate_fn: Callable | None = None, shuffle: bool = True,
                 num_workers: int = 0, pin_memory: bool = False, prefetch_factor: int | None = None,
                 worker_init_fn: Callable | None = None, multiprocessing_context: Any = None,
                 snapshot_every: int | None = None, connect_timeout_s: float | None = None,
                 local_steps: int | None = None, bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB,
                 on_generation: Callable[["Session"], None] | None = None) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"ftrain.init: model must be a torch.nn.Module; got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"ftrain.init: optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        # a torchrun-style script (`ftrain launch --recovery restart`) made its own default group and
        # may wrap its own DDP / FSDP2: ftrain then adopts that group and leaves the gradients to it
        self._user_group = collectives.script_owns_default_group()
        if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not self._user_group:
            raise TypeError("ftrain.init: got a DistributedDataParallel module; pass the plain module "
                            "(session.model averages gradients as DDP does), or build your own DDP after "
                            "dist.init_process_group() under `ftrain launch --recovery restart`")
        if dataset is not None:
            check_dataset(dataset)
        wrapped = model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        self.module = model
        self.optimizer = optimizer
        self.seed = seed
        self.sampler = ElasticSampler(len(dataset), batch_size, seed, shuffle) if dataset is not None else None
        self._collate = make_collate(dataset, collate_fn) if dataset is not None else None  # async mode's shards
        self._feed = BatchFeed(dataset, self.sampler, num_workers=num_workers, collate_fn=collate_fn,
                               pin_memory=pin_memory, prefetch_factor=prefetch_factor, worker_init_fn=worker_init_fn,
                               multiprocessing_context=multiprocessing_context) \
            if dataset is not None and self.sampler is not None else None
        self.registered: dict[str, Any] = {}
        self._restored_registered: dict[str, Any] = {}  # restored before register() was called
        self.env = TrainerEnv.from_environ()
        self.rank, self.world_size, self.generation, self.step = 0, 1, -1, 0
        self.resumed_from: int | None = None  # the step the state was restored to when this process joined
        self._joined = False
        self.replaying = False
        self.batch_shares: list[int] = []
        self.on_generation = on_generation
        self._snapshot_every_override = snapshot_every
        self.local_steps = local_steps  # async mode: local steps per push (None: FTRAIN_LOCAL_STEPS, else 10)
        self._async: Any = None  # the AsyncWorker while the job runs --mode async
        self.snapshot_every = snapshot_every or 1
        self._group: collectives.Group | None = None
        # with the script's own group its DDP / FSDP2 reduces the gradients: no hooks of ftrain's
        self.reducer = Reducer([] if self._user_group else list(model.parameters()), bucket_cap_mb)
        self.reducer.on_error = lambda _: collectives.install_discarded_group(self.rank, self.world_size)
        self.model: torch.nn.Module = wrapped if self._user_group else DistributedModule(model, self.reducer)
        # sharded state (FSDP2 DTensors): each rank captures and restores all of its own; replicated
        # state (the script's own DDP too) is captured 1/N per rank as usual
        self._sharded = any(hasattr(t, "placements") for t in model.state_dict().values())
        self._param_names = train_state.param_names(model, optimizer)
        self.recovery = "inprocess"  # the job's recovery mode (from the generation's config)
        self._high_water = 0  # one past the highest step whose loop body has run
        self._compute_start = self._comm_before = 0.0
        self._faults = faults.FaultPlan()
        self._committed_step = -1
        self._last_capture: int | None = None
        self._layout_key: list[tuple[str, torch.dtype, torch.Size]] = []
        self._state_layout = lay.StateLayout((), 0)
        self._moved = threading.Event()
        self._closed = threading.Event()
        self._active_steps: Any = None  # weak reference to the running steps() generator
        self._exit_error: BaseException | None = None  # a failure while leaving the loop early
        self._pending_finish = False  # the loop was left early: finish() (or the script's end) ends the job
        self._body_step: int | None = None  # the step whose loop body runs (kept when the body raised)
        self._first: pb.GenerationAssignment | None = None
        self._warned_empty = False
        self.stats = {"recoveries": 0, "failed_steps": 0, "stall_s": 0.0, "captures": 0}
        self._compute_s, self._compute_n = 0.0, 0  # compute time since the last capture (straggler detection)
        self._report_extras: dict[int, tuple[float, int]] = {}  # step -> (mean compute s, steps) for its report
        self._last_stall_s = 0.0
        self.reporter = metrics.TrainerReporter("", "", "", 0)  # per-node metrics via the agent (off without one)
        self.use_cuda = any(p.is_cuda for p in model.parameters())
        self._buffer_names = {name for name, b in model.named_buffers()}
        self._step_hook = optimizer.register_step_pre_hook(lambda *_: self._before_optimizer_step())
        self._store: Any = None
        self._store_address = ""
        self._members: list[pb.Member] = []
        if self.env is None:
            self.trainer_uid = f"local/0/{os.getpid()}"
            self.client = None
            self.engine = SnapshotEngine("local", self.trainer_uid, "local", None, None)
            self.restorer = Restorer(self.engine, model, optimizer, self._buffer_names, self._sharded, self.stats,
                                     self._live_state)
            self._start_local()
            return
        timeout = connect_timeout_s or float(os.environ.get("FTRAIN_CONNECT_TIMEOUT", "30"))
        # restart mode: the agent joined the generation for this process before starting it (torchrun's
        # variables had to be set first); the process takes over that identity
        self.trainer_uid = os.environ.get("FTRAIN_TRAINER_UID") or f"{self.env.node_id}/{self.env.local_rank}/{os.getpid()}"
        if os.environ.get("FTRAIN_TRAINER_UID") and os.environ.get("FTRAIN_GENERATION", "").isdigit():
            self.generation = int(os.environ["FTRAIN_GENERATION"]) - 1
        self.client = CoordinatorClient(self.env, connect_timeout_s=timeout)
        _install_hooks(self)
        self.agents = AgentPool(self.env.token, self.env.job_id)
        self.engine = SnapshotEngine(self.env.job_id, self.trainer_uid, self.env.node_id, self.agents,
                                     self._report_snapshot, self._await_commit)
        self.restorer = Restorer(self.engine, model, optimizer, self._buffer_names, self._sharded, self.stats,
                                 self._live_state)
        self.reporter = metrics.TrainerReporter(os.environ.get("FTRAIN_AGENT_ADDRESS", ""), self.env.token,
                                                self.env.job_id, self.env.local_rank)
        self._start_pulse()
        first = self.client.join(self.trainer_uid, self.generation)
        if first.status == pb.ASSIGNMENT_STATUS_OK and first.config.mode == "async":  # no process group: push/pull every H steps
            self.model = model  # nothing is averaged in async mode: each worker steps on its own
            self.reducer.close()
            self.rank, self.world_size, self.generation = first.rank, first.world_size, first.generation
            self._first = first
            return
        self._recover(first=True, pending=first)

    # -- public API --------------------------------------------------------------------------
    @property
    def discarding(self) -> bool:
        """True once a collective of the current step has failed (a peer was lost): the step is
        discarded when the loop body returns and redone after recovery. Until then
        torch.distributed's collectives return at once and leave tensors as they are."""
        return self.reducer.error is not None

    def register(self, name: str, obj: Any) -> None:
        """Adds an object with state_dict()/load_state_dict() (scheduler, scaler...) to the snapshots.
        When `ftrain.init` restored a snapshot that holds this name, its state is loaded now."""
        if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
            raise TypeError(f"session.register({name!r}, ...): the object needs state_dict() and load_state_dict()")
        if name in self.registered and self.registered[name] is not obj:
            raise ValueError(f"session.register: the name {name!r} is already taken; pick another")
        self.registered[name] = obj
        if name in self._restored_registered:
            obj.load_state_dict(self._restored_registered.pop(name))

    def global_batch_indices(self) -> list[list[int]]:
        """Dataset indices of every rank's part of the current step's global batch."""
        if self._async is not None:
            return self._async.global_batch_indices()
        assert self.sampler is not None
        return self.sampler.global_indices(self.world_size, self.batch_shares or None)

    def steps(self, total_steps: int) -> Iterator[tuple[int, Any]]:
        """Yields (step, batch) until `total_steps` steps are done; resumes at the right step after a
        recovery. Leaving the loop early (`break`) on every rank at the same step ends the job."""
        if not isinstance(total_steps, int) or total_steps < 0:
            raise ValueError(f"session.steps: total_steps must be a whole number >= 0; got {total_steps!r}")
        if self._closed.is_set():
            raise RuntimeError("session.steps: the session is finished; call ftrain.init again for a new job")
        if self.env is None:
            generator = self._local_steps(total_steps)
        elif self._first is not None:
            from ftrain.train.async_worker import AsyncWorker

            first, self._first = self._first, None
            self._async = AsyncWorker(self, self._collate, self._closed, self.local_steps)
            generator = self._async.run(total_steps, first)
        else:
            generator = self._sync_steps(total_steps)
        self._active_steps = weakref.ref(generator)
        return generator

    def finish(self) -> None:
        """Ends the session (also `with ftrain.init(...) as session:`). A loop left early whose
        generator is still open is closed first, so the job ends at that step."""
        if self._closed.is_set():
            return
        generator = self._active_steps() if self._active_steps is not None else None
        if generator is not None and generator.gi_frame is not None and not generator.gi_running:
            generator.close()
        if self._pending_finish:
            self._pending_finish = False
            self._end_job_after_break()
        self._closed.set()
        self.report_state()
        self.reporter.close()
        self.engine.close()
        self._step_hook.remove()
        if self.client is not None:
            self.client.close()
        if self._exit_error is not None:
            error, self._exit_error = self._exit_error, None
            raise error

    @property
    def _coordinator(self) -> CoordinatorClient:
        """The coordinator client of a session an agent started (a plain `python` run has none)."""
        assert self.client is not None, "this session runs without a coordinator"
        return self.client

    @property
    def _env(self) -> TrainerEnv:
        assert self.env is not None, "this session runs without a coordinator"
        return self.env

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        if exc_type is not None and not issubclass(exc_type, (GeneratorExit, StopIteration)):
            return  # an exception escapes the script: a failure (reported by the excepthook), not a job end
        self.finish()

    # -- the step ----------------------------------------------------------------------------
    def _sync_steps(self, total_steps: int) -> Iterator[tuple[int, Any]]:
        while True:
            try:
                if self.step >= total_steps:
                    self._finish_job()
                    return
                if self._moved.is_set():
                    raise _StepFailed("the generation moved on")
                self.inject_faults()
                step_started = time.perf_counter()
                batch, count = self._next_batch(total_steps)
                self._begin_step(count)
                if count:
                    self.replaying = self.step < self._high_water
                    self._body_step = self.step
                    try:
                        yield self.step, batch
                    except GeneratorExit:
                        self._left_early(total_steps)
                        raise
                    finally:
                        self.replaying = False
                    self._body_step = None
                else:  # nothing left for this rank in the epoch's tail: it joins with a zero gradient
                    self._empty_step()
                self.end_compute()
                if self.reducer.error is not None:
                    raise self.reducer.error
                self._advance()
                self.reporter.step_done(time.perf_counter() - step_started)
                self.report_state()
                if self.step % self.snapshot_every == 0 and self.step < total_steps:
                    self._capture()
            except (_StepFailed, collectives.CollectiveError, SnapshotLost) as error:
                reason = str(error)
            else:
                continue
            # outside the except block, so the failed step's frames (and its process group) are released
            self.stats["failed_steps"] += 1
            log.warning("rank %d: step %d failed (%s); recovering", self.rank, self.step, short_reason(reason))
            self._report_failure(reason)
            self._recover(first=False)

    def _advance(self) -> None:
        if self.sampler is not None:
            self.sampler.advance(self.world_size, self.batch_shares or None)
        self.step += 1
        self._high_water = max(self._high_water, self.step)

    def _finish_job(self) -> None:
        """The last step is done: commit its snapshot, then tell the coordinator."""
        if self._committed_step != self.step:
            self._capture_and_wait()
        self._coordinator.report_finished(pb.FinishedReport(
            trainer_uid=self.trainer_uid, generation=self.generation, rank=self.rank, step=self.step))

    def _left_early(self, total_steps: int) -> None:
        """The loop left `session.steps()` during step `self.step` (a break, or an exception from
        the loop body): that step counts as done. The job ends there (its state committed) at
        finish(), `with`'s end or the script's end; an exception that escapes the script instead
        is a failure (see _excepthook). A failure is kept for finish()."""
        if sys.is_finalizing():  # the interpreter is exiting (e.g. after an exception): no job end
            return
        try:
            self.end_compute()
            if self.reducer.error is not None:
                raise RuntimeError(
                    f"ftrain: a peer failed during step {self.step}, the step at which the loop was left; the step "
                    f"cannot be replayed after a break, so this trainer exits and the job re-runs it "
                    f"({self.reducer.error})")
            self._advance()
            self._pending_finish = True
        except BaseException as error:  # raised again by finish(); close() would only print it
            self._exit_error = error
        if self._exit_error is not None:
            log.error("%s", self._exit_error)

    def _end_job_after_break(self) -> None:
        """finish() after the loop was left early: commits the state and ends the job at that step."""
        try:
            log.info("rank %d left the loop at step %d; ending the job there", self.rank, self.step)
            self._finish_job()
        except _StepFailed as error:
            self._exit_error = RuntimeError(
                f"ftrain: rank {self.rank} left session.steps() at step {self.step} but the job could not end "
                f"there ({error}). Leave the loop on every rank at the same step (decide it together, e.g. with "
                f"dist.all_reduce on a stop flag)")
        except BaseException as error:  # raised again by finish(); close() would only print it
            self._exit_error = error
        if self._exit_error is not None:
            log.error("%s", self._exit_error)

    def _next_batch(self, total_steps: int) -> tuple[Any, int]:
        if self.sampler is None or self._feed is None:
            return None, 1
        count = self.sampler.rank_counts(self.world_size, self.batch_shares or None)[self.rank]
        batch = self._feed.next(self.rank, self.world_size, self.batch_shares or None, total_steps - self.step)
        return batch, count

    def _begin_step(self, count: int) -> None:
        if self.sampler is not None:
            counts = self.sampler.rank_counts(self.world_size, self.batch_shares or None)
            self.reducer.weight = count / sum(counts)
        else:
            self.reducer.weight = 1.0 / self.world_size
        self.reducer.error = None
        if self._buffer_names:  # the forward pass writes buffers (BatchNorm statistics) that a capture reads
            self._after_snapshot_copy()
        self.begin_compute()

    def begin_compute(self) -> None:
        self._comm_before = self.reducer.comm_wait_s
        self._compute_start = time.perf_counter()

    def end_compute(self) -> None:
        """After the loop body: compute time for straggler detection (waits in the gradient
        all-reduce excluded), and `slow-rank` fault injection."""
        compute = time.perf_counter() - self._compute_start - (self.reducer.comm_wait_s - self._comm_before)
        slow = self._faults.slow_factor
        if slow > 1.0:
            time.sleep(compute * (slow - 1.0))
            compute *= slow
        self._compute_s += compute
        self._compute_n += 1

    def take_compute(self) -> tuple[float, int]:
        """(mean compute s per step, steps) since the last take (straggler detection), then starts over."""
        taken = (self._compute_s / self._compute_n if self._compute_n else 0.0, self._compute_n)
        self._compute_s, self._compute_n = 0.0, 0
        return taken

    def _empty_step(self) -> None:
        if not self._warned_empty:
            self._warned_empty = True
            log.warning("rank %d has no sample in the epoch's last step (fewer samples left than ranks): it joins "
                        "the gradient average with zeros and steps its optimizer itself", self.rank)
        self.optimizer.zero_grad(set_to_none=True)
        self.reducer.reduce_zero()
        if self.reducer.error is None:
            self.optimizer.step()

    def _before_optimizer_step(self) -> None:
        """The optimizer's step pre-hook. In a step that is being discarded (a collective failed:
        the gradients are this rank's own), the step leaves parameters and optimizer state as they
        are: their gradients are dropped first, and optimizers skip parameters without one. So a
        surviving rank still holds the last snapshot's state and keeps it at the restore
        (ftrain.snapshot.restore_plan) instead of receiving it."""
        self._after_snapshot_copy()
        if self.reducer.error is not None:
            for group in self.optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None

    def _after_snapshot_copy(self) -> None:
        """GPU state: queue the next write to the state behind the snapshot's side-stream copy (the
        CPU does not wait; on CPU the copy was synchronous and there is nothing to do)."""
        copy_done = self.engine.copy_done
        if copy_done is not None:
            torch.cuda.current_stream().wait_event(copy_done)

    # -- state -------------------------------------------------------------------------------
    def _replicated(self) -> tuple[list[tuple[str, torch.Tensor]], dict]:
        """The state every rank holds alike (parameters, optimizer state), captured 1/N per rank.
        Buffers are per rank under DDP semantics (each forward starts from rank 0's): see _meta."""
        return train_state.split_state(self.module.state_dict(), self.optimizer.state_dict(), self._buffer_names,
                                       self._sharded, self._param_names)

    def _layout(self, named: list[tuple[str, torch.Tensor]]) -> lay.StateLayout:
        """The state's layout, rebuilt only when a tensor's name, dtype or shape changed (the
        snapshot engine keeps its copy views while it gets the same layout object)."""
        key = [(name, tensor.dtype, tensor.shape) for name, tensor in named]
        if key != self._layout_key:
            self._layout_key, self._state_layout = key, lay.build_layout(named)
        return self._state_layout

    def _meta(self, opt_meta: dict) -> dict:
        return {
            "step": self.step, "generation": self.generation, "rank": self.rank, "world_size": self.world_size,
            "whole": self._sharded,  # all of this rank's state (its own shards), not a 1/N slice
            "optimizer": opt_meta, "sampler": self.sampler.state_dict() if self.sampler else None,
            "rng": train_state.rng_state(),
            "registered": {name: obj.state_dict() for name, obj in self.registered.items()},
            "buffers": {name: t.detach().to("cpu", copy=True) for name, t in self.module.state_dict().items()
                        if name in self._buffer_names},
        }

    def _capture(self) -> None:
        """Snapshot of the state after `self.step` steps: copy-out now, coding/shipping in background."""
        started = time.perf_counter()
        error = self.engine.wait_previous()
        if error:
            raise _StepFailed(f"previous snapshot not stored: {error}")
        if self._last_capture is not None and self._committed_step < self._last_capture:
            if self.engine.previous_committed() == self._last_capture:  # the worker saw the commit
                self.mark_committed(self._last_capture)
            else:
                self._wait_committed(self._last_capture)
        named, opt_meta = self._replicated()
        layout = self._layout(named)
        if len(self._report_extras) > 64:  # reports of failed captures never come
            self._report_extras.clear()
        compute = self.take_compute()
        if compute[1]:
            self._report_extras[self.step] = compute
        self.engine.capture(self.step, [t for _, t in named], layout, self._meta(opt_meta), keep_step=self._committed_step,
                            whole=self._sharded)
        self._last_capture = self.step
        self.stats["captures"] += 1
        self._last_stall_s = time.perf_counter() - started
        self.stats["stall_s"] += self._last_stall_s
        self.reporter.stall(self._last_stall_s)

    def _report_snapshot(self, report: pb.SnapshotReport) -> pb.SnapshotAck:
        """Sends a snapshot report (snapshot worker thread) with this rank's compute time and stall."""
        compute = self._report_extras.pop(report.step, None)
        if compute is not None:
            report.compute_time_s, report.steps_covered = compute
        report.stall_s = self._last_stall_s  # the newest finished capture's stall
        blob = report.blob
        self.reporter.snapshot_stored(report.snapshot_duration_s, blob.size, blob.k * blob.shard_len if blob.m else 0)
        return self._coordinator.report_snapshot(report)

    def report_state(self) -> None:
        self.reporter.state(rank=self.rank, generation=self.generation, world_size=self.world_size, step=self.step,
                            committed_step=self._committed_step)

    def _commit_reply(self, step: int, generation: int) -> pb.WaitCommittedResponse:
        """Long-polls until `step` is committed or the generation moves on."""
        while True:
            reply = self._coordinator.wait_committed(pb.WaitCommittedRequest(step=step, generation=generation,
                                                                             wait_s=20.0))
            if reply.committed or reply.skipped or reply.current_generation != generation:
                return reply

    def _await_commit(self, step: int, generation: int) -> bool:
        """Snapshot worker thread: waits until `step` is committed; False if the generation moved."""
        return self._commit_reply(step, generation).committed

    def _wait_committed(self, step: int) -> None:
        reply = self._commit_reply(step, self.generation)
        if reply.skipped and not reply.committed:  # a rank's snapshot did not fit: the older one stays committed
            return
        if not reply.committed:
            raise _StepFailed(f"generation moved to {reply.current_generation} before step {step} committed")
        self.mark_committed(step)

    def mark_committed(self, step: int) -> None:
        """`step` is committed: it becomes the snapshot the engine keeps; older local blobs go."""
        self._committed_step = max(self._committed_step, step)
        self.engine.keep_only(self._committed_step)

    def _capture_and_wait(self) -> None:
        self._capture()
        error = self.engine.wait_previous()
        if error:
            raise _StepFailed(f"snapshot not stored: {error}")
        self._wait_committed(self.step)

    # -- recovery ----------------------------------------------------------------------------
    def _report_failure(self, reason: str, restore_failed: bool = False) -> None:
        try:  # progress first: the coordinator counts the steps lost between the restore step and here
            self._coordinator.report_progress(pb.ProgressReport(trainer_uid=self.trainer_uid, generation=self.generation,
                                                                rank=self.rank, step=self.step))
            self._coordinator.report_failure(pb.FailureReport(trainer_uid=self.trainer_uid, generation=self.generation,
                                                              rank=self.rank, reason=reason[:500],
                                                              restore_failed=restore_failed))
        except Exception as error:  # the coordinator finds the failure by itself too
            log.warning("could not report the failure: %s", error)

    def _report_user_error(self, error: BaseException) -> tuple[bool, int]:
        """Tells the coordinator what the user's code raised: (print the traceback?, the step)."""
        step = self._body_step if self._body_step is not None else self.step
        try:
            verdict = self._coordinator.report_user_error(pb.UserErrorReport(
                trainer_uid=self.trainer_uid, generation=self.generation, rank=self.rank, step=step,
                error_type=type(error).__name__, error_message=str(error)[:500]))
        except Exception as failure:  # the traceback is printed anyway
            log.warning("could not report the exception to the coordinator: %s", failure)
            return True, step
        return bool(verdict.print_traceback), step

    def _await_restart(self) -> None:
        """Restart mode: a failed step is not redone in this process; its agent kills and restarts
        every trainer (ordered by the coordinator within a heartbeat). Bounded: exit after 120 s."""
        log.info("rank %d: waiting for the agent to restart this trainer into the next generation", self.rank)
        if not self._closed.wait(120.0):
            log.error("rank %d: not restarted within 120 s of the failure; exiting", self.rank)
        os._exit(1)

    def _recover(self, first: bool, pending: pb.GenerationAssignment | None = None) -> None:
        if not first and self.recovery == "restart":
            self._await_restart()
        if not first:
            self.stats["recoveries"] += 1
        for attempt in itertools.count():
            if attempt:  # a generation failed while forming: back off before the next (0.1 s, doubling, to 2 s)
                time.sleep(min(2.0, 0.1 * 2 ** (attempt - 1)))
            self._group = None
            self.reducer.set_group(None)
            if self._feed is not None:
                self._feed.reset()
            self.engine.wait_previous()
            assignment, pending = pending or self._coordinator.join(self.trainer_uid, self.generation), None
            if assignment.status == pb.ASSIGNMENT_STATUS_COMPLETE:
                # a spare that was never needed (or a trainer replaced meanwhile): it must not run the
                # user's code after the loop (it has no rank), so it leaves quietly
                log.info("the job completed without this trainer (a spare); exiting")
                raise SystemExit(0)
            try:
                self._enter_generation(assignment)
                return
            except (collectives.CollectiveError, SnapshotLost, _StepFailed) as error:
                if isinstance(error, SnapshotLost):
                    self._report_failure(f"snapshot lost: {error}", restore_failed=True)
                log.warning("rank %d: generation %d failed while forming (%s); retrying", assignment.rank,
                            assignment.generation, short_reason(str(error)))
                self.generation = assignment.generation

    def adopt(self, a: pb.GenerationAssignment) -> None:
        """Takes a generation's identity: rank, world size, members, and its faults to inject."""
        self.generation, self.rank, self.world_size = a.generation, a.rank, a.world_size
        self._members = list(a.members)
        node_index = next((i for i, m in enumerate(self._members) if self.env and m.node_id == self.env.node_id), -1)
        self._faults = faults.FaultPlan.of(a.config.inject, a.rank, node_index, self.env.local_rank if self.env else 0)

    def _enter_generation(self, a: pb.GenerationAssignment) -> None:
        self.adopt(a)
        self.batch_shares = list(a.batch_shares)
        config = a.config
        self.snapshot_every = self._snapshot_every_override or max(1, config.snapshot_every)
        self._moved.clear()
        self._start_watcher(a.generation)
        timeout_s = config.collective_timeout_s or 30.0
        if self._store is None or self._store_address != a.store_address:  # a restarted coordinator has a new store
            self._store = collectives.connect_store(a.store_address, max(30.0, timeout_s))
            self._store_address = a.store_address
        bind_host = os.environ.get("FTRAIN_BIND_HOST", "127.0.0.1")
        self.recovery = config.recovery or "inprocess"
        if self._user_group:
            pg = self._adopt_default_group(a)
        else:
            pg = collectives.install_default_group(self._store, self._env.job_id, a.generation, a.rank, a.world_size,
                                                   timeout_s, bind_host, self.use_cuda)
        self._group = collectives.Group(pg, self._moved.is_set)
        self.reducer.set_group(self._group)
        self.engine.configure(a.generation, a.rank, a.world_size, self._members, config.ec_k, config.ec_m)
        self.engine.local_agent = os.environ.get("FTRAIN_AGENT_ADDRESS", "") if self.recovery == "restart" else ""
        self.engine.shm_dir = os.environ.get(local_copy.ENV_DIR, "") if self.recovery == "restart" else ""
        self.engine.compression = config.compress or "none"
        self._last_capture = None
        self.inject_faults(entering_generation=a.generation)  # `@gen=G`: a failure during recovery
        if a.restore_step < 0:
            self._fresh_start()
        else:
            self._restore(a)
        self.report_state()
        self._joined = True
        log.info("rank %d/%d in generation %d at step %d", self.rank, self.world_size, self.generation, self.step)
        if self.on_generation is not None:
            self.on_generation(self)

    def _adopt_default_group(self, a: pb.GenerationAssignment) -> Any:
        """The script's own default group (made from the environment ftrain's agent set, as torchrun
        would), checked against the generation ftrain formed."""
        dist = torch.distributed
        if self.recovery != "restart":
            raise ConfigError("ftrain.init: the script called dist.init_process_group() itself; that needs "
                              "`ftrain launch --recovery restart` (trainers then get torchrun's RANK, WORLD_SIZE, "
                              "MASTER_ADDR, MASTER_PORT). Without it, leave the process group to ftrain.init")
        if (dist.get_rank(), dist.get_world_size()) != (a.rank, a.world_size):
            raise ConfigError(f"ftrain.init: dist.init_process_group() made this process rank {dist.get_rank()} of "
                              f"{dist.get_world_size()}, but ftrain's generation {a.generation} has it as rank {a.rank} "
                              f"of {a.world_size}: initialize from the environment (env://, no rank=/world_size=)")
        return dist.group.WORLD

    def _seed(self) -> None:
        random.seed(self.seed + self.rank)
        np.random.seed((self.seed + self.rank) % 2**32)
        torch.manual_seed(self.seed + self.rank)

    def _fresh_start(self) -> None:
        """Nobody has trained yet: everyone starts from rank 0's initial state (parameters and
        buffers, as DDP's constructor does), then commits step 0."""
        assert self._group is not None
        if not self._user_group:  # the script's own DDP / FSDP2 set up its initial state itself, as under torchrun
            for tensor in self.module.state_dict().values():
                self._group.broadcast(tensor, 0, "initial state broadcast")
            for name, tensor in self._replicated()[0]:
                if name.startswith("optim/"):
                    self._group.broadcast(tensor, 0, "initial optimizer state broadcast")
        self.step = 0
        if self.sampler is not None:
            self.sampler.epoch, self.sampler.cursor = 0, 0
        self._seed()
        self._capture_and_wait()

    def _restore_common(self, a: pb.GenerationAssignment, first_meta: dict, own_meta: dict) -> None:
        """RNG, registered objects, data position and step: the same for either kind of restore."""
        train_state.set_rng_state(own_meta["rng"])
        self._restored_registered = dict(own_meta["registered"])
        for name, obj in self.registered.items():
            if name in self._restored_registered:
                obj.load_state_dict(self._restored_registered.pop(name))
        if self.sampler is not None and first_meta["sampler"] is not None:
            self.sampler.load_state_dict(first_meta["sampler"])
        self.step = a.restore_step
        if not self._joined:
            self.resumed_from = a.restore_step
        self._committed_step = a.restore_step
        mine = self.engine.blobs.get(a.restore_step)
        self.engine.keep_only(a.restore_step if mine is not None and mine.blob_id in
                              {b.blob_id for b in a.restore_blobs if b.producer_trainer == self.trainer_uid} else None)

    def _restore(self, a: pb.GenerationAssignment) -> None:
        assert self._group is not None
        restored = self.restorer.restore(a, self._group, self.rank, self.world_size, self._members, self.recovery)
        self._restore_common(a, restored.first_meta, restored.own_meta)

    def _live_state(self) -> tuple[list[tuple[str, torch.Tensor]], lay.StateLayout]:
        named = self._replicated()[0]
        return named, self._layout(named)

    # -- watcher and faults ------------------------------------------------------------------
    def _start_pulse(self) -> None:
        """Every second, from its own thread: 'this process runs; this is my step; am I blocked
        in a collective'. A frozen rank (SIGSTOP, a wedged process) goes silent, which is how the
        coordinator tells it apart from a rank that is merely busy (a long evaluation, say)."""
        client = self.client
        assert client is not None

        def pulse() -> None:
            while True:  # the first pulse goes at once: a process is known alive before it joins
                group = self._group
                try:
                    client.report_progress(pb.ProgressReport(
                        trainer_uid=self.trainer_uid, generation=self.generation, rank=self.rank, step=self.step,
                        in_collective=group is not None and group.waiting_since is not None, pulse=True))
                except Exception:  # the coordinator may be restarting; the next pulse tries again
                    pass
                if self._closed.wait(1.0):
                    return

        threading.Thread(target=pulse, name="ftrain-pulse", daemon=True).start()

    def _start_watcher(self, generation: int) -> None:
        def watch() -> None:
            reply = self._coordinator.wait_generation_change(generation, self._closed,
                                                             lambda: self.generation == generation)
            if reply is not None and (reply.generation != generation or reply.job_state == pb.JOB_STATE_FAILED) \
                    and self.generation == generation:
                self._moved.set()

        threading.Thread(target=watch, name=f"ftrain-watch-g{generation}", daemon=True).start()

    def inject_faults(self, entering_generation: int | None = None) -> None:
        """A fault point (`--inject`): at each step's start, and as the rank enters a generation."""
        for fault in self._faults.due(self.step, entering_generation):
            claim = self._coordinator.claim_fault(pb.FaultClaim(trainer_uid=self.trainer_uid, fault=fault.raw,
                                                                rank=self.rank, step=self.step))
            if claim.ok:
                faults.fire(fault, self.agents, self._members, self.step)

    # -- single-process mode -----------------------------------------------------------------
    def _start_local(self) -> None:
        """No coordinator: a plain single-process run (a world of one), snapshots in local memory."""
        collectives.install_single_process_group()
        self.generation = 0
        self._seed()
        self.engine.configure(0, 0, 1, [pb.Member(node_id="local", address="", first_rank=0, nproc=1)], 1, 0)

    def _local_steps(self, total_steps: int) -> Iterator[tuple[int, Any]]:
        while self.step < total_steps:
            batch, count = self._next_batch(total_steps)
            self._begin_step(count)
            try:
                yield self.step, batch
            except GeneratorExit:  # a break: the step counts as done, as in the distributed loop
                self._advance()
                raise
            self.end_compute()
            self._advance()
            if self.step % self.snapshot_every == 0:
                started = time.perf_counter()
                named, opt_meta = self._replicated()
                self.engine.capture(self.step, [t for _, t in named], self._layout(named), self._meta(opt_meta),
                                    keep_step=self._committed_step)
                self._committed_step = self.step
                self.stats["captures"] += 1
                self.stats["stall_s"] += time.perf_counter() - started


def init(model: torch.nn.Module, optimizer: torch.optim.Optimizer, dataset: Any = None, batch_size: int = 32,
         seed: int = 0, **options: Any) -> Session:
    """Wraps an existing model/optimizer for fault-tolerant training (see Session): joins the job's
    first generation, so `session.rank` and `session.world_size` are known when it returns.

    Data options (as for torch.utils.data.DataLoader): `num_workers`, `collate_fn`, `pin_memory`,
    `prefetch_factor`, `worker_init_fn`, `multiprocessing_context`, `shuffle`. Others:
    `snapshot_every`, `bucket_cap_mb` (gradient buckets, default 25), `on_generation` (called with
    the session after every generation is entered), `local_steps` (async mode)."""
    return Session(model, optimizer, dataset=dataset, batch_size=batch_size, seed=seed, **options)
