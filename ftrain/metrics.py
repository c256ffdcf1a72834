"""Every Prometheus metric of ftrain, defined in one place (names are a fixed interface: see docs/architecture.md).

Each process (coordinator, agent) builds one `Metrics` on its own registry and serves it with
`serve(port)`; every name is registered in both, so a dashboard can rely on it (a figure a
process does not own stays at zero there). Who moves what:

* coordinator (job view): `ftrain_world_size` (live ranks of the current generation: it drops
  when a node or rank is lost and comes back when the next generation forms),
  `ftrain_generation`, `ftrain_step` (last committed step), `ftrain_step_duration_seconds` (wall
  time per step between two commits), snapshot stall/duration/bytes/encode bytes (from the
  trainers' snapshot reports), `ftrain_failures_total{kind}`, `ftrain_recoveries_total`,
  `ftrain_recovery_duration_seconds`, `ftrain_lost_steps_total`, `ftrain_stragglers_total`,
  `ftrain_straggler_score{rank}`, `ftrain_heartbeat_age_seconds{node}`; the durable tier's
  `ftrain_checkpoint_duration_seconds`, `ftrain_checkpoint_bytes_total`,
  `ftrain_checkpoint_last_step` and `ftrain_checkpoint_failures_total{reason}` (from the agents'
  checkpoint results); `ftrain_snapshots_skipped_total{reason}` (a step's snapshot did not fit
  in an agent's snapshot memory).
* agent (node view, one scrape target per node): its trainers report to it through the Agent
  service's `ReportTrainerMetrics` RPC (`TrainerReporter`, batched every 0.5 s from a background
  thread, never blocking the training loop): `ftrain_world_size`, `ftrain_generation`,
  `ftrain_step` (committed step its trainers know), `ftrain_step_duration_seconds`,
  `ftrain_snapshot_stall_seconds`, `ftrain_snapshot_duration_seconds`,
  `ftrain_snapshot_bytes_total`, `ftrain_erasure_encode_bytes_total`, plus
  `ftrain_shard_store_bytes`, `ftrain_snapshot_memory_limit_bytes`, `ftrain_shard_refusals_total`,
  `ftrain_trainer_restarts_total` and `ftrain_trainer_step{local_rank}`.
* `ftrain_update_staleness` is observed by the async aggregator.

Nothing here carries the job token or any other secret: labels are node ids, ranks and
failure kinds only.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from ftrain.proto.ftrain.v1 import agent_pb2

log = logging.getLogger("ftrain.metrics")

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_STALL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
_RECOVERY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)

FAILURE_KINDS = ("node", "rank")


class Metrics:
    """The metric objects of one process, registered on `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.world_size = Gauge(
            "ftrain_world_size", "Live trainer ranks of the current generation (drops at a failure until the "
            "next generation forms)", registry=r)
        self.generation = Gauge("ftrain_generation", "Current generation number", registry=r)
        self.step = Gauge("ftrain_step", "Last committed step", registry=r)
        self.step_duration = Histogram(
            "ftrain_step_duration_seconds", "Wall time of one training step", buckets=_STEP_BUCKETS, registry=r
        )
        self.snapshot_stall = Histogram(
            "ftrain_snapshot_stall_seconds", "Time the training loop waited for a snapshot capture",
            buckets=_STALL_BUCKETS, registry=r,
        )
        self.snapshot_duration = Histogram(
            "ftrain_snapshot_duration_seconds", "Time from capture to committed snapshot",
            buckets=_STEP_BUCKETS, registry=r,
        )
        self.snapshot_bytes = Counter("ftrain_snapshot_bytes", "Bytes captured into snapshots", registry=r)
        self.erasure_encode_bytes = Counter(
            "ftrain_erasure_encode_bytes", "Bytes run through the erasure encoder", registry=r
        )
        self.failures = Counter("ftrain_failures", "Failures detected, by kind", ["kind"], registry=r)
        for kind in FAILURE_KINDS:  # export zeros, so rate()/increase() see the first failure
            self.failures.labels(kind=kind)
        self.recoveries = Counter("ftrain_recoveries", "Recoveries completed (new generation formed after a failure)", registry=r)
        self.recovery_duration = Histogram(
            "ftrain_recovery_duration_seconds", "Time from failure detection to the next committed step",
            buckets=_RECOVERY_BUCKETS, registry=r,
        )
        self.lost_steps = Counter("ftrain_lost_steps", "Training steps whose work was redone after a failure", registry=r)
        self.stragglers = Counter("ftrain_stragglers", "Straggler flags raised", registry=r)
        self.straggler_score = Gauge(
            "ftrain_straggler_score", "Latest slowdown of a rank relative to the median rank", ["rank"], registry=r
        )
        self.update_staleness = Histogram(
            "ftrain_update_staleness", "Staleness (versions behind) of applied async updates",
            buckets=_STALENESS_BUCKETS, registry=r,
        )
        self.heartbeat_age = Gauge(
            "ftrain_heartbeat_age_seconds", "Seconds since the node's agent last heartbeated", ["node"], registry=r
        )
        self.shard_store_bytes = Gauge(
            "ftrain_shard_store_bytes", "Bytes of peers' snapshot shards held in this agent's memory", registry=r
        )
        self.snapshot_memory_limit = Gauge(
            "ftrain_snapshot_memory_limit_bytes", "The most snapshot memory this agent holds (--snapshot-memory)",
            registry=r)
        self.shard_refusals = Counter(
            "ftrain_shard_refusals", "Snapshot shards this agent refused: its snapshot memory limit was reached",
            registry=r)
        self.snapshots_skipped = Counter(
            "ftrain_snapshots_skipped", "Steps whose snapshot was skipped (never committed; recovery restores an "
            "older one), by reason (agent-memory)", ["reason"], registry=r)
        self.trainer_restarts = Counter("ftrain_trainer_restarts", "Trainer processes restarted by this agent", registry=r)
        self.shard_reads = Counter("ftrain_shard_reads", "Snapshot shards this agent served over the network, by kind "
                                   "(shard: an erasure-coded piece; whole: a trainer's whole copy)", ["kind"], registry=r)
        self.trainer_step = Gauge(
            "ftrain_trainer_step", "Steps done by each trainer of this node (agent only)", ["local_rank"], registry=r
        )
        self.checkpoint_duration = Histogram(
            "ftrain_checkpoint_duration_seconds", "Time from a step's commit to its durable checkpoint being complete",
            buckets=_RECOVERY_BUCKETS, registry=r)
        self.checkpoint_bytes = Counter("ftrain_checkpoint_bytes", "Bytes written to durable checkpoints", registry=r)
        self.checkpoint_last_step = Gauge(
            "ftrain_checkpoint_last_step", "Step of the newest complete durable checkpoint (-1: none)", registry=r)
        self.checkpoint_last_step.set(-1)
        self.checkpoint_failures = Counter(
            "ftrain_checkpoint_failures", "Durable checkpoints skipped or abandoned, by reason "
            "(busy, disk-full, read-only, permission, io-error, shards-unreadable, writer-lost, timeout, ...)",
            ["reason"], registry=r)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Starts the /metrics HTTP endpoint; returns the bound port (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_address[1])

    # -- agent side ------------------------------------------------------------------------------
    def record_trainer_report(self, report: agent_pb2.TrainerMetrics) -> None:
        """Folds one `agent_pb2.TrainerMetrics` (a trainer's figures since its last report) in."""
        for value in report.step_duration_s:
            self.step_duration.observe(max(0.0, value))
        for value in report.stall_s:
            self.snapshot_stall.observe(max(0.0, value))
        for value in report.snapshot_duration_s:
            self.snapshot_duration.observe(max(0.0, value))
        if report.snapshot_bytes:
            self.snapshot_bytes.inc(report.snapshot_bytes)
        if report.encode_bytes:
            self.erasure_encode_bytes.inc(report.encode_bytes)
        if report.generation >= 0:
            self.generation.set(report.generation)
            self.world_size.set(report.world_size)
        if report.committed_step >= 0:
            self.step.set(report.committed_step)
        self.trainer_step.labels(local_rank=str(report.local_rank)).set(report.step)


class TrainerReporter:
    """Trainer side: buffers per-step figures and sends them to the trainer's own agent.

    A background thread flushes every `interval_s` with one small unary RPC; the training loop
    only appends to lists. If the agent cannot be reached the figures are dropped (metrics must
    never slow down or break training). With no agent address it does nothing.
    """

    MAX_VALUES = 4096  # per list per message; more waits for the next message

    def __init__(self, agent_address: str, token: str, job_id: str, local_rank: int,
                 interval_s: float = 0.5, send: Callable[[object], None] | None = None) -> None:
        self.enabled = bool(agent_address) or send is not None
        self.job_id = job_id
        self.local_rank = local_rank
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._state = {"rank": -1, "generation": -1, "world_size": 0, "step": 0, "committed_step": -1}
        self._steps: list[float] = []
        self._stalls: list[float] = []
        self._durations: list[float] = []
        self._bytes = 0
        self._encoded = 0
        self._dirty = False
        self._stop = threading.Event()
        self._channel = None
        self._send = send
        if self.enabled and send is None:
            from ftrain.proto.ftrain.v1 import agent_pb2_grpc
            from ftrain.rpc import open_channel, token_metadata

            self._channel = open_channel(agent_address)
            stub = agent_pb2_grpc.AgentStub(self._channel)
            metadata = token_metadata(token)
            self._send = lambda message: stub.ReportTrainerMetrics(message, timeout=2.0, metadata=metadata)
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="ftrain-metrics", daemon=True)
            self._thread.start()

    # -- called by the Session (training thread or snapshot worker) -------------------------------
    def state(self, *, rank: int, generation: int, world_size: int, step: int, committed_step: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._state.update(rank=rank, generation=generation, world_size=world_size, step=step,
                               committed_step=committed_step)
            self._dirty = True

    def step_done(self, duration_s: float) -> None:
        if self.enabled:
            with self._lock:
                self._steps.append(duration_s)
                self._dirty = True

    def stall(self, stall_s: float) -> None:
        if self.enabled:
            with self._lock:
                self._stalls.append(stall_s)
                self._dirty = True

    def snapshot_stored(self, duration_s: float, nbytes: int, encoded_bytes: int) -> None:
        if self.enabled:
            with self._lock:
                self._durations.append(duration_s)
                self._bytes += int(nbytes)
                self._encoded += int(encoded_bytes)
                self._dirty = True

    def close(self) -> None:
        """Sends what is buffered (best effort) and stops the thread."""
        if not self.enabled or self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3.0)
        self.flush()
        if self._channel is not None:
            self._channel.close()

    # -- background ------------------------------------------------------------------------------
    def _take(self) -> agent_pb2.TrainerMetrics | None:
        from ftrain.proto.ftrain.v1 import agent_pb2

        n = self.MAX_VALUES
        with self._lock:
            if not self._dirty:
                return None
            message = agent_pb2.TrainerMetrics(
                job_id=self.job_id, local_rank=self.local_rank, **self._state,
                step_duration_s=self._steps[:n], stall_s=self._stalls[:n], snapshot_duration_s=self._durations[:n],
                snapshot_bytes=self._bytes, encode_bytes=self._encoded,
            )
            del self._steps[:n], self._stalls[:n], self._durations[:n]
            self._bytes = self._encoded = 0
            self._dirty = bool(self._steps or self._stalls or self._durations)
            return message

    def flush(self) -> bool:
        """Sends buffered figures now. Returns False if the agent could not take them (dropped)."""
        ok = True
        if self._send is None:  # disabled (no agent address, no send): nothing is ever buffered
            return ok
        while True:
            message = self._take()
            if message is None:
                return ok
            try:
                self._send(message)
            except Exception as error:  # the agent may be gone (node lost): never disturb training
                log.debug("trainer metrics not delivered: %s", error)
                ok = False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()
