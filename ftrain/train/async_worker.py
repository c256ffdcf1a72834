"""The worker side of async / federated mode: `session.steps(n)` when the job runs `--mode async`.

The user's loop is unchanged:

    for step, batch in session.steps(total_steps):
        loss = loss_fn(session.model(batch[0]), batch[1]); loss.backward()
        session.optimizer.step(); session.optimizer.zero_grad()

but nothing is all-reduced: `session.optimizer.step()` steps the worker's own optimizer. Every
H local steps (`local_steps`: `ftrain.init(..., local_steps=H)`, else `FTRAIN_LOCAL_STEPS`,
else 10) the session pushes the delta `x_local - x_start` (flat float32 parameters) tagged with
the global version `x_start` was pulled at and the number of samples it saw, then pulls the
newest global model and continues from it (the aggregator in the coordinator applies the
job's strategy; see ftrain.aggregate.server).

Data: worker `rank` of `world_size` reads its own shard, every `world_size`-th sample of a
seeded permutation of the dataset, in its own seeded order (an ElasticSampler over the shard).

What async mode promises (and what it does not):
* Nobody waits for a slow or dead worker (except the sync FedAvg baseline, whose rounds wait
  for every worker by definition); its late updates are weighted by staleness.
* A worker's progress (local step, shard position) advances at the aggregator only when its
  update is accepted. A replacement for a lost worker (same rank) pulls the newest model and
  resumes its rank's shard at the last accepted position: the work since that push is redone
  once, and among the accepted updates each sample of a shard is covered once per shard epoch.
* The job ends when the accepted updates cover `total_steps x world_size` local steps (the
  sample budget of a sync run of `total_steps`), so fast workers do more steps than slow ones;
  every worker ends holding the same final global model.
* No bit-identity with any other run (arrival order decides staleness), and no exactly-once
  across an aggregator restore: updates accepted after the newest stored aggregator snapshot
  (at most one aggregation step) are lost with their samples. Worker-local optimizer state
  and parameters outside `model.parameters()` (e.g. BatchNorm buffers) are not aggregated or
  protected, nor are objects given to `session.register` (they stay local to each worker). A
  change of world size (`--no-replace`) re-partitions the shards and restarts each shard's
  epoch; the sync FedAvg baseline needs a fixed world size (its rounds wait for
  `num_workers` updates), so run it with replacement.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import torch

from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.proto.ftrain.v1 import coordinator_pb2_grpc
from ftrain.rpc import CHUNK_BYTES, call_retrying, open_channel, token_metadata
from ftrain.snapshot.erasure import shard_checksum
from ftrain.train.client import CoordinatorClient, CoordinatorUnavailable, JobFailed
from ftrain.train.data import ElasticSampler
from ftrain.wire import from_wire

if TYPE_CHECKING:  # pragma: no cover
    from ftrain.config import TrainerEnv
    from ftrain.metrics import TrainerReporter

log = logging.getLogger("ftrain.async")

DEFAULT_LOCAL_STEPS = 10
ENV_LOCAL_STEPS = "FTRAIN_LOCAL_STEPS"


def resolve_local_steps(value: int | None) -> int:
    if value is None:
        raw = os.environ.get(ENV_LOCAL_STEPS, "")
        try:
            value = int(raw) if raw else DEFAULT_LOCAL_STEPS
        except ValueError:
            raise ValueError(f"{ENV_LOCAL_STEPS} must be a whole number >= 1; got {raw!r}") from None
    if int(value) < 1:
        raise ValueError(f"local_steps must be >= 1; got {value}")
    return int(value)


# ------------------------------------------------------------------------------------------------
# flat parameter vectors
# ------------------------------------------------------------------------------------------------


def flat_parameters(params: list[torch.Tensor]) -> torch.Tensor:
    """The parameters as one flat float32 CPU vector (a copy)."""
    if not params:
        return torch.empty(0, dtype=torch.float32)
    return torch.cat([p.detach().reshape(-1).to(device="cpu", dtype=torch.float32) for p in params])


def load_flat(params: list[torch.Tensor], vector: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(vector[offset:offset + n].view_as(p))
            offset += n
    if offset != vector.numel():
        raise ValueError(f"the global model has {vector.numel()} parameters, this model {offset}: "
                         "every worker must build the same model")


# ------------------------------------------------------------------------------------------------
# client
# ------------------------------------------------------------------------------------------------


class AggregatorClient:
    """Token on every call, retries while the aggregator is unreachable, chunked vectors."""

    def __init__(self, address: str, token: str, connect_timeout_s: float = 30.0, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self.chunk_bytes = chunk_bytes
        self.channel = open_channel(address)
        self.stub = coordinator_pb2_grpc.AggregatorStub(self.channel)
        self.metadata = token_metadata(token)

    def _retry(self, fn: Callable[[], Any]) -> Any:
        return call_retrying(fn, f"aggregator {self.address}", self.connect_timeout_s)

    def hello(self, request: pb.AggregatorHello) -> pb.AggregatorWelcome:
        deadline = time.monotonic() + max(self.connect_timeout_s, 90.0)
        while True:
            welcome = self._retry(lambda: self.stub.Hello(request, timeout=60.0, metadata=self.metadata))
            if welcome.status != pb.WELCOME_STATUS_RESTORING or time.monotonic() > deadline:
                return welcome
            time.sleep(0.25)

    def push(self, vector: torch.Tensor, **header: Any) -> pb.PushReply:
        data = vector.detach().contiguous().numpy().data.cast("B")
        total = len(data)
        crc = shard_checksum(data) if total else 0
        size = self.chunk_bytes

        def chunks() -> Iterator[pb.UpdateChunk]:
            offset = 0
            while True:
                piece = bytes(data[offset:offset + size])
                if offset == 0:
                    yield pb.UpdateChunk(offset=0, total_len=total, crc32=crc, data=piece, **header)
                else:
                    yield pb.UpdateChunk(offset=offset, total_len=total, data=piece)
                offset += len(piece)
                if offset >= total:
                    return

        return self._retry(lambda: self.stub.Push(chunks(), timeout=120.0, metadata=self.metadata))

    def pull(self, have_version: int = -1, min_version: int = 0, incarnation: str = "", wait_s: float = 0.0
             ) -> tuple[pb.ModelChunk, torch.Tensor | None]:
        request = pb.PullRequest(have_version=have_version, min_version=min_version, incarnation=incarnation,
                                 wait_s=wait_s)

        def call() -> tuple[pb.ModelChunk, torch.Tensor | None]:
            head: pb.ModelChunk | None = None
            buffer: bytearray | None = None
            for chunk in self.stub.Pull(request, timeout=wait_s + 120.0, metadata=self.metadata):
                if head is None:
                    head = chunk
                    if chunk.status != pb.MODEL_STATUS_OK:
                        return chunk, None
                    buffer = bytearray(chunk.total_len)
                buffer[chunk.offset:chunk.offset + len(chunk.data)] = chunk.data  # type: ignore[index]
            if head is None or buffer is None:
                raise RuntimeError(f"aggregator {self.address}: empty model stream")
            if (shard_checksum(buffer) if buffer else 0) != head.crc32:
                raise RuntimeError(f"aggregator {self.address}: model of version {head.version} arrived corrupted")
            vector = torch.frombuffer(buffer, dtype=torch.float32) if buffer else torch.empty(0)
            return head, vector

        return self._retry(call)

    def status(self, include_records: bool = False) -> dict:
        reply = self._retry(lambda: self.stub.Status(pb.AggregatorStatusRequest(include_records=include_records),
                                                     timeout=10.0, metadata=self.metadata))
        return json.loads(reply.json)

    def close(self) -> None:
        self.channel.close()


# ------------------------------------------------------------------------------------------------
# data shard
# ------------------------------------------------------------------------------------------------


class ShardSampler:
    """Worker `rank` of `world_size`: every world_size-th sample of a seeded permutation, read
    in its own seeded order (epochs over the shard), resumable from a JSON position."""

    def __init__(self, dataset_len: int, batch_size: int, seed: int, rank: int, world_size: int,
                 shuffle: bool = True) -> None:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + 17)
        order = torch.randperm(dataset_len, generator=generator) if shuffle else torch.arange(dataset_len)
        self.indices = order[rank::world_size].tolist()
        if not self.indices:
            raise ValueError(f"worker {rank} of {world_size} gets no data: the dataset has only {dataset_len} samples")
        self.rank, self.world_size = rank, world_size
        self.sampler = ElasticSampler(len(self.indices), batch_size, seed + 7919 * (rank + 1), shuffle)

    def next_indices(self) -> list[int]:
        return [self.indices[i] for i in self.sampler.indices(0, 1)]

    def advance(self) -> None:
        self.sampler.advance(1)

    def position(self) -> str:
        return json.dumps({"epoch": self.sampler.epoch, "cursor": self.sampler.cursor, "rank": self.rank,
                           "world_size": self.world_size, "shard_len": len(self.indices)})

    def resume(self, text: str) -> bool:
        try:
            pos = json.loads(text)
        except ValueError:
            return False
        if (pos.get("rank"), pos.get("world_size"), pos.get("shard_len")) != (self.rank, self.world_size, len(self.indices)):
            return False
        self.sampler.epoch, self.sampler.cursor = int(pos["epoch"]), int(pos["cursor"])
        return True


# ------------------------------------------------------------------------------------------------
# the worker loop
# ------------------------------------------------------------------------------------------------


class StepContext(Protocol):
    """What the worker loop uses of its session (ftrain.train.session.Session): its public step context."""
    model: torch.nn.Module
    sampler: ElasticSampler | None
    env: TrainerEnv | None
    client: CoordinatorClient | None
    reporter: TrainerReporter
    trainer_uid: str
    seed: int
    rank: int
    world_size: int
    generation: int
    step: int

    def adopt(self, a: pb.GenerationAssignment) -> None: ...
    def inject_faults(self) -> None: ...
    def begin_compute(self) -> None: ...
    def end_compute(self) -> None: ...
    def take_compute(self) -> tuple[float, int]: ...
    def mark_committed(self, step: int) -> None: ...
    def report_state(self) -> None: ...


class AsyncWorker:
    """`collate` builds a batch from dataset indices (None without a dataset); `closed` is set when
    the session finishes."""

    def __init__(self, session: StepContext, collate: Callable[[list[int]], Any] | None, closed: threading.Event,
                 local_steps: int | None = None) -> None:
        self.s = session
        self.collate, self.closed = collate, closed
        self.local_steps = resolve_local_steps(local_steps)
        self.params: list[torch.Tensor] = [p for p in session.model.parameters()]
        env = session.env
        assert env is not None and session.client is not None  # async mode runs under an agent
        self.coordinator = session.client
        self.client = AggregatorClient(env.coordinator, env.token, session.client.connect_timeout_s)
        self.shard: ShardSampler | None = None
        self.incarnation = ""
        self.version = -1
        self.x_start: torch.Tensor | None = None
        self.done = False
        self.synchronous = False
        self.total_steps = 0
        self.stats = {"pushes": 0, "applied": 0, "ignored": 0, "rebased": 0, "held": 0, "max_staleness": 0}
        self._next: pb.GenerationAssignment | None = None
        self._follow_error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def worker_id(self) -> str:
        return f"rank-{self.s.rank}"

    # -- generations -------------------------------------------------------------------------
    def _adopt(self, a: pb.GenerationAssignment) -> None:
        s = self.s
        old = (s.rank, s.world_size)
        s.adopt(a)
        if s.sampler is not None and (self.shard is None or old != (a.rank, a.world_size)):
            self.shard = ShardSampler(s.sampler.dataset_len, s.sampler.batch_size, s.seed, a.rank, a.world_size,
                                      s.sampler.shuffle)
        self._follow(a.generation)
        s.report_state()
        log.info("async worker rank %d/%d in generation %d", a.rank, a.world_size, a.generation)

    def _follow(self, generation: int) -> None:
        """Background: when membership moves on, join the next generation (it forms only once every
        live trainer asked) without stopping training; the loop adopts it between rounds."""
        s = self.s

        def follow() -> None:
            reply = self.coordinator.wait_generation_change(generation, self.closed, lambda: s.generation == generation)
            if reply is None or reply.job_state == pb.JOB_STATE_COMPLETE:
                return
            if reply.job_state == pb.JOB_STATE_FAILED:
                self._follow_error = JobFailed("the coordinator declared the job failed")
                return
            try:
                assignment = self.coordinator.join(s.trainer_uid, generation)
            except BaseException as error:  # JobFailed, unreachable coordinator
                self._follow_error = error
                return
            with self._lock:
                self._next = assignment

        threading.Thread(target=follow, name=f"ftrain-async-follow-g{generation}", daemon=True).start()

    def _between_rounds(self) -> None:
        if self._follow_error is not None:
            raise self._follow_error
        with self._lock:
            assignment, self._next = self._next, None
        if assignment is not None and assignment.generation > self.s.generation:
            self._adopt(assignment)

    # -- aggregator --------------------------------------------------------------------------
    def _hello(self) -> pb.AggregatorWelcome:
        s = self.s
        welcome = self.client.hello(pb.AggregatorHello(
            worker_id=self.worker_id, rank=s.rank, world_size=s.world_size, generation=s.generation,
            total_steps=self.total_steps, model_numel=sum(p.numel() for p in self.params),
            known_version=self.version, known_incarnation=self.incarnation))
        if welcome.status == pb.WELCOME_STATUS_RESTORING:
            raise CoordinatorUnavailable(f"the aggregator is still restoring its state: {welcome.message}")
        if welcome.status == pb.WELCOME_STATUS_INIT:
            reply = self.client.push(flat_parameters(self.params), init=True, worker_id=self.worker_id, rank=s.rank,
                                     generation=s.generation, world_size=s.world_size)
            if reply.status == pb.PUSH_STATUS_REBASE:
                return self._hello()
        self.incarnation = welcome.incarnation
        self.synchronous = welcome.synchronous
        self.done = self.done or welcome.done
        return welcome

    def _pull(self, min_version: int = 0) -> None:
        """Newest global model into the parameters (x_start); long-polls up to min_version."""
        while True:
            have = self.version if self.x_start is not None else -1
            head, vector = self.client.pull(have_version=have, min_version=min_version, incarnation=self.incarnation,
                                            wait_s=20.0 if min_version > 0 else 0.0)
            if head.status == pb.MODEL_STATUS_WAIT:
                self._between_rounds()
                continue
            if head.status == pb.MODEL_STATUS_UNINITIALIZED:
                self._hello()
                continue
            if head.incarnation != self.incarnation:  # the aggregator restarted: its versions start over
                self.incarnation = head.incarnation
                self.x_start = None
                if head.status != pb.MODEL_STATUS_OK:
                    continue
            self.done = self.done or head.done
            if head.status == pb.MODEL_STATUS_UNCHANGED and self.x_start is not None:
                load_flat(self.params, self.x_start)
            elif vector is not None:
                load_flat(self.params, vector)
                self.x_start = vector.clone()
            self.version = head.version
            return

    def _push(self, steps: int, samples: int) -> pb.PushReply:
        s = self.s
        assert self.x_start is not None
        delta = flat_parameters(self.params).sub_(self.x_start)
        compute, _ = s.take_compute()
        reply = self.client.push(delta, incarnation=self.incarnation, worker_id=self.worker_id, rank=s.rank,
                                 generation=s.generation, base_version=self.version, num_samples=samples,
                                 local_steps=steps, step=s.step,
                                 resume_json=self.shard.position() if self.shard is not None else "",
                                 world_size=s.world_size, compute_time_s=compute)
        self.stats["pushes"] += 1
        if reply.status in (pb.PUSH_STATUS_APPLIED, pb.PUSH_STATUS_IGNORED):
            self.stats[from_wire(pb.PushStatus, reply.status)] += 1
            self.stats["max_staleness"] = max(self.stats["max_staleness"], reply.staleness)
            if reply.status == pb.PUSH_STATUS_APPLIED:
                s.mark_committed(s.step)
        self.done = self.done or reply.done
        return reply

    # -- the loop ----------------------------------------------------------------------------
    def run(self, total_steps: int, assignment: pb.GenerationAssignment) -> Iterator[tuple[int, Any]]:
        s = self.s
        self.total_steps = total_steps
        s.step = 0
        self._adopt(assignment)
        welcome = self._hello()
        if welcome.resume_step >= 0:  # a replacement / restarted worker continues its rank's record
            s.step = int(welcome.resume_step)
            s.mark_committed(s.step)
            if self.shard is not None and welcome.resume_json:
                self.shard.resume(welcome.resume_json)
        self._pull()
        try:
            while not self.done:
                self._between_rounds()
                base = self.version
                steps = samples = 0
                while steps < self.local_steps:
                    s.inject_faults()
                    started = time.perf_counter()
                    indices = self.shard.next_indices() if self.shard is not None else []
                    batch = None
                    if self.shard is not None:
                        assert self.collate is not None  # a shard exists only with a dataset
                        batch = self.collate(indices)
                    s.begin_compute()
                    yield s.step, batch
                    s.end_compute()
                    if self.shard is not None:
                        self.shard.advance()
                    s.step += 1
                    steps += 1
                    samples += len(indices) if self.shard is not None else 1
                    s.reporter.step_done(time.perf_counter() - started)
                reply = self._push(steps, samples)
                if reply.status == pb.PUSH_STATUS_REBASE:
                    self.stats["rebased"] += 1
                    log.warning("rank %d: update from version %d not applied (%s); re-pulling", s.rank, base,
                                reply.message)
                    self.x_start = None
                    self._hello()
                    self._pull()
                    continue
                if reply.hold:
                    self.stats["held"] += 1
                self._pull(min_version=base + 1 if reply.hold else 0)
                s.report_state()
            self._pull()  # the final global model, the same on every worker
            self._finish()
        finally:
            self.client.close()

    def _finish(self) -> None:
        """Reports finished, then stays until the job completes: if membership moves first (a
        replacement arrives), the next generation cannot form without this trainer."""
        s = self.s
        while True:
            with self._lock:
                assignment, self._next = self._next, None
            if assignment is not None and assignment.generation > s.generation:
                s.generation, s.rank, s.world_size = assignment.generation, assignment.rank, assignment.world_size
            self.coordinator.report_finished(pb.FinishedReport(trainer_uid=s.trainer_uid, generation=s.generation,
                                                               rank=s.rank, step=s.step))
            while True:
                reply = self.coordinator.watch(pb.WatchRequest(known_generation=s.generation, wait_s=20.0))
                if reply.job_state == pb.JOB_STATE_COMPLETE:
                    return
                if reply.job_state == pb.JOB_STATE_FAILED:
                    raise JobFailed("the coordinator declared the job failed")
                if reply.generation != s.generation:
                    break
            with self._lock:
                assignment, self._next = self._next, None
            if assignment is None or assignment.generation <= s.generation:
                assignment = self.coordinator.join(s.trainer_uid, s.generation)
            s.generation, s.rank, s.world_size = assignment.generation, assignment.rank, assignment.world_size

    def global_batch_indices(self) -> list[list[int]]:
        """Async mode has no global batch: this worker's part at its rank, empty lists elsewhere."""
        parts: list[list[int]] = [[] for _ in range(self.s.world_size)]
        if self.shard is not None:
            parts[self.s.rank] = self.shard.next_indices()
        return parts

    def status(self, include_records: bool = False) -> dict:
        """The aggregator's status (counters, staleness histogram; ``include_records``: every update)."""
        env = self.s.env
        assert env is not None
        client = AggregatorClient(env.coordinator, env.token, self.client.connect_timeout_s)
        try:
            return client.status(include_records)
        finally:
            client.close()
