"""The Session: a user's existing torch loop, made fault tolerant with a few changed lines.

    session = ftrain.init(model, optimizer, dataset=ds, batch_size=32, seed=0)
    for step, batch in session.steps(total_steps):
        loss = loss_fn(session.model(batch[0]), batch[1]); loss.backward()
        session.optimizer.step(); session.optimizer.zero_grad()

`session.steps` owns the generation life cycle: join a generation, build its process group,
restore the newest committed snapshot, hand out batches, synchronise gradients in
`session.optimizer.step()`, capture snapshots, and, when a peer fails, discard the failed
step, re-form, restore and go on. The loop body never sees a peer's failure.
"""
from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ftrain import metrics
from ftrain.config import FaultSpec, TrainerEnv, parse_fault
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.snapshot import layout as lay
from ftrain.snapshot.capture import LocalBlob, SnapshotEngine, SnapshotLost
from ftrain.snapshot.transfer import AgentPool
from ftrain.train import collectives
from ftrain.train.client import CoordinatorClient
from ftrain.train.data import ElasticSampler, make_collate

log = logging.getLogger("ftrain.session")


class SyncOptimizer:
    """Wraps the user's optimizer: `step()` first averages gradients across the generation."""

    def __init__(self, optimizer: torch.optim.Optimizer, session: "Session") -> None:
        self._optimizer = optimizer
        self._session = session

    def step(self, closure: Callable | None = None) -> Any:
        return self._session._optimizer_step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)

    def state_dict(self) -> dict:
        return self._optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._optimizer.load_state_dict(state)


