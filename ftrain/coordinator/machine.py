"""The coordinator's decisions: a pure event -> effects state machine.

Every input the coordinator gets is one `on_*` method that takes the time `now`: an agent
registers, heartbeats or is found unreachable, a trainer exits, joins, reports a snapshot, a
pulse, a failed collective, its end or its own exception, and the ticker's `on_tick(now)`.
Each returns `Effects`: the events to log, the metric updates to apply, whether blocked callers
must wake up, and (restart mode) whether a fresh rendezvous store must be provided for the next
generation (the one provided is handed to a generation as it forms). Commands and
durable-checkpoint orders for agents are queued here and handed out by `on_heartbeat`.

No I/O, no threads, no clock and no logging: ftrain.coordinator.server applies the effects
under one lock, and tests drive the machine with a fake clock. The recovery protocol it runs,
with each wait and its bound, is in docs/architecture.md.
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from ftrain.config import JobSettings
from ftrain.coordinator.bugs import BugDetector, UserError, startup_failure, unfired_faults, unfired_warning
from ftrain.coordinator.catalog import BlobRecord, Catalog
from ftrain.coordinator.detector import (DetectionConfig, FailureDetector, HangDetector, ResponsePolicy,
                                         StragglerDetector, StragglerFlag, decide_response, frozen_ranks,
                                         rebalance_shares)
from ftrain.coordinator.durable import DurablePlanner, DurableSettings, Finalize, Outcome, Write
from ftrain.coordinator.finish import finish_verdict
from ftrain.coordinator.membership import Generation, Membership
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.snapshot import durable as durable_files
from ftrain.snapshot.placement import effective_code
from ftrain.textfmt import restore_phrase, short_reason, survives
from ftrain.wire import to_wire


RESTORE_ATTEMPTS = 2  # generations whose restore of a step failed before the step is given up


@dataclass
class Event:
    kind: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
    warning: bool = False  # also worth a warning line in the coordinator's log


@dataclass
class MetricUpdate:
    metric: str  # an attribute of ftrain.metrics.Metrics
    op: str  # inc | set | observe | remove (a label set) | clear (every label set)
    value: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Effects:
    events: list[Event] = field(default_factory=list)
    metrics: list[MetricUpdate] = field(default_factory=list)
    wake: bool = False  # state that blocked callers wait on changed
    need_store: bool = False  # restart mode: provide_store() a fresh rendezvous store for the next generation


@dataclass
class GenerationPlan:
    generation: Generation
    restore_step: int
    blobs: list[pb.BlobInfo] = field(default_factory=list)
    store_address: str = ""  # restart mode: the generation's own rendezvous store (torchrun's MASTER_ADDR:PORT)


class LostSteps:
    """Counts steps redone after a generation change, from step progress (pure).

    The work lost at a failure is the steps between the restore step and the step the failed
    generation had reached. Progress comes from trainers' snapshot reports and from the
    `ReportProgress` every surviving trainer sends when its step fails; a report that arrives
    after the next generation formed still counts (each step at most once).
    """

    def __init__(self) -> None:
        self._high: dict[int, int] = {}   # generation -> highest step reported in it
        self._old_generation: int | None = None
        self._counted_to = 0
        self.total = 0

    def progress(self, generation: int, step: int) -> int:
        """Records `step` reached in `generation`. Returns newly lost steps (a late report)."""
        if step > self._high.get(generation, -1):
            self._high[generation] = step
        if generation == self._old_generation and step > self._counted_to:
            lost, self._counted_to = step - self._counted_to, step
            self.total += lost
            return lost
        return 0

    def generation_formed(self, old_generation: int | None, new_generation: int, restore_step: int) -> int:
        """A generation formed and restores `restore_step`. Returns the steps the old one loses."""
        lost = 0
        if old_generation is not None and restore_step >= 0:
            high = self._high.get(old_generation, restore_step)
            lost = max(0, high - restore_step)
            self._old_generation, self._counted_to = old_generation, max(high, restore_step)
        else:
            self._old_generation = None
        self._high = {g: s for g, s in self._high.items() if g >= new_generation}
        self.total += lost
        return lost


class CoordinatorMachine:
    """The job's membership, catalog, detectors and recovery protocol; `job_state` is
    running, complete or failed."""

    def __init__(self, settings: JobSettings, store_address: str, now: float) -> None:
        self.settings = settings
        self.store_address = store_address
        self.membership = Membership(settings.target_nodes, settings.min_nodes, settings.replace_timeout_s)
        self.catalog = Catalog(keep=2)
        self.plan: GenerationPlan | None = None
        detection = DetectionConfig(hang_timeout_min_s=settings.hang_timeout_s,
                                    dead_after_s=settings.heartbeat_dead_after_s,
                                    suspect_after_s=min(3.0, max(1.5, settings.heartbeat_dead_after_s / 2)))
        self.liveness = FailureDetector(detection)  # agents' heartbeats
        self.hang = HangDetector(detection)
        self.straggler = StragglerDetector()
        self.trainers: dict[str, list[pb.TrainerInfo]] = {}
        self.commands: dict[str, list[str]] = collections.defaultdict(list)
        self.fired_faults: set[str] = set()
        self.bugs = BugDetector()  # the user's own exceptions: the same one after a restart fails the job
        self.unfired: list[str] = []  # warnings for --inject specs that never fired (set when the job ends)
        self.finished: dict[int, int] = {}  # rank -> the step it left session.steps() at
        self.failed_at: dict[int, int] = {}  # rank -> steps it had done when a collective of its failed (this generation)
        self.formed_at = now  # when the current generation formed (first-pulse grace)
        self.pulse_seen: dict[str, float] = {}  # trainer uid -> its newest pulse, in any generation (liveness)
        self.job_state = "running"
        self.message = ""
        self.failure_since: float | None = None
        self.started_at = now
        self.progress: dict[int, tuple[int, float]] = {}  # rank -> (newest step, when)
        self.stall_s = 0.0
        self.snapshot_interval_s = 0.0
        self.last_commit: tuple[int, int, float] | None = None  # (generation, step, time): step duration
        self.recoveries = 0
        self.failures = 0
        self.lost_steps = LostSteps()  # steps redone after a generation change
        self.lost_trainers: set[tuple[str, int]] = set()  # of the current generation (live world size)
        self.times_flagged: collections.Counter[int] = collections.Counter()
        self.pulses: dict[int, tuple[float, bool, int]] = {}  # rank -> (last pulse, in a collective, at step)
        self.held_shards: dict[tuple[str, int], BlobRecord] = {}  # reported by re-registering agents
        self.metrics_endpoints: dict[str, str] = {}  # node -> its agent's /metrics host:port
        self.codec_backends: dict[str, str] = {}  # node -> the erasure codec backend its agent reported
        self.shard_bytes: dict[str, int] = {}  # node -> bytes of snapshot shards its agent holds (heartbeats)
        self.shard_limit: dict[str, int] = {}  # node -> its agent's snapshot memory limit (heartbeats)
        self.skips_since_commit = 0  # snapshots skipped (agents' memory full) since the newest commit
        self.resume: durable_files.Checkpoint | None = None  # the durable checkpoint this job started from
        self.resume_fallbacks: list[durable_files.Checkpoint] = []  # older complete ones, newest first
        self.restore_failures: dict[int, set[int]] = {}  # step -> generations whose restore of it failed
        # the newest complete checkpoint of this job found in --checkpoint-dir at start (not resumed
        # from): after a coordinator restart, the durable tier goes on from it (see _ingest_held_shards)
        self.durable_found: durable_files.Checkpoint | None = None
        self.durable: DurablePlanner | None = None  # the durable tier (--checkpoint-dir)
        if settings.checkpoint_dir:
            self.durable = DurablePlanner(DurableSettings(settings.checkpoint_dir, settings.checkpoint_every,
                                                          settings.checkpoint_every_s, settings.checkpoint_keep,
                                                          dcp_every=settings.checkpoint_dcp_every),
                                          settings.job_id, now)
        self.checkpoint_orders: dict[str, list[pb.CheckpointOrder]] = collections.defaultdict(list)
        self.killed_forming: set[str] = set()  # trainer uids killed for not joining a forming generation
        self.restart_ordered = -1  # restart mode: the pending generation every trainer was ordered to restart into
        self.restart_stale: set[str] = set()  # restart mode: the processes that order replaces (joins not counted)
        self.next_store = ""  # restart mode: the rendezvous store the next generation gets (provide_store; the
        # host provides the first one)
        self._world_dirty = False  # ftrain_world_size must be recomputed (_take)
        self._members_cache: tuple[GenerationPlan, int, list[pb.Member]] | None = None
        self._fx = Effects()

    # -- effects ---------------------------------------------------------------------------------
    def _take(self) -> Effects:
        if self._world_dirty:  # once per input, not once per lost node (it is O(world size))
            self._world_dirty = False
            if self.plan is not None:
                nodes = self.membership.nodes
                self._metric("world_size", "set", sum(
                    1 for a in self.plan.generation.ranks if a.node_id in nodes and nodes[a.node_id].alive
                    and (a.node_id, a.local_rank) not in self.lost_trainers))
        fx, self._fx = self._fx, Effects()
        return fx

    def _event(self, kind: str, message: str, warning: bool = False, **extra: Any) -> None:
        self._fx.events.append(Event(kind, message, extra, warning))

    def _metric(self, metric: str, op: str, value: float = 0.0, **labels: str) -> None:
        self._fx.metrics.append(MetricUpdate(metric, op, value, labels))

    def _wake(self) -> None:
        self._fx.wake = True

    def provide_store(self, address: str) -> None:
        """Restart mode: a fresh rendezvous store (Effects.need_store) for the next generation that
        forms, so a script's env:// init_process_group never sees an earlier generation's keys."""
        self.next_store = address

    # -- agents ----------------------------------------------------------------------------------
    def on_register(self, now: float, request: pb.RegisterAgentRequest) -> tuple[str, Effects]:
        """An agent (re-)registers; after a coordinator restart it brings the shards it holds."""
        node_id = self.membership.register_node(request.node_id, request.address, request.nproc, now,
                                                slot=request.slot if request.held or request.generation >= 0 else -1)
        self.liveness.heartbeat(node_id, now)
        self.metrics_endpoints[node_id] = request.metrics_address
        self.codec_backends[node_id] = request.ec_backend or "unknown"
        if request.generation >= 0:
            self.membership.observe_generation(request.generation)
        if request.held and self.plan is None:
            self._ingest_held_shards(node_id, request.held)
        self._event("node-joined", f"node {node_id} ({request.hostname or request.address}) registered with "
                                   f"{request.nproc} trainer(s)", node=node_id)
        self._try_form(now)
        self._wake()
        return node_id, self._take()

    def on_heartbeat(self, now: float, request: pb.HeartbeatRequest) -> tuple[pb.HeartbeatResponse, Effects]:
        """An agent's heartbeat: its trainers, shard bytes and checkpoint results in; its queued
        commands and checkpoint orders out."""
        node = self.membership.nodes.get(request.node_id)
        if node is not None and not node.alive and "evict" in self.commands.get(request.node_id, []):
            self.commands.pop(request.node_id)
            return pb.HeartbeatResponse(job_state=to_wire(pb.JobState, self.job_state), known=True, commands=["evict"]), self._take()
        if node is None or not node.alive:
            return pb.HeartbeatResponse(job_state=to_wire(pb.JobState, self.job_state), known=False,
                                        message="unknown node: re-register"), self._take()
        self.liveness.heartbeat(request.node_id, now)
        self.trainers[request.node_id] = list(request.trainers)
        self.shard_bytes[request.node_id] = request.shard_bytes
        self.shard_limit[request.node_id] = request.shard_limit_bytes
        self._checkpoint_results(now, request.node_id, request.checkpoint_results)
        reply = pb.HeartbeatResponse(job_state=to_wire(pb.JobState, self.job_state), min_retained_step=self.min_retained_step(),
                                     commands=self.commands.pop(request.node_id, []), message=self.message,
                                     known=True, slot=-1 if node.slot is None else node.slot,
                                     generation=self.plan.generation.number if self.plan else -1,
                                     checkpoint_orders=self.checkpoint_orders.pop(request.node_id, []),
                                     checkpoint_pending=self.checkpoint_pending(),
                                     skipped_steps=self.catalog.skipped_steps,
                                     dropped_blobs=self.catalog.given_up_blobs,
                                     pinned_steps=self.pinned_steps())
        return reply, self._take()

    def on_agent_unreachable(self, now: float, node_id: str) -> Effects:
        """A probe found the agent refusing connections: its node was lost."""
        self._node_dead(now, node_id, "agent unreachable")
        return self._take()

    def live_agents(self) -> list[tuple[str, str]]:
        """(node id, address) of every live agent."""
        return [(n.node_id, n.address) for n in self.membership.nodes.values() if n.alive and n.address]

    def heard_from_all_since(self, since: float, now: float) -> bool:
        """Every live agent heartbeated after `since` (it learned how the job ended)."""
        return all(self.liveness.knows(node) and now - self.liveness.heartbeat_age(node, now) > since
                   for node in self._live_nodes())

    def on_trainer_exit(self, now: float, request: pb.TrainerExit) -> tuple[pb.Ack, Effects]:
        """A trainer process exited; ok=False tells its agent to restart nothing."""
        if self.job_state != "running":
            return pb.Ack(ok=self.job_state != "failed", message=self.message), self._take()
        # did this trainer process reach ftrain.init (its pulse starts there)? By node/local rank and
        # time, not pid: the agent's child may be a wrapper (a shell) around the Python process
        prefix = f"{request.node_id}/{request.local_rank}/"
        reached = any(uid.startswith(prefix) and seen >= now - request.uptime_s - 1.0
                      for uid, seen in self.pulse_seen.items())
        started_after = request.uptime_s > 0 and now - self.started_at > request.uptime_s
        startup = startup_failure(request.node_id, request.local_rank, request.exit_code, reached, started_after)
        if startup:
            self._fail(now, startup)
            return pb.Ack(ok=False, message=startup), self._take()
        if request.exit_code == 0:  # a trainer that finished (or a spare that left): nothing failed
            return pb.Ack(ok=True), self._take()
        how = f"signal {-request.exit_code}" if request.exit_code < 0 else f"exit code {request.exit_code}"
        if self.membership.trainer_failed(request.node_id, request.local_rank, now) or self.membership.pending:
            self._record_failure(now, "rank", f"trainer {request.node_id}/{request.local_rank} (pid {request.pid}) "
                                              f"died: {how}")
            self._update_live_world((request.node_id, request.local_rank))
        if not request.will_restart:
            self._fail(now, f"trainer {request.node_id}/{request.local_rank} keeps failing ({how}); its agent gave up")
        self._try_form(now)
        self._wake()
        return pb.Ack(ok=True), self._take()

    # -- trainers --------------------------------------------------------------------------------
    def on_join(self, now: float, request: pb.JoinRequest, first: bool) -> tuple[pb.GenerationAssignment | None,
                                                                                  Effects]:
        """A trainer asks for the generation after `request.known_generation`: its assignment, the
        job's end, or None (not formed yet: the caller waits for a wake-up and asks again)."""
        m = self.membership
        if request.trainer_uid in self.restart_stale:  # its agent restarts it (see _order_restart)
            return self._job_ended(), self._take()
        if first:
            m.observe_generation(request.known_generation)
            plan = self.plan
            if (self.settings.recovery == "restart" and plan is not None and not m.pending
                    and plan.generation.number > request.known_generation and self.job_state == "running"):
                rank = plan.generation.rank_of(request.trainer_uid)
                if rank is not None:
                    # restart mode: the process its agent joined for takes its rank; it must not count as
                    # waiting for the next generation (that one is made of the restarted processes)
                    return self.assignment(plan, rank), self._take()
            m.trainer_waiting(request.trainer_uid, request.node_id, request.local_rank)
        elif m.pending and m.waiting.get((request.node_id, request.local_rank)) != request.trainer_uid \
                and request.trainer_uid not in m.waiting.values():  # the first test spares the O(N) one
            m.trainer_waiting(request.trainer_uid, request.node_id, request.local_rank)
        self._try_form(now)
        if self.job_state != "running":
            return self._job_ended(), self._take()
        plan = self.plan
        if plan is not None and plan.generation.number > request.known_generation and not m.pending:
            rank = plan.generation.rank_of(request.trainer_uid)
            if rank is not None:
                return self.assignment(plan, rank), self._take()
        return None, self._take()

    def _job_ended(self) -> pb.GenerationAssignment | None:
        """The answer to a join once the job has ended (complete or failed); None while it runs."""
        if self.job_state == "running":
            return None
        return pb.GenerationAssignment(status=to_wire(pb.AssignmentStatus, self.job_state), message=self.message)

    def _members(self, plan: GenerationPlan) -> list[pb.Member]:
        """The generation's members (node, address, first rank, nproc), built once per plan and
        membership version: every rank of a large generation gets the same list."""
        cache = self._members_cache
        if cache is None or cache[0] is not plan or cache[1] != self.membership.version:
            first: dict[str, int] = {}
            for a in plan.generation.ranks:  # in rank order: the first seen is the node's lowest rank
                first.setdefault(a.node_id, a.rank)
            members = []
            for node_id, rank in first.items():
                node = self.membership.nodes[node_id]
                members.append(pb.Member(node_id=node_id, address=node.address, first_rank=rank, nproc=node.nproc))
            cache = self._members_cache = (plan, self.membership.version, members)
        return cache[2]

    def assignment(self, plan: GenerationPlan, rank: int) -> pb.GenerationAssignment:
        members = self._members(plan)
        return pb.GenerationAssignment(
            status=pb.ASSIGNMENT_STATUS_OK, generation=plan.generation.number, rank=rank, world_size=plan.generation.world_size,
            store_address=plan.store_address or self.store_address, restore_step=plan.restore_step,
            restore_blobs=plan.blobs, members=members, config=self.config_message(),
            batch_shares=plan.generation.batch_shares,
        )

    def on_failure_report(self, now: float, request: pb.FailureReport) -> Effects:
        """A trainer's collective failed: everyone re-forms (the cause is found by probes,
        heartbeats and exits)."""
        plan = self.plan
        if plan is not None and request.generation == plan.generation.number and request.rank in self.progress:
            self.failed_at[request.rank] = self.progress[request.rank][0]  # reported just before the failure
            self._check_finish(now)
        if plan is not None and request.generation == plan.generation.number and request.restore_failed:
            self._restore_failed(now, plan, request.rank, request.reason)
        if self.membership.collective_failed(request.generation, now):
            self._event("collective-failed", f"rank {request.rank} of generation {request.generation}: "
                                             f"{short_reason(request.reason)}")
            if self.failure_since is None:
                self.failure_since = now
            self._wake()
        return self._take()

    def on_snapshot(self, now: float, request: pb.SnapshotReport) -> tuple[bool, Effects]:
        """A rank stored its blob of a step; the last rank's report commits the step. Returns
        whether the report was accepted (it is of the current, formed generation)."""
        blob = request.blob
        accepted = self.plan is not None and request.generation == self.plan.generation.number \
            and not self.membership.pending
        if not accepted:
            return False, self._take()
        if request.skipped:
            self._snapshot_skipped(now, request)
            return True, self._take()
        record = BlobRecord(step=blob.step, producer_rank=blob.producer_rank,
                            producer_world_size=blob.producer_world_size, producer_trainer=blob.producer_trainer,
                            producer_node=blob.producer_node, shard_nodes=tuple(x.node_id for x in blob.shards),
                            info=blob)
        self._metric("snapshot_bytes", "inc", blob.size)
        self._metric("erasure_encode_bytes", "inc", blob.k * blob.shard_len if blob.m else 0)
        self._metric("lost_steps", "inc", self.lost_steps.progress(request.generation, request.step))
        if request.stall_s:
            self._metric("snapshot_stall", "observe", request.stall_s)
            self.stall_s = request.stall_s
        if request.snapshot_duration_s:
            self._metric("snapshot_duration", "observe", request.snapshot_duration_s)
        self._progress(now, request.rank, request.step)
        if request.compute_time_s:
            self._record_compute(now, request.rank, request.step, request.compute_time_s, request.steps_covered or 1)
        if self.catalog.record(request.generation, record):
            self._committed(now, request.step)
        return True, self._take()

    def _snapshot_skipped(self, now: float, request: pb.SnapshotReport) -> None:
        """A rank could not store its blob (an agent's snapshot memory is full): the step never
        commits, and training goes on; a recovery restores the newest committed step, older. With
        nothing committed at all the job could not recover from anything: it fails at once."""
        self._progress(now, request.rank, request.step)
        if not self.catalog.skip(request.generation, request.step):
            return
        self._wake()  # the other ranks wait for the step's commit
        self._metric("snapshots_skipped", "inc", 1, reason="agent-memory")
        if self.catalog.newest_committed < 0 and self.resume is None:
            self._fail(now, f"the first snapshot (step {request.step}) does not fit in the agents' snapshot memory: "
                            f"rank {request.rank}: {request.skipped}")
            return
        self.skips_since_commit += 1
        if self.skips_since_commit == 1:  # one warning per run of skipped steps; ftrain_snapshots_skipped_total counts all
            self._event("snapshot-skipped", f"snapshot of step {request.step} skipped: rank {request.rank}: "
                        f"{request.skipped}; the newest committed snapshot stays step "
                        f"{self.catalog.newest_committed} until one fits", warning=True, step=request.step,
                        rank=request.rank)

    def commit_wait_over(self, step: int, generation: int) -> bool:
        """A caller waiting for `step` of `generation` to commit can stop waiting."""
        return (self.catalog.newest_committed >= step or self.membership.number != generation
                or self.job_state != "running" or self.catalog.is_skipped(step))

    def on_progress(self, now: float, request: pb.ProgressReport) -> Effects:
        """A trainer's pulse (its process lives; in a collective or not; its step), or the step
        it had reached when its step failed."""
        plan = self.plan
        if request.pulse:
            self.pulse_seen[request.trainer_uid] = now
            if plan is not None and request.generation == plan.generation.number:
                self.pulses[request.rank] = (now, request.in_collective, request.step)
                if not self.membership.pending:  # as for snapshot reports
                    # steps between snapshots are progress too: with --snapshot-every N the
                    # snapshot reports alone would leave the hang watchdog N steps without news
                    self._progress(now, request.rank, request.step)
            return self._take()
        self.progress[request.rank] = (request.step, now)
        self._metric("lost_steps", "inc", self.lost_steps.progress(request.generation, request.step))
        return self._take()

    def on_worker_progress(self, now: float, rank: int, generation: int, step: int, steps: int,
                           compute_s: float) -> Effects:
        """Async mode: an update the aggregator applied is its worker's step progress."""
        plan = self.plan
        if plan is None or generation != plan.generation.number or self.membership.pending:
            return self._take()
        self._progress(now, rank, step)
        if compute_s > 0:
            self._record_compute(now, rank, step, compute_s, max(1, steps))
        return self._take()

    def on_fault_claim(self, request: pb.FaultClaim) -> tuple[bool, Effects]:
        """A trainer is about to inject a --inject fault: each one fires once."""
        if request.fault in self.fired_faults or request.fault not in {f.raw for f in self.settings.inject}:
            return False, self._take()
        self.fired_faults.add(request.fault)
        self._event("inject", f"injecting {request.fault} (rank {request.rank} at step {request.step})")
        return True, self._take()

    def on_finished(self, now: float, request: pb.FinishedReport) -> Effects:
        """A rank left session.steps() at `request.step`."""
        plan = self.plan
        if plan is not None and request.generation == plan.generation.number:
            self.finished[request.rank] = request.step
            self.hang.remove_rank(request.rank)
            self._check_finish(now)
        return self._take()

    def on_user_error(self, now: float, error: UserError) -> tuple[tuple[bool, str], Effects]:
        """An exception escaped the user's script: (print its traceback, job-failed message)."""
        decision = self.bugs.report(error)
        if self.job_state != "running":
            return (False, self.message), self._take()
        self._event("user-error", f"rank {error.rank} raised {error.describe()} at step {error.step} "
                                  f"(generation {error.generation})", rank=error.rank, step=error.step,
                    error_type=error.error_type)
        if decision.fail_message:
            self._fail(now, decision.fail_message)
        return (decision.print_traceback, decision.fail_message), self._take()

    def fail(self, now: float, message: str) -> Effects:
        """Ends the job as failed (a launcher's timeout, an agent given up, ...)."""
        self._fail(now, message)
        return self._take()

    # -- the ticker ------------------------------------------------------------------------------
    def on_tick(self, now: float) -> Effects:
        """Heartbeat deaths, hangs and frozen ranks, the job's end, restart orders, shrink
        timeouts and the durable tier's time-based checkpoints."""
        for node_id in self.liveness.nodes():
            self._metric("heartbeat_age", "set", self.liveness.heartbeat_age(node_id, now), node=node_id)
        for node_id in self.liveness.newly_dead(now):
            self._node_dead(now, node_id, f"no heartbeat for {self.liveness.heartbeat_age(node_id, now):.1f} s")
        self._check_hangs(now)
        self._check_finish(now)
        self._order_restart()
        self._try_form(now)
        self._tick_durable(now)
        return self._take()

    def on_durable_tick(self, now: float) -> Effects:
        self._tick_durable(now)
        return self._take()

    def _tick_durable(self, now: float) -> None:
        if self.durable is not None:
            self._checkpoint_outcome(now, self.durable.tick(now))

    # -- failures and recovery -------------------------------------------------------------------
    def _restore_failed(self, now: float, plan: GenerationPlan, rank: int, reason: str) -> None:
        """A rank could not read the step its generation restores (a blob with more bad shards than
        the code tolerates, a checkpoint file that fails its checksum). Once the restores of a step
        failed in RESTORE_ATTEMPTS generations, the step is given up: the next generation restores
        the previous committed step, or, with none left, the job fails saying why, instead of
        re-forming forever."""
        step = plan.restore_step
        if step < 0:  # a fresh start restores nothing
            return
        failed = self.restore_failures.setdefault(step, set())
        if plan.generation.number in failed:
            return
        failed.add(plan.generation.number)
        self._event("restore-failed", f"rank {rank} of generation {plan.generation.number} could not restore step "
                                      f"{step}: {short_reason(reason)}", warning=True, step=step, rank=rank)
        if len(failed) < RESTORE_ATTEMPTS:
            return
        self.catalog.discard(step)
        if self.resume is not None and self.resume.step == step:
            older = self._resume_fallback(plan.generation.world_size)
            self.resume = None
            if older is not None and older.step > self.catalog.newest_committed:
                self._resume(now, older)
                self._event("resume-fallback", f"the checkpoint of step {step} could not be restored by "
                                               f"{plan.generation.world_size} rank(s); resuming from the older one of "
                                               f"step {older.step} in {older.path} (world size {older.world_size}"
                                               f"{', with a DCP copy' if older.dcp else ''})", warning=True,
                            step=older.step, path=older.path, failed_step=step)
        fallback = max(self.catalog.newest_committed, self.resume.step if self.resume else -1)
        if fallback < 0:
            self._fail(now, f"unrecoverable: the snapshot of step {step} could not be restored in {len(failed)} "
                            f"generations (last: rank {rank}: {short_reason(reason)}) and no older committed step "
                            f"is kept; `ftrain launch --resume DIR` goes on from a durable checkpoint, if the job wrote one")
            return
        self._event("snapshot-unusable", f"giving up step {step} after {len(failed)} failed restores; restoring step "
                                         f"{fallback}", warning=True, step=step, fallback=fallback)

    def _record_failure(self, now: float, kind: str, message: str, **extra: Any) -> None:
        self.failures += 1
        self._metric("failures", "inc", 1, kind=kind)
        if self.failure_since is None:
            self.failure_since = now
        self._event("failure", message, failure_kind=kind, **extra)

    def _update_live_world(self, lost_trainer: tuple[str, int] | None = None) -> None:
        """ftrain_world_size: ranks of the current generation still alive (drops at a failure)."""
        if lost_trainer is not None:
            self.lost_trainers.add(lost_trainer)
        self._world_dirty = True  # set by _take, at the end of this input

    def _live_nodes(self) -> set[str]:
        return {n.node_id for n in self.membership.nodes.values() if n.alive}

    def _node_dead(self, now: float, node_id: str, reason: str) -> None:
        if not self.membership.node_dead(node_id, now):
            return
        self._record_failure(now, "node", f"node {node_id} lost ({reason})")
        self.checkpoint_orders.pop(node_id, None)
        if self.durable is not None:
            orders, outcome = self.durable.on_node_lost(node_id, self._live_nodes())
            self._send_orders(orders)
            self._checkpoint_outcome(now, outcome)
        self._update_live_world()
        if self.liveness.knows(node_id):
            self._metric("heartbeat_age", "remove", node=node_id)
        self.liveness.forget(node_id)
        self._try_form(now)
        self._wake()

    def _check_hangs(self, now: float) -> None:
        """Ranks without step progress for the hang timeout, and ranks whose process stopped
        pulsing (frozen), are killed and treated as failed."""
        plan = self.plan
        if plan is None or self.job_state != "running":
            return
        if self.membership.pending:
            if self.settings.recovery == "inprocess":  # restart mode: every agent kills its trainers anyway
                self._check_forming(now, plan)
            return
        live = [r for r in range(plan.generation.world_size) if r not in self.finished]
        uids = {a.rank: a.trainer_uid for a in plan.generation.ranks}
        seen = {r: self.pulse_seen[uid] for r, uid in uids.items() if uid in self.pulse_seen}
        frozen = frozen_ranks(seen, live, self.formed_at, now,
                              self.settings.pulse_silent_after_s, max(30.0, self.settings.pulse_silent_after_s))
        frozen = [r for r in frozen if (plan.generation.ranks[r].node_id, plan.generation.ranks[r].local_rank)
                  not in self.lost_trainers]
        hung = sorted(set(self.hang.hung(now)) | set(frozen))
        if not hung:
            return
        # peers blocked in a collective on the culprit make no progress either: kill only the ranks
        # that are frozen (pulse silent) or stuck outside a collective; all of them if none stands out
        culprits = [r for r in hung if r in frozen or now - self.pulses.get(r, (0.0, False, 0))[0] > 3.0
                    or not self.pulses[r][1]]
        waiting = [r for r in hung if r not in culprits]
        if waiting:
            self._event("hang-peers", f"ranks {waiting} are waiting in a collective on ranks {culprits or hung}")
        for rank in culprits or hung:
            assignment = plan.generation.ranks[rank]
            why = (f"frozen: no pulse from its process for {self.settings.pulse_silent_after_s:.0f} s" if rank in frozen
                   else f"hung: no step progress for {self.hang.timeout_s():.1f} s")
            self._record_failure(now, "hang", f"rank {rank} ({assignment.node_id}/{assignment.local_rank}) {why}; "
                                              f"killing it", rank=rank)
            self.commands[assignment.node_id].append(f"kill-trainer:{assignment.local_rank}")
            self.hang.remove_rank(rank)
        self.membership.collective_failed(plan.generation.number, now)
        self._wake()

    def _check_forming(self, now: float, plan: GenerationPlan) -> None:
        """While a generation forms: a member of the previous one that has not joined it and whose
        process is frozen (no pulse for the pulse timeout), or that has not joined within
        max(30 s, the hang timeout), is killed; its agent restarts it and the new process joins.
        The forming generation never waits for it forever."""
        m = self.membership
        pending_for = now - m.pending_since if m.pending_since is not None else 0.0
        for a in plan.generation.ranks:
            node = m.nodes.get(a.node_id)
            if node is None or not node.alive or (a.node_id, a.local_rank) in m.waiting:
                continue
            if a.trainer_uid in self.killed_forming or (a.node_id, a.local_rank) in self.lost_trainers:
                continue
            silent = now - self.pulse_seen.get(a.trainer_uid, now)
            if silent >= self.settings.pulse_silent_after_s:
                why = f"frozen: no pulse from its process for {silent:.0f} s"
            elif pending_for >= max(30.0, self.settings.hang_timeout_s):
                why = f"did not join the new generation within {pending_for:.0f} s"
            else:
                continue
            self.killed_forming.add(a.trainer_uid)
            self.failures += 1
            self._metric("failures", "inc", 1, kind="hang")
            self._event("failure", f"rank {a.rank} ({a.node_id}/{a.local_rank}) {why} while generation {m.number} "
                                   f"forms; killing it", failure_kind="hang", rank=a.rank)
            self.commands[a.node_id].append(f"kill-trainer:{a.local_rank}")

    def _order_restart(self) -> None:
        """Restart mode: once a new generation is pending after a formed one (any failure, a node
        that joins), every live agent restarts all its trainers from the top of the script."""
        m = self.membership
        if (self.settings.recovery != "restart" or self.plan is None or not m.pending or self.job_state != "running"
                or self.restart_ordered >= m.number):
            return
        self.restart_ordered = m.number
        # the formed generation's processes are killed and started again: one that asks to join meanwhile
        # (its restore failed while the generation formed, say) must not make the new generation of itself
        self.restart_stale = {a.trainer_uid for a in self.plan.generation.ranks}
        m.forget_waiting(self.restart_stale)
        nodes = sorted(self._live_nodes())
        for node_id in nodes:
            self.commands[node_id].append(f"restart-trainers:{m.number}")
        self._event("restart", f"restarting every trainer ({', '.join(nodes)}) into generation {m.number}",
                    generation=m.number)

    def _try_form(self, now: float) -> None:
        if self.job_state != "running":
            return
        self._order_restart()  # restart mode: before the old processes' joins could form it
        generation = self.membership.try_form(now)
        if generation is not None:
            self._plan_generation(now, generation)

    def _resume_blobs(self, world_size: int) -> list[pb.BlobInfo]:
        """The durable checkpoint's files as restore blobs: each is read by one rank of the new
        generation and broadcast, as a blob from memory is."""
        assert self.resume is not None
        checkpoint = self.resume
        return [pb.BlobInfo(blob_id=f"durable-{checkpoint.step}-{part.rank}", step=checkpoint.step,
                            producer_rank=part.rank, producer_world_size=checkpoint.world_size, size=part.bytes,
                            raw_size=part.bytes, crc32=part.crc32, path=part.path, k=1, m=0, generation=-1,
                            source_rank=part.rank % world_size, source_holds_local=False)
                for part in checkpoint.parts]

    def _plan_generation(self, now: float, generation: Generation) -> None:
        """A generation formed: what it restores and from where, or the job fails when a blob of
        the newest committed step lost more shards than its code tolerates."""
        restore_step = self.catalog.newest_committed
        blobs: list[pb.BlobInfo] = []
        lost: list[str] = []
        members = {a.trainer_uid: a.rank for a in generation.ranks}
        if self.resume is not None and restore_step < self.resume.step:  # nothing newer in memory yet
            restore_step = self.resume.step
            blobs = self._resume_blobs(generation.world_size)
        for index, record in enumerate(self.catalog.blobs(restore_step) if not blobs else []):
            info = pb.BlobInfo()
            info.CopyFrom(record.info)
            holder = members.get(record.producer_trainer)
            if holder is not None:
                info.source_rank, info.source_holds_local = holder, True
            else:
                live = [s for s in info.shards if self.membership.nodes.get(s.node_id) and
                        self.membership.nodes[s.node_id].alive]
                producer = self.membership.nodes.get(info.producer_node)
                # restart mode: the producer's own agent keeps a whole copy (read before any shard)
                whole = self.settings.recovery == "restart" and producer is not None and producer.alive
                if len(live) < info.k and not whole:
                    missing = sorted(s.index for s in info.shards if s not in live)
                    lost.append(
                        f"blob {info.blob_id} (rank {info.producer_rank} of step {restore_step}) has "
                        f"{len(live)} of {info.k + info.m} shards left, needs {info.k}; lost shards {missing} "
                        f"on nodes {sorted({s.node_id for s in info.shards if s not in live})}"
                    )
                info.source_rank, info.source_holds_local = index % generation.world_size, False
            blobs.append(info)
        if lost:
            self._fail(now, f"unrecoverable: more simultaneous losses than the erasure code tolerates. Last "
                            f"committed step {restore_step}. " + "; ".join(lost))
            return
        lost_count = self.lost_steps.generation_formed(self.plan.generation.number if self.plan else None,
                                                       generation.number, restore_step)
        self._metric("lost_steps", "inc", lost_count)
        self.lost_trainers.clear()
        self.straggler.reset(range(generation.world_size))
        self.hang.reset(range(generation.world_size), now=now)
        self.pulses = {}
        self.formed_at = now
        self.skips_since_commit = 0
        self._metric("straggler_score", "clear")
        self.plan = GenerationPlan(generation, restore_step, blobs)
        if self.settings.recovery == "restart":
            self.plan.store_address, self.next_store = self.next_store, ""
            self._fx.need_store = True
        self.catalog.open_generation(generation.number, generation.world_size)
        self.finished.clear()
        self.failed_at.clear()
        self.progress.clear()
        self._metric("generation", "set", generation.number)
        self._metric("world_size", "set", generation.world_size)
        if self.failure_since is not None:
            self.recoveries += 1
            self._metric("recoveries", "inc", 1)
        self._event(
            "generation",
            f"generation {generation.number} formed: world size {generation.world_size} on "
            f"{', '.join(generation.node_ids())}; {restore_phrase(restore_step, any(b.path for b in blobs))}",
            generation=generation.number, world_size=generation.world_size, restore_step=restore_step,
        )
        self._wake()

    # -- progress, commits, stragglers -----------------------------------------------------------
    def _progress(self, now: float, rank: int, step: int) -> None:
        """Rank `rank` of the current generation is at `step` (a snapshot report, a pulse or an
        applied update); feeds the hang watchdog and its step-time history."""
        previous = self.progress.get(rank)
        if previous is not None and step <= previous[0]:
            return  # no newer step (a pulse repeats it, a snapshot report lags it): the watchdog's clock runs on
        step_time = (now - previous[1]) / (step - previous[0]) if previous is not None else None
        self.hang.progress(rank, step, now, step_time)
        self.progress[rank] = (step, now)

    def _committed(self, now: float, step: int) -> None:
        self._metric("step", "set", step)
        if self.skips_since_commit:
            self._event("snapshots-stored", f"step {step} committed after {self.skips_since_commit} skipped "
                        f"snapshot(s)", step=step)
            self.skips_since_commit = 0
        generation = self.plan.generation.number if self.plan else -1
        last = self.last_commit
        if last is not None and last[0] == generation and step > last[1]:
            steps = step - last[1]
            for _ in range(min(steps, 10000)):  # one observation per step: rate(_count) is the step rate
                self._metric("step_duration", "observe", (now - last[2]) / steps)
        if last is not None:
            self.snapshot_interval_s = now - last[2]
        self.last_commit = (generation, step, now)
        self._checkpoint_committed(now, step)
        if self.failure_since is not None:
            duration = now - self.failure_since
            self._metric("recovery_duration", "observe", duration)
            # phases: until the new generation formed (detection, restarts in restart mode, rendezvous),
            # then restore and the first step(s) to this commit
            formed = max(0.0, min(duration, self.formed_at - self.failure_since))
            self._event("recovered", f"step {step} committed {duration:.2f} s after the failure (generation formed "
                                     f"after {formed:.2f} s, restore and first step {duration - formed:.2f} s)",
                        recovery_s=round(duration, 3), formed_s=round(formed, 3), restore_s=round(duration - formed, 3),
                        recovery_mode=self.settings.recovery)
            self.failure_since = None
        self._wake()

    def _record_compute(self, now: float, rank: int, step: int, mean_s: float, steps: int) -> None:
        """Feeds the straggler detector the mean compute time of the `steps` steps before `step`."""
        evaluations = self.straggler.evaluations
        try:
            for covered in range(max(0, step - min(steps, 1000)), step):
                self.straggler.record(rank, covered, mean_s)
        except ValueError:
            return
        scored = self.straggler.evaluations != evaluations  # scores change only when a window is evaluated
        for flag in self.straggler.new_flags():
            self._metric("stragglers", "inc", 1)
            self._event("straggler", f"rank {flag.rank} is a straggler: {flag.slowdown:.2f} x the median compute "
                                     f"time (window {flag.window})", rank=flag.rank, slowdown=round(flag.slowdown, 3))
            self._respond_to_straggler(now, flag)
        if scored:
            for r, score in self.straggler.scores().items():
                self._metric("straggler_score", "set", score, rank=str(r))

    def _respond_to_straggler(self, now: float, flag: StragglerFlag) -> None:
        """The response ladder (report -> rebalance -> evict), as the job's policy says."""
        self.times_flagged[flag.rank] += 1
        action = decide_response(self.settings.straggler_policy, self.settings.mode, flag, self.times_flagged[flag.rank])
        plan = self.plan
        if plan is None or self.membership.pending:
            return
        if action.kind == ResponsePolicy.REBALANCE:
            scores = self.straggler.scores()
            slowdowns = {r: max(1.0, scores.get(r, 1.0)) for r in range(plan.generation.world_size)}
            shares = rebalance_shares(slowdowns, 1000 * plan.generation.world_size)
            ordered = [shares[r] for r in range(plan.generation.world_size)]
            self._event("rebalance", f"rank {flag.rank} gets {shares[flag.rank] / 1000:.2f} of a normal batch share "
                                     f"(slowdown {flag.slowdown:.2f}); global batch unchanged",
                        rank=flag.rank, shares=ordered)
            self.membership.request_reconfigure(now, batch_shares=ordered)
            self._wake()
        elif action.kind == ResponsePolicy.EVICT:
            node_id = plan.generation.ranks[flag.rank].node_id
            self._event("evict", f"evicting node {node_id} (rank {flag.rank}, slowdown {flag.slowdown:.2f})",
                        rank=flag.rank, node=node_id)
            self.commands[node_id].append("evict")
            self._node_dead(now, node_id, "evicted as a straggler")

    def _ingest_held_shards(self, node_id: str, held: Any) -> None:
        """After a coordinator restart: rebuilds the snapshot catalog from what the agents hold."""
        for shard in held:
            info = pb.BlobInfo.FromString(shard.blob_info)
            record = BlobRecord(step=info.step, producer_rank=info.producer_rank,
                                producer_world_size=info.producer_world_size, producer_trainer=info.producer_trainer,
                                producer_node=info.producer_node, shard_nodes=tuple(x.node_id for x in info.shards),
                                info=info)
            self.held_shards[(info.blob_id, shard.index)] = record
        steps = self.catalog.rebuild([(record, index) for (_blob, index), record in self.held_shards.items()])
        if steps:
            self._metric("step", "set", steps[-1])
        found = self.durable_found
        if found is not None and self.durable is not None and self.durable.last_step < found.step <= max(steps or [-1]):
            # this coordinator took over a running job: its checkpoints so far count (due steps go on from them)
            self.durable = DurablePlanner(self.durable.settings, self.settings.job_id, self.started_at, found.step)
            self._metric("checkpoint_last_step", "set", found.step)
        self._event("catalog-rebuilt", f"node {node_id} reported {len(held)} shard(s); committed steps now {steps}")

    # -- the job's end ---------------------------------------------------------------------------
    def _check_finish(self, now: float) -> None:
        """Ends the job when every rank finished at one step; fails it when a rank left the loop
        while another went on (see ftrain.coordinator.finish)."""
        plan = self.plan
        if plan is None or self.job_state != "running" or not self.finished:
            return
        if self.settings.mode == "async":  # workers do different numbers of steps by design
            if len(self.finished) == plan.generation.world_size:
                self._complete(now, f"all {plan.generation.world_size} workers finished")
            return
        # a rank blocked in a collective of step S (a pulse saw it) or whose collective failed there is
        # in a step past one that a finished rank left at
        waiting = {r: step for r, (_, blocked, step) in self.pulses.items() if blocked}
        for rank, step in self.failed_at.items():
            waiting[rank] = max(step, waiting.get(rank, -1))
        verdict, message = finish_verdict(plan.generation.world_size, self.finished,
                                          {r: step for r, (step, _) in self.progress.items()}, waiting)
        if verdict == "complete":
            self._complete(now, message)
        elif verdict == "mismatch":
            self._fail(now, message)

    def _complete(self, now: float, message: str) -> None:
        if self.job_state == "running":
            self.job_state = "complete"
            self._event("job-complete", message)
            self._warn_unfired()
            self._final_checkpoint(now)
            self._wake()

    def _fail(self, now: float, message: str) -> None:
        if self.job_state == "running":
            self.job_state = "failed"
            self.message = message
            self._event("job-failed", message)
            self._warn_unfired()
            self._wake()

    def _warn_unfired(self) -> None:
        """The job ended: one `fault-not-fired` warning event per --inject spec that never fired
        (slow-rank is no event: it slows its rank from the start)."""
        for spec in unfired_faults([f.raw for f in self.settings.inject if f.kind != "slow-rank"], self.fired_faults):
            warning = unfired_warning(spec, self.catalog.newest_committed)
            self.unfired.append(warning)
            self._event("fault-not-fired", warning, warning=True, fault=spec)

    # -- the durable tier ------------------------------------------------------------------------
    def resume_from(self, now: float, checkpoint: durable_files.Checkpoint,
                    fallbacks: Sequence[durable_files.Checkpoint] = ()) -> Effects:
        """The job starts from a durable checkpoint: the first generation restores it (and so does
        any recovery until a newer step is committed in memory). `fallbacks`: older complete
        checkpoints, newest first, for when this one cannot be restored."""
        self.resume_fallbacks = sorted(fallbacks, key=lambda c: c.step, reverse=True)
        self._resume(now, checkpoint)
        self._event("resume", f"resuming from the checkpoint of step {checkpoint.step} in {checkpoint.path} "
                              f"(world size {checkpoint.world_size})", step=checkpoint.step, path=checkpoint.path)
        return self._take()

    def _resume(self, now: float, checkpoint: durable_files.Checkpoint) -> None:
        self.resume = checkpoint
        if self.durable is not None:  # due steps count from the resumed one
            self.durable = DurablePlanner(self.durable.settings, self.settings.job_id, now, checkpoint.step)
        self._metric("checkpoint_last_step", "set", checkpoint.step)

    def _resume_fallback(self, world_size: int) -> durable_files.Checkpoint | None:
        """The older checkpoint to resume from when the resumed one cannot be restored by a
        generation of `world_size` ranks: the newest that has a DCP copy or was written by that many
        ranks (per-rank FSDP2 state moves to another world size only through a DCP copy), else the
        newest. Taken off the list."""
        if not self.resume_fallbacks:
            return None
        fitting = [c for c in self.resume_fallbacks if c.dcp or c.world_size == world_size]
        chosen = (fitting or self.resume_fallbacks)[0]
        self.resume_fallbacks.remove(chosen)
        return chosen

    def _send_orders(self, orders: list[Write] | list[Finalize]) -> None:
        assert self.durable is not None
        for order in orders:
            if isinstance(order, Write):
                message = pb.CheckpointOrder(kind=pb.CHECKPOINT_KIND_WRITE, step=order.step, dir=self.durable.settings.dir,
                                             blob=order.blob)
            else:
                message = pb.CheckpointOrder(kind=pb.CHECKPOINT_KIND_FINALIZE, step=order.step, dir=self.durable.settings.dir,
                                             manifest_json=json.dumps(order.manifest), keep=self.durable.settings.keep,
                                             dcp=order.dcp)
            self.checkpoint_orders[order.node_id].append(message)

    def _final_checkpoint(self, now: float) -> None:
        """The job completed: its last committed step goes to disk too (once the one in flight ends)."""
        if self.durable is not None and self.job_state == "complete" and self.durable.in_flight is None:
            self._checkpoint_committed(now, self.catalog.newest_committed, final=True)

    def checkpoint_pending(self) -> bool:
        """A durable checkpoint is being written (or, the job complete, its last step still will be)."""
        d = self.durable
        if d is None:
            return False
        final_due = self.job_state == "complete" and self.catalog.newest_committed > d.last_step and \
            (d.last_outcome is None or d.last_outcome.step < self.catalog.newest_committed)
        return d.in_flight is not None or final_due

    def _checkpoint_outcome(self, now: float, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        if outcome.kind == "written":
            self._metric("checkpoint_duration", "observe", outcome.seconds)
            self._metric("checkpoint_bytes", "inc", outcome.bytes)
            self._metric("checkpoint_last_step", "set", outcome.step)
            self._event("checkpoint", outcome.detail, step=outcome.step, bytes=outcome.bytes,
                        seconds=round(outcome.seconds, 3))
        else:
            self._metric("checkpoint_failures", "inc", 1, reason=outcome.reason)
            self._event("checkpoint-" + outcome.kind, outcome.detail, warning=True, step=outcome.step,
                        reason=outcome.reason)
        self._final_checkpoint(now)
        self._wake()

    def _checkpoint_committed(self, now: float, step: int, final: bool = False) -> None:
        if self.durable is None or self.plan is None:
            return
        orders, outcome = self.durable.on_commit(step, self.plan.generation.number, self.plan.generation.world_size,
                                                 self.catalog.blobs(step), self._live_nodes(), now, final)
        self._send_orders(orders)
        self._checkpoint_outcome(now, outcome)

    def _checkpoint_results(self, now: float, node_id: str, results: Any) -> None:
        if self.durable is None:
            return
        for result in results:
            if not result.ok:
                self._checkpoint_outcome(now, self.durable.on_failed(node_id, result.step, result.rank,
                                                                     result.reason, result.detail))
            elif result.kind == pb.CHECKPOINT_KIND_WRITE:
                self._send_orders(self.durable.on_written(node_id, result.step, result.rank, result.file,
                                                          result.bytes, result.crc32, result.seconds))
            elif result.kind == pb.CHECKPOINT_KIND_FINALIZE:
                self._checkpoint_outcome(now, self.durable.on_finalized(node_id, result.step, now))

    def min_retained_step(self) -> int:
        """Agents may drop shards of older steps (the catalog's oldest kept step), except the
        pinned ones."""
        return self.catalog.min_retained_step()

    def pinned_steps(self) -> list[int]:
        """Steps older than min_retained_step whose shards agents keep: the one a durable
        checkpoint is being written from. Only that step: the steps between it and the catalog's
        are dropped as usual (keeping them all made each agent hold every snapshot taken while a
        checkpoint was written, 24 steps and 6 GiB at 400 MiB, until the machine ran out of memory)."""
        flight = self.durable.in_flight if self.durable is not None else None
        oldest = self.catalog.min_retained_step()
        return [flight.step] if flight is not None and oldest >= 0 and flight.step < oldest else []

    def durable_status(self) -> dict[str, Any] | None:
        planner = self.durable
        if planner is None and self.resume is None:
            return None
        status: dict[str, Any] = {"dir": "", "every_steps": 0, "every_s": 0.0, "last_step": -1,
                                  "in_flight_step": None, "last_problem": ""}
        if planner is not None:
            last = planner.last_outcome
            status.update(dir=planner.settings.dir, every_steps=planner.settings.every_steps,
                          every_s=planner.settings.every_s, last_step=planner.last_step,
                          in_flight_step=planner.in_flight.step if planner.in_flight else None,
                          last_problem=last.detail if last is not None and last.kind != "written" else "")
        status["resumed_from"] = self.resume.step if self.resume is not None else None
        return status

    # -- what the job looks like -----------------------------------------------------------------
    def config_message(self) -> pb.JobConfig:
        s = self.settings
        return pb.JobConfig(
            job_id=s.job_id, target_nodes=s.target_nodes, min_nodes=s.min_nodes, snapshot_every=s.snapshot_every,
            ec_k=s.ec.k, ec_m=s.ec.m, mode=s.mode, strategy=s.strategy, inject=[f.raw for f in s.inject],
            collective_timeout_s=s.effective_collective_timeout_s(self.hang.timeout_s()), compress=s.compress,
            recovery=s.recovery, snapshot_memory=s.snapshot_memory, standby_trainers=s.standby_trainers,
        )

    def effective_ec(self, aggregator_snapshots: dict[str, Any] | None = None) -> dict[str, Any]:
        """The erasure code in use: k+m as the current generation's snapshots are coded (from its
        committed blobs, else what ftrain.snapshot.placement gives for its nodes), the node count
        it is spread over and how many simultaneous node losses it survives. In async mode
        (`aggregator_snapshots`: the aggregator's snapshot summary): the aggregator's snapshots,
        spread over the agents only."""
        s = self.settings
        if s.mode == "async" and aggregator_snapshots is not None:
            snap = aggregator_snapshots
            nodes = len(snap.get("nodes") or [])
            k, m = (int(x) for x in str(snap.get("ec", "0+0")).split("+"))
            if k == 0:  # nothing stored yet: what the next snapshot will use
                nodes = len(self._live_nodes())
                k, m = effective_code(s.ec.k, s.ec.m, nodes + 1)
            return {"k": k, "m": m, "nodes": nodes, "survives_node_losses": m if nodes else 0,
                    "of": "aggregator state", "source": "stored" if snap.get("stored") else "planned"}
        plan = self.plan
        nodes = len(plan.generation.node_ids()) if plan else s.target_nodes
        k, m = effective_code(s.ec.k, s.ec.m, nodes)
        source = "planned"
        if plan is not None:
            blobs = self.catalog.blobs(self.catalog.newest_committed)
            if blobs and blobs[0].info.generation == plan.generation.number:
                k, m, source = int(blobs[0].info.k), int(blobs[0].info.m), "committed"
        return {"k": k, "m": m, "nodes": nodes, "survives_node_losses": survives(k, m, nodes),
                "of": "snapshots", "source": source}

    def _node_step(self, node_id: str, reported: int | None) -> int | None:
        """A node's step, consistent with the committed step: for a node holding ranks of the
        current generation, the newest step its ranks reported (pulses and snapshot reports),
        never below the step they restored or the last committed one; for other nodes the step
        their agent last reported."""
        plan = self.plan
        ranks = [a.rank for a in plan.generation.ranks if a.node_id == node_id] if plan else []
        if not ranks:
            return reported
        steps = [self.progress[r][0] for r in ranks if r in self.progress]
        floor = max(plan.restore_step, self.catalog.newest_committed) if plan else -1
        return max(steps + [floor]) if steps or floor >= 0 else reported

    def status(self, now: float, aggregator: dict[str, Any] | None = None,
               aggregator_snapshots: dict[str, Any] | None = None) -> dict[str, Any]:
        """The job's status (what `ftrain status` prints), less its events."""
        m = self.membership
        plan = self.plan
        members = []
        known = set(self.liveness.nodes())
        for node in m.nodes.values():
            reported = max((t.last_step for t in self.trainers.get(node.node_id, [])), default=None)
            members.append({
                "node": node.node_id, "address": node.address, "nproc": node.nproc, "alive": node.alive,
                "slot": node.slot, "heartbeat_age_s": round(self.liveness.heartbeat_age(node.node_id, now), 2)
                if node.node_id in known else None,
                "ranks": [a.rank for a in plan.generation.ranks if a.node_id == node.node_id] if plan else [],
                "step": self._node_step(node.node_id, reported) if node.alive else reported,
                "metrics": self.metrics_endpoints.get(node.node_id, ""),
                "codec": self.codec_backends.get(node.node_id, ""),
                "shard_bytes": self.shard_bytes.get(node.node_id, 0),
                "shard_limit_bytes": self.shard_limit.get(node.node_id, 0),
            })
        return {
            "job_id": self.settings.job_id,
            "state": self.job_state,
            "message": self.message,
            "unfired_faults": list(self.unfired),
            "generation": plan.generation.number if plan else -1,
            "pending_generation": m.pending,
            "world_size": plan.generation.world_size if plan else 0,
            "last_committed_step": self.catalog.newest_committed,
            "committed_steps": self.catalog.committed_steps,
            "mode": self.settings.mode,
            "recovery": self.settings.recovery,
            "ec": str(self.settings.ec),  # requested; ec_effective is what runs
            "ec_effective": self.effective_ec(aggregator_snapshots),
            "codec_backends": dict(sorted(collections.Counter(
                self.codec_backends.get(n.node_id, "unknown") for n in m.nodes.values() if n.alive).items())),
            "snapshot_every": self.settings.snapshot_every,
            "snapshot_stall_s": round(self.stall_s, 6),
            "snapshot_interval_s": round(self.snapshot_interval_s, 4),
            "failures": self.failures,
            "recoveries": self.recoveries,
            "lost_steps": self.lost_steps.total,
            "stragglers": [{"rank": r, "slowdown": round(self.straggler.scores().get(r, 0.0), 3)}
                           for r in sorted(self.straggler.flagged())],
            "members": members,
            "uptime_s": round(now - self.started_at, 1),
            "aggregator": aggregator,
            "checkpoint": self.durable_status(),
        }