class _StepFailed(Exception):
    pass


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Session:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dataset: Any = None,
                 batch_size: int = 32, seed: int = 0, *, collate_fn: Callable | None = None, shuffle: bool = True,
                 snapshot_every: int | None = None, connect_timeout_s: float | None = None,
                 local_steps: int | None = None) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"ftrain.init: model must be a torch.nn.Module; got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"ftrain.init: optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
        self.model = model
        self._inner = optimizer
        self.optimizer = SyncOptimizer(optimizer, self)
        self.seed = seed
        self.sampler = ElasticSampler(len(dataset), batch_size, seed, shuffle) if dataset is not None else None
        self._collate = make_collate(dataset, collate_fn) if dataset is not None else None
        self.registered: dict[str, Any] = {}
        self.env = TrainerEnv.from_environ()
        self.rank, self.world_size, self.generation, self.step = 0, 1, -1, 0
        self.batch_shares: list[int] = []
        self._snapshot_every_override = snapshot_every
        self.local_steps = local_steps  # async mode: local steps per push (None: FTRAIN_LOCAL_STEPS, else 10)
        self._async: Any = None  # the AsyncWorker while the job runs --mode async
        self.snapshot_every = snapshot_every or 1
        self._group: Any = None
        self._sync = collectives.GradientSynchronizer(list(model.parameters()))
        self._stepped = False
        self._step_error: collectives.CollectiveError | None = None
        self._local_weight, self._total_weight = 1.0, 1.0
        self._compute_start = 0.0
        self._faults: list[FaultSpec] = []
        self._slow_factor = 1.0
        self._committed_step = -1
        self._last_capture: int | None = None
        self._layout_key: list[tuple[str, torch.dtype, torch.Size]] = []
        self._state_layout = lay.StateLayout((), 0)
        self._finished = False
        self._moved = threading.Event()
        self._closed = threading.Event()
        self.stats = {"recoveries": 0, "failed_steps": 0, "stall_s": 0.0, "captures": 0}
        self._compute_s, self._compute_n = 0.0, 0  # compute time since the last capture (straggler detection)
        self._report_extras: dict[int, tuple[float, int]] = {}  # step -> (mean compute s, steps) for its report
        self._last_stall_s = 0.0
        self.reporter = metrics.TrainerReporter("", "", "", 0)  # per-node metrics via the agent (off without one)
        self.use_cuda = any(p.is_cuda for p in model.parameters())
        self._has_buffers = any(b.numel() for b in model.buffers())
        if self.env is None:
            self.trainer_uid = f"local/0/{os.getpid()}"
            self.client = None
            self.engine = SnapshotEngine("local", self.trainer_uid, "local", None, None)
        else:
            timeout = connect_timeout_s or float(os.environ.get("FTRAIN_CONNECT_TIMEOUT", "30"))
            self.trainer_uid = f"{self.env.node_id}/{self.env.local_rank}/{os.getpid()}"
            self.client = CoordinatorClient(self.env, connect_timeout_s=timeout)
            self.agents = AgentPool(self.env.token, self.env.job_id)
            self.engine = SnapshotEngine(self.env.job_id, self.trainer_uid, self.env.node_id, self.agents,
                                         self._report_snapshot, self._await_commit)
            self.reporter = metrics.TrainerReporter(os.environ.get("FTRAIN_AGENT_ADDRESS", ""), self.env.token,
                                                    self.env.job_id, self.env.local_rank)
        self._store: Any = None
        self._store_address = ""
        self._members: list[pb.Member] = []

    # -- public API --------------------------------------------------------------------------
    def register(self, name: str, obj: Any) -> None:
        """Adds an object with state_dict()/load_state_dict() (scheduler, scaler...) to the snapshots."""
        if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
            raise TypeError(f"session.register({name!r}, ...): the object needs state_dict() and load_state_dict()")
        if name in self.registered and self.registered[name] is not obj:
            raise ValueError(f"session.register: the name {name!r} is already taken; pick another")
        self.registered[name] = obj

    def global_batch_indices(self) -> list[list[int]]:
        """Dataset indices of every rank's part of the current step's global batch."""
        if self._async is not None:
            return self._async.global_batch_indices()
        assert self.sampler is not None
        return self.sampler.global_indices(self.world_size, self.batch_shares or None)

    def steps(self, total_steps: int) -> Iterator[tuple[int, Any]]:
        if total_steps < 0:
            raise ValueError(f"session.steps: total_steps must be >= 0; got {total_steps}")
        if self.env is None:
            yield from self._local_steps(total_steps)
            return
        self._start_pulse()
        first = self.client.join(self.trainer_uid, self.generation)
        if first.status == "ok" and first.config.mode == "async":  # no process group: push/pull every H steps
            from ftrain.train.async_worker import AsyncWorker
            yield from AsyncWorker(self, self.local_steps).run(total_steps, first)
            return
        self._recover(first=True, pending=first)
        while True:
            try:
                if self.step >= total_steps:
                    if self._committed_step != self.step:
                        self._capture_and_wait()
                    self.client.call("ReportFinished", pb.FinishedReport(
                        trainer_uid=self.trainer_uid, generation=self.generation, rank=self.rank, step=self.step))
                    self._finished = True
                    return
                if self._moved.is_set():
                    raise _StepFailed("the generation moved on")
                self._inject_faults()
                step_started = time.perf_counter()
                batch, count = self._next_batch()
                self._begin_step(count)
                if count:
                    yield self.step, batch
                else:  # nothing left for this rank in the epoch's tail: contribute zero gradient
                    self._inner.zero_grad(set_to_none=True)
                    self.optimizer.step()
                if not self._stepped:
                    raise RuntimeError("ftrain: call session.optimizer.step() once in every step of session.steps()")
                if self._step_error is not None:
                    raise self._step_error
                if self.sampler is not None:
                    self.sampler.advance(self.world_size, self.batch_shares or None)
                self.step += 1
                self.reporter.step_done(time.perf_counter() - step_started)
                self._report_state()
                if self.step % self.snapshot_every == 0 and self.step < total_steps:
                    self._capture()
            except (_StepFailed, collectives.CollectiveError, SnapshotLost) as error:
                reason = str(error)
            else:
                continue
            # outside the except block, so the failed step's frames (and its process group) are released
            self._step_error = None
            self.stats["failed_steps"] += 1
            log.warning("rank %d: step %d failed (%s); recovering", self.rank, self.step, reason[:200])
            self._report_failure(reason)
            self._recover(first=False)

    def finish(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._report_state()
        self.reporter.close()
        self.engine.close()
        if self.client is not None:
            self.client.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()

    # -- the step ----------------------------------------------------------------------------
    def _next_batch(self) -> tuple[Any, int]:
        if self.sampler is None:
            return None, 1
        indices = self.sampler.indices(self.rank, self.world_size, self.batch_shares or None)
        return (self._collate(indices) if indices else None), len(indices)

    def _begin_step(self, count: int) -> None:
        self._stepped = False
        self._step_error: collectives.CollectiveError | None = None
        if self.sampler is not None:
            counts = self.sampler.rank_counts(self.world_size, self.batch_shares or None)
            self._local_weight, self._total_weight = float(count), float(sum(counts))
        else:
            self._local_weight, self._total_weight = 1.0, float(self.world_size)
        if self._has_buffers:  # the forward pass writes buffers (BatchNorm statistics) that a capture reads
            self._after_snapshot_copy()
        self._compute_start = time.perf_counter()

    def _after_snapshot_copy(self) -> None:
        """GPU state: queue the next write to the state behind the snapshot's side-stream copy (the
        CPU does not wait; on CPU the copy was synchronous and there is nothing to do)."""
        copy_done = self.engine.copy_done
        if copy_done is not None:
            torch.cuda.current_stream().wait_event(copy_done)

    def _optimizer_step(self, closure: Callable | None) -> Any:
        if self._stepped:
            raise RuntimeError("ftrain: session.optimizer.step() called twice in one step")
        self._stepped = True
        if self._slow_factor > 1.0:
            time.sleep((time.perf_counter() - self._compute_start) * (self._slow_factor - 1.0))
        self._compute_s += time.perf_counter() - self._compute_start
        self._compute_n += 1
        self._after_snapshot_copy()  # the optimizer (and the buffer broadcast) write what a capture reads
        if (self.env is None and self.world_size == 1) or self._async is not None:
            return self._inner.step(closure)
        try:
            self._sync.allreduce(self._group, self._local_weight, self._total_weight)
            if self._has_buffers:
                collectives.broadcast_buffers(self._group, self.model)
        except collectives.CollectiveError as error:
            # the user's loop never sees a peer's failure: the step is discarded after the body returns
            self._step_error = error
            self._inner.zero_grad(set_to_none=True)
            return None
        return self._inner.step(closure)

    # -- state -------------------------------------------------------------------------------
    def _replicated(self) -> tuple[list[tuple[str, torch.Tensor]], dict]:
        tensors = [(f"model/{name}", t) for name, t in self.model.state_dict().items()]
        opt = self._inner.state_dict()
        opt_meta: dict[str, Any] = {"param_groups": opt["param_groups"], "state": {}}
        for pid in sorted(opt["state"]):
            entry = {}
            for key in sorted(opt["state"][pid]):
                value = opt["state"][pid][key]
                if isinstance(value, torch.Tensor):
                    tensors.append((f"optim/{pid}/{key}", value))
                    entry[key] = None
                else:
                    entry[key] = value
            opt_meta["state"][pid] = entry
        return tensors, opt_meta

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
            "optimizer": opt_meta, "sampler": self.sampler.state_dict() if self.sampler else None,
            "rng": _rng_state(),
            "registered": {name: obj.state_dict() for name, obj in self.registered.items()},
        }

    def _capture(self) -> None:
        """Snapshot of the state after `self.step` steps: copy-out now, coding/shipping in background."""
        started = time.perf_counter()
        error = self.engine.wait_previous()
        if error:
            raise _StepFailed(f"previous snapshot not stored: {error}")
        if self._last_capture is not None and self._committed_step < self._last_capture:
            if self.engine.previous_committed() == self._last_capture:  # the worker saw the commit
                self._mark_committed(self._last_capture)
            else:
                self._wait_committed(self._last_capture)
        named, opt_meta = self._replicated()
        layout = self._layout(named)
        if len(self._report_extras) > 64:  # reports of failed captures never come
            self._report_extras.clear()
        if self._compute_n:
            self._report_extras[self.step] = (self._compute_s / self._compute_n, self._compute_n)
        self._compute_s, self._compute_n = 0.0, 0
        self.engine.capture(self.step, [t for _, t in named], layout, self._meta(opt_meta), keep_step=self._committed_step)
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
        return self.client.call("ReportSnapshot", report, timeout=30.0)

    def _report_state(self) -> None:
        self.reporter.state(rank=self.rank, generation=self.generation, world_size=self.world_size, step=self.step,
                            committed_step=self._committed_step)

    def _commit_reply(self, step: int, generation: int) -> pb.WaitCommittedResponse:
        """Long-polls until `step` is committed or the generation moves on."""
        while True:
            reply = self.client.call("WaitCommitted", pb.WaitCommittedRequest(step=step, generation=generation,
                                                                               wait_s=20.0), timeout=30.0)
            if reply.committed or reply.current_generation != generation:
                return reply

    def _await_commit(self, step: int, generation: int) -> bool:
        """Snapshot worker thread: waits until `step` is committed; False if the generation moved."""
        return self._commit_reply(step, generation).committed

    def _wait_committed(self, step: int) -> None:
        reply = self._commit_reply(step, self.generation)
        if not reply.committed:
            raise _StepFailed(f"generation moved to {reply.current_generation} before step {step} committed")
        self._mark_committed(step)

    def _mark_committed(self, step: int) -> None:
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
    def _report_failure(self, reason: str) -> None:
        try:  # progress first: the coordinator counts the steps lost between the restore step and here
            self.client.call("ReportProgress", pb.ProgressReport(trainer_uid=self.trainer_uid, generation=self.generation,
                                                                 rank=self.rank, step=self.step))
            self.client.call("ReportFailure", pb.FailureReport(trainer_uid=self.trainer_uid, generation=self.generation,
                                                               rank=self.rank, reason=reason[:500]))
        except Exception as error:  # the coordinator finds the failure by itself too
            log.warning("could not report the failure: %s", error)

    def _recover(self, first: bool, pending: pb.GenerationAssignment | None = None) -> None:
        if not first:
            self.stats["recoveries"] += 1
        while True:
            self._group = None
            self._sync.drop_buffers()
            self.engine.wait_previous()
            assignment, pending = pending or self.client.join(self.trainer_uid, self.generation), None
            if assignment.status == "complete":
                # a spare that was never needed (or a trainer replaced meanwhile): it must not run the
                # user's code after the loop (it has no rank), so it leaves quietly
                log.info("the job completed without this trainer (a spare); exiting")
                raise SystemExit(0)
            try:
                self._enter_generation(assignment)
                return
            except (collectives.CollectiveError, SnapshotLost, _StepFailed) as error:
                if isinstance(error, SnapshotLost):
                    self._report_failure(f"snapshot lost: {error}")
                log.warning("rank %d: generation %d failed while forming (%s); retrying", assignment.rank,
                            assignment.generation, str(error)[:200])
                self.generation = assignment.generation

    def _enter_generation(self, a: pb.GenerationAssignment) -> None:
        self.generation, self.rank, self.world_size = a.generation, a.rank, a.world_size
        self.batch_shares = list(a.batch_shares)
        self._members = list(a.members)
        config = a.config
        self.snapshot_every = self._snapshot_every_override or max(1, config.snapshot_every)
        self._faults = [parse_fault(spec) for spec in config.inject]
        self._slow_factor = max([f.factor or 1.0 for f in self._faults if f.kind == "slow-rank" and f.target == a.rank],
                                default=1.0)
        self._moved.clear()
        self._start_watcher(a.generation)
        if self._store is None or self._store_address != a.store_address:  # a restarted coordinator has a new store
            self._store = collectives.connect_store(a.store_address, max(30.0, config.collective_timeout_s))
            self._store_address = a.store_address
        bind_host = os.environ.get("FTRAIN_BIND_HOST", "127.0.0.1")
        pg = collectives.build_group(self._store, self.env.job_id, a.generation, a.rank, a.world_size,
                                     config.collective_timeout_s or 30.0, bind_host, self.use_cuda)
        self._group = collectives.Group(pg, self._moved.is_set)
        self.engine.configure(a.generation, a.rank, a.world_size, self._members, config.ec_k, config.ec_m)
        self.engine.compression = config.compress or "none"
        self._last_capture = None
        self._inject_faults(entering_generation=a.generation)  # `@gen=G`: a failure during recovery
        if a.restore_step < 0:
            self._fresh_start()
        else:
            self._restore(a)
        self._report_state()
        log.info("rank %d/%d in generation %d at step %d", self.rank, self.world_size, self.generation, self.step)

    def _fresh_start(self) -> None:
        """Nobody has trained yet: everyone starts from rank 0's initial state, then commits step 0."""
        named, _ = self._replicated()
        for _, tensor in named:
            self._group.broadcast(tensor, 0, "initial state broadcast")
        self.step = 0
        if self.sampler is not None:
            self.sampler.epoch, self.sampler.cursor = 0, 0
        random.seed(self.seed + self.rank)
        np.random.seed((self.seed + self.rank) % 2**32)
        torch.manual_seed(self.seed + self.rank)
        self._capture_and_wait()

    def _restore(self, a: pb.GenerationAssignment) -> None:
        blobs: dict[int, tuple[dict, np.ndarray]] = {}
        for info in sorted(a.restore_blobs, key=lambda b: b.producer_rank):
            if info.source_rank == self.rank:
                local: LocalBlob | None = self.engine.blobs.get(a.restore_step)
                if info.source_holds_local and local is not None and local.blob_id == info.blob_id:
                    data = local.buffer[:local.size]
                else:
                    data = self.engine.fetch(info, live_nodes={m.node_id for m in self._members})
                tensor = torch.from_numpy(np.ascontiguousarray(data))
            else:
                tensor = torch.empty(info.raw_size or info.size, dtype=torch.uint8)
            self._group.broadcast(tensor, info.source_rank, f"restore of {info.blob_id}")
            blobs[info.producer_rank] = lay.read_blob(tensor.numpy())
        if not blobs:
            raise SnapshotLost(f"no blobs listed for step {a.restore_step}")
        first_meta = blobs[min(blobs)][0]
        flat = lay.assemble(first_meta["total"], [(meta["slice"][0], payload) for meta, payload in blobs.values()])
        entries = tuple(lay.TensorEntry(*e) for e in first_meta["layout"])
        views = lay.tensors_from_flat(lay.StateLayout(entries, first_meta["total"]), flat)
        self.model.load_state_dict({name[6:]: t for name, t in views.items() if name.startswith("model/")})
        opt_meta = first_meta["optimizer"]
        state: dict[Any, dict[str, Any]] = {}
        for pid, entry in opt_meta["state"].items():
            state[pid] = {key: (views[f"optim/{pid}/{key}"].clone() if value is None else value)
                          for key, value in entry.items()}
        self._inner.load_state_dict({"state": state, "param_groups": opt_meta["param_groups"]})
        old_world = first_meta["world_size"]
        own = blobs.get(self.rank) or blobs[self.rank % old_world]
        _set_rng_state(own[0]["rng"])
        for name, obj in self.registered.items():
            if name in own[0]["registered"]:
                obj.load_state_dict(own[0]["registered"][name])
        if self.sampler is not None and first_meta["sampler"] is not None:
            self.sampler.load_state_dict(first_meta["sampler"])
        self.step = a.restore_step
        self._committed_step = a.restore_step
        mine = self.engine.blobs.get(a.restore_step)
        self.engine.keep_only(a.restore_step if mine is not None and mine.blob_id in
                              {b.blob_id for b in a.restore_blobs if b.producer_trainer == self.trainer_uid} else None)

    # -- watcher and faults ------------------------------------------------------------------
    def _start_pulse(self) -> None:
        """Every second, from its own thread: 'this process runs; this is my step; am I blocked
        in a collective'. A frozen rank (SIGSTOP, a wedged process) goes silent, which is how the
        coordinator tells it apart from the peers that are merely waiting for it."""
        def pulse() -> None:
            while not self._closed.wait(1.0):
                group = self._group
                try:
                    self.client.call("ReportProgress", pb.ProgressReport(
                        trainer_uid=self.trainer_uid, generation=self.generation, rank=self.rank, step=self.step,
                        in_collective=group is not None and group.waiting_since is not None, pulse=True),
                        timeout=5.0, retry_unavailable=False)
                except Exception:  # the coordinator may be restarting; the next pulse tries again
                    continue

        threading.Thread(target=pulse, name="ftrain-pulse", daemon=True).start()

    def _start_watcher(self, generation: int) -> None:
        def watch() -> None:
            reply = self.client.wait_generation_change(generation, self._closed, lambda: self.generation == generation)
            if reply is not None and (reply.generation != generation or reply.job_state == "failed") \
                    and self.generation == generation:
                self._moved.set()

        threading.Thread(target=watch, name=f"ftrain-watch-g{generation}", daemon=True).start()

    def _node_index(self) -> int:
        for index, member in enumerate(self._members):
            if member.node_id == self.env.node_id:
                return index
        return -1

    def _inject_faults(self, entering_generation: int | None = None) -> None:
        for fault in self._faults:
            if entering_generation is not None:
                if fault.generation != entering_generation:
                    continue
            elif fault.step != self.step or fault.generation is not None:
                continue
            if fault.kind in ("kill-rank", "hang-rank") and fault.target == self.rank:
                pass
            elif fault.kind == "kill-node" and fault.target == self._node_index() and self.env.local_rank == 0:
                pass
            elif fault.kind == "corrupt-shard" and self.rank == 0:
                pass
            else:
                continue
            claim = self.client.call("ClaimFault", pb.FaultClaim(trainer_uid=self.trainer_uid, fault=fault.raw,
                                                                 rank=self.rank, step=self.step))
            if not claim.ok:
                continue
            log.warning("injecting %s", fault.raw)
            if fault.kind == "kill-rank":
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault.kind == "kill-node":
                os.killpg(os.getpgid(0), signal.SIGKILL)
            elif fault.kind == "hang-rank":
                os.kill(os.getpid(), signal.SIGSTOP)
            elif fault.kind == "corrupt-shard" and 0 <= fault.target < len(self._members):
                hit = self.agents.corrupt(self._members[fault.target].address, self.step)
                log.warning("corrupted %d shard(s) on node %s", len(hit), self._members[fault.target].node_id)

    # -- single-process mode -----------------------------------------------------------------
    def _local_steps(self, total_steps: int) -> Iterator[tuple[int, Any]]:
        """No coordinator: a plain single-process run, with snapshots in local memory only."""
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)
        self.generation = 0
        self.engine.configure(0, 0, 1, [pb.Member(node_id="local", address="", first_rank=0, nproc=1)], 1, 0)
        while self.step < total_steps:
            batch, count = self._next_batch()
            self._begin_step(count)
            yield self.step, batch
            if not self._stepped:
                raise RuntimeError("ftrain: call session.optimizer.step() once in every step of session.steps()")
            if self.sampler is not None:
                self.sampler.advance(1)
            self.step += 1
            if self.step % self.snapshot_every == 0:
                started = time.perf_counter()
                named, opt_meta = self._replicated()
                self.engine.capture(self.step, [t for _, t in named], self._layout(named), self._meta(opt_meta),
                                    keep_step=self._committed_step)
                self._committed_step = self.step
                self.stats["captures"] += 1
                self.stats["stall_s"] += time.perf_counter() - started
        self._finished = True


def init(model: torch.nn.Module, optimizer: torch.optim.Optimizer, dataset: Any = None, batch_size: int = 32,
         seed: int = 0, **options: Any) -> Session:
    """Wraps an existing model/optimizer for fault-tolerant training (see Session)."""
    return Session(model, optimizer, dataset=dataset, batch_size=batch_size, seed=seed, **options)
