"""The coordinator process: a thin gRPC shell around membership, catalog and detection.

It also hosts the torch.distributed TCPStore every generation rendezvouses on (with a
generation-specific key prefix, so a stale rank can never join a newer group), pings agents
when a trainer reports a failed collective (a killed node is found in milliseconds, not after
the heartbeat timeout), and serves Prometheus metrics.
"""
from __future__ import annotations

import collections
import datetime
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable

import grpc

from ftrain import metrics as metrics_mod
from ftrain.config import PROTOCOL_VERSION, ConfigError, JobSettings
from ftrain.coordinator.bugs import BugDetector, UserError, startup_failure, unfired_faults, unfired_warning
from ftrain.coordinator.catalog import BlobRecord, Catalog
from ftrain.coordinator.durable import DurablePlanner, DurableSettings, Finalize, Outcome, Write
from ftrain.coordinator.detector import (DetectionConfig, HangDetector, ResponsePolicy, StragglerDetector, StragglerFlag,
                                         decide_response, frozen_ranks, rebalance_shares)
from ftrain.coordinator.finish import finish_verdict
from ftrain.coordinator.membership import Generation, Membership
from ftrain.proto.ftrain.v1 import agent_pb2, agent_pb2_grpc, coordinator_pb2 as pb, coordinator_pb2_grpc
from ftrain.rpc import add_health_and_reflection, bind, make_server, open_channel, token_metadata
from ftrain.snapshot import durable as durable_files
from ftrain.snapshot.placement import effective_code
from ftrain.textfmt import restore_phrase, short_reason, survives

log = logging.getLogger("ftrain.coordinator")


@dataclass
class GenerationPlan:
    generation: Generation
    restore_step: int
    blobs: list[pb.BlobInfo] = field(default_factory=list)
    store_address: str = ""  # restart mode: the generation's own rendezvous store (torchrun's MASTER_ADDR:PORT)


class JobFailed(Exception):
    pass


class CoordinatorState:
    """All mutable coordinator state, guarded by one condition variable."""

    def __init__(self, settings: JobSettings, store_address: str, metrics: metrics_mod.Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.store_address = store_address
        self.metrics = metrics
        self.clock = clock
        self.cond = threading.Condition()
        self.membership = Membership(settings.target_nodes, settings.min_nodes, settings.replace_timeout_s)
        self.catalog = Catalog(keep=2)
        self.plan: GenerationPlan | None = None
        self.last_seen: dict[str, float] = {}
        self.trainers: dict[str, list[pb.TrainerInfo]] = {}
        self.commands: dict[str, list[str]] = collections.defaultdict(list)
        self.fired_faults: set[str] = set()
        self.bugs = BugDetector()  # the user's own exceptions: the same one after a restart fails the job
        self.unfired: list[str] = []  # warnings for --inject specs that never fired (set when the job ends)
        self.finished: dict[int, int] = {}  # rank -> the step it left session.steps() at
        self.failed_at: dict[int, int] = {}  # rank -> steps it had done when a collective of its failed (this generation)
        self.formed_at = clock()  # when the current generation formed (first-pulse grace)
        self.pulse_seen: dict[str, float] = {}  # trainer uid -> its newest pulse, in any generation (liveness)
        self.job_state = "running"
        self.message = ""
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.failure_since: float | None = None
        self.started_at = clock()
        self.progress: dict[int, tuple[int, float]] = {}
        self.compute_times: dict[int, float] = {}
        self.stall_s: float = 0.0
        self.snapshot_interval_s: float = 0.0
        self._last_commit_time: float | None = None
        self.recoveries = 0
        self.failures = 0
        self.lost_steps = metrics_mod.LostSteps()  # metrics: steps redone after a generation change
        self.lost_trainers: set[tuple[str, int]] = set()  # of the current generation (live world size)
        self.straggler = StragglerDetector()
        self.hang = HangDetector(DetectionConfig(hang_timeout_min_s=settings.hang_timeout_s,
                                                 dead_after_s=settings.heartbeat_dead_after_s,
                                                 suspect_after_s=min(3.0, max(1.5, settings.heartbeat_dead_after_s / 2))))
        self.times_flagged: collections.Counter[int] = collections.Counter()
        self.pulses: dict[int, tuple[float, bool, int]] = {}  # rank -> (last pulse, in a collective, at step)
        self.held_shards: dict[tuple[str, int], BlobRecord] = {}  # reported by re-registering agents
        self.metrics_endpoints: dict[str, str] = {}  # node -> its agent's /metrics host:port
        self.codec_backends: dict[str, str] = {}  # node -> the erasure codec backend its agent reported
        self.shard_bytes: dict[str, int] = {}  # node -> bytes of snapshot shards its agent holds (heartbeats)
        self.events_sink: IO[str] | None = None  # --events-file: one flushed JSON line per event
        self.aggregator: Any = None  # async mode: ftrain.aggregate.server.AggregatorService on this server
        self._last_commit: tuple[int, int, float] | None = None  # (generation, step, time): step duration
        self.resume: durable_files.Checkpoint | None = None  # the durable checkpoint this job started from
        self.durable: DurablePlanner | None = None  # the durable tier (--checkpoint-dir)
        if settings.checkpoint_dir:
            self.durable = DurablePlanner(DurableSettings(settings.checkpoint_dir, settings.checkpoint_every,
                                                          settings.checkpoint_every_s, settings.checkpoint_keep),
                                          settings.job_id, clock())
        self.checkpoint_orders: dict[str, list[pb.CheckpointOrder]] = collections.defaultdict(list)
        self.new_store: Callable[[], str] | None = None  # restart mode: a fresh rendezvous store per generation
        self.killed_forming: set[str] = set()  # trainer uids killed for not joining a forming generation
        self.restart_ordered = -1  # restart mode: the pending generation every trainer was ordered to restart into

    # -- the durable tier (call with the lock held) ----------------------------------------------
    def resume_from(self, checkpoint: durable_files.Checkpoint) -> None:
        """The job starts from a durable checkpoint: the first generation restores it (and so does
        any recovery until a newer step is committed in memory)."""
        self.resume = checkpoint
        if self.durable is not None:  # due steps count from the resumed one
            self.durable = DurablePlanner(self.durable.settings, self.settings.job_id, self.clock(), checkpoint.step)
        self.metrics.checkpoint_last_step.set(checkpoint.step)
        self.event("resume", f"resuming from the checkpoint of step {checkpoint.step} in {checkpoint.path} "
                             f"(world size {checkpoint.world_size})", step=checkpoint.step, path=checkpoint.path)

    def _live_nodes(self) -> set[str]:
        return {n.node_id for n in self.membership.nodes.values() if n.alive}

    def _send_orders(self, orders: list[Write] | list[Finalize]) -> None:
        assert self.durable is not None
        for order in orders:
            if isinstance(order, Write):
                message = pb.CheckpointOrder(kind="write", step=order.step, dir=self.durable.settings.dir,
                                             blob=order.blob)
            else:
                message = pb.CheckpointOrder(kind="finalize", step=order.step, dir=self.durable.settings.dir,
                                             manifest_json=json.dumps(order.manifest), keep=self.durable.settings.keep)
            self.checkpoint_orders[order.node_id].append(message)

    def final_checkpoint(self) -> None:
        """The job completed: its last committed step goes to disk too (once the one in flight ends)."""
        if self.durable is not None and self.job_state == "complete" and self.durable.in_flight is None:
            self.checkpoint_committed(self.catalog.newest_committed, final=True)

    def checkpoint_pending(self) -> bool:
        """A durable checkpoint is being written (or, the job complete, its last step still will be)."""
        d = self.durable
        if d is None:
            return False
        final_due = self.job_state == "complete" and self.catalog.newest_committed > d.last_step and \
            (d.last_outcome is None or d.last_outcome.step < self.catalog.newest_committed)
        return d.in_flight is not None or final_due

    def _checkpoint_outcome(self, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        if outcome.kind == "written":
            self.metrics.checkpoint_duration.observe(outcome.seconds)
            self.metrics.checkpoint_bytes.inc(outcome.bytes)
            self.metrics.checkpoint_last_step.set(outcome.step)
            self.event("checkpoint", outcome.detail, step=outcome.step, bytes=outcome.bytes,
                       seconds=round(outcome.seconds, 3))
        else:
            self.metrics.checkpoint_failures.labels(reason=outcome.reason).inc()
            self.event("checkpoint-" + outcome.kind, outcome.detail, step=outcome.step, reason=outcome.reason)
            log.warning("%s", outcome.detail)
        self.final_checkpoint()
        self.cond.notify_all()

    def checkpoint_committed(self, step: int, final: bool = False) -> None:
        if self.durable is None or self.plan is None:
            return
        orders, outcome = self.durable.on_commit(step, self.plan.generation.number, self.plan.generation.world_size,
                                                 self.catalog.blobs(step), self._live_nodes(), self.clock(), final)
        self._send_orders(orders)
        self._checkpoint_outcome(outcome)

    def checkpoint_results(self, node_id: str, results: Any) -> None:
        if self.durable is None:
            return
        for result in results:
            if not result.ok:
                self._checkpoint_outcome(self.durable.on_failed(node_id, result.step, result.rank, result.reason,
                                                                result.detail))
            elif result.kind == "write":
                self._send_orders(self.durable.on_written(node_id, result.step, result.rank, result.file,
                                                          result.bytes, result.crc32, result.seconds))
            elif result.kind == "finalize":
                self._checkpoint_outcome(self.durable.on_finalized(node_id, result.step, self.clock()))

    def min_retained_step(self) -> int:
        """Agents may drop shards of older steps: the catalog's oldest kept step, or the step a
        durable checkpoint is being written from."""
        oldest = self.catalog.min_retained_step()
        flight = self.durable.in_flight if self.durable is not None else None
        return min(oldest, flight.step) if flight is not None and oldest >= 0 else oldest

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

    # -- events ----------------------------------------------------------------------------
    def event(self, kind: str, message: str, **extra: Any) -> None:
        record = {"time": round(time.time(), 3), "kind": kind, "message": message, **extra}
        self.events.append(record)
        log.info("%s: %s", kind, message)
        if self.events_sink is not None:
            self._write_event(record)

    def _write_event(self, record: dict[str, Any]) -> None:
        assert self.events_sink is not None
        try:
            self.events_sink.write(json.dumps(record) + "\n")
            self.events_sink.flush()  # a launcher killed right after still leaves this line
        except (OSError, ValueError) as error:  # a full disk must not stop the job
            log.warning("cannot write the events file: %s", error)
            self.events_sink = None

    def open_events_file(self, path: str) -> None:
        """Writes the events so far, then every new one as it happens, to `path` (JSON lines)."""
        with self.cond:
            self.events_sink = open(path, "w", encoding="utf-8")
            for record in list(self.events):
                self._write_event(record)

    def close_events_file(self) -> None:
        with self.cond:
            if self.events_sink is not None:
                self.events_sink.close()
                self.events_sink = None

    def config_message(self) -> pb.JobConfig:
        s = self.settings
        return pb.JobConfig(
            job_id=s.job_id, target_nodes=s.target_nodes, min_nodes=s.min_nodes, snapshot_every=s.snapshot_every,
            ec_k=s.ec.k, ec_m=s.ec.m, mode=s.mode, strategy=s.strategy, inject=[f.raw for f in s.inject],
            collective_timeout_s=s.effective_collective_timeout_s(self.hang.timeout_s()), compress=s.compress,
            recovery=s.recovery,
        )

    # -- failure handling (call with the lock held) ----------------------------------------
    def _record_failure(self, kind: str, message: str) -> None:
        self.failures += 1
        self.metrics.failures.labels(kind=kind).inc()
        if self.failure_since is None:
            self.failure_since = self.clock()
        self.event("failure", message, failure_kind=kind)

    def update_live_world(self, lost_trainer: tuple[str, int] | None = None) -> None:
        """ftrain_world_size: ranks of the current generation still alive (drops at a failure)."""
        if lost_trainer is not None:
            self.lost_trainers.add(lost_trainer)
        if self.plan is not None:
            nodes = self.membership.nodes
            self.metrics.world_size.set(sum(
                1 for a in self.plan.generation.ranks if a.node_id in nodes and nodes[a.node_id].alive
                and (a.node_id, a.local_rank) not in self.lost_trainers))

    def record_compute(self, rank: int, step: int, mean_s: float, steps: int) -> None:
        """Feeds the straggler detector the mean compute time of the `steps` steps before `step`."""
        try:
            for covered in range(max(0, step - min(steps, 1000)), step):
                self.straggler.record(rank, covered, mean_s)
        except ValueError:
            return
        for flag in self.straggler.new_flags():
            self.metrics.stragglers.inc()
            self.event("straggler", f"rank {flag.rank} is a straggler: {flag.slowdown:.2f} x the median compute "
                                    f"time (window {flag.window})", rank=flag.rank, slowdown=round(flag.slowdown, 3))
            self.respond_to_straggler(flag)
        for r, score in self.straggler.scores().items():
            self.metrics.straggler_score.labels(rank=str(r)).set(score)

    def ingest_held_shards(self, node_id: str, held: Any) -> None:
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
            self.metrics.step.set(steps[-1])
        self.event("catalog-rebuilt", f"node {node_id} reported {len(held)} shard(s); committed steps now {steps}")

    def respond_to_straggler(self, flag: StragglerFlag) -> None:
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
            self.event("rebalance", f"rank {flag.rank} gets {shares[flag.rank] / 1000:.2f} of a normal batch share "
                                    f"(slowdown {flag.slowdown:.2f}); global batch unchanged",
                       rank=flag.rank, shares=ordered)
            self.membership.request_reconfigure(self.clock(), batch_shares=ordered)
            self.cond.notify_all()
        elif action.kind == ResponsePolicy.EVICT:
            node_id = plan.generation.ranks[flag.rank].node_id
            self.event("evict", f"evicting node {node_id} (rank {flag.rank}, slowdown {flag.slowdown:.2f})",
                       rank=flag.rank, node=node_id)
            self.commands[node_id].append("evict")
            self.node_dead(node_id, "evicted as a straggler")

    def check_finish(self) -> None:
        """Ends the job when every rank finished at one step; fails it when a rank left the loop
        while another went on (see ftrain.coordinator.finish)."""
        plan = self.plan
        if plan is None or self.job_state != "running" or not self.finished:
            return
        if self.settings.mode == "async":  # workers do different numbers of steps by design
            if len(self.finished) == plan.generation.world_size:
                self.complete(f"all {plan.generation.world_size} workers finished")
            return
        # a rank blocked in a collective of step S (a pulse saw it) or whose collective failed there is
        # in a step past one that a finished rank left at
        waiting = {r: step for r, (_, blocked, step) in self.pulses.items() if blocked}
        for rank, step in self.failed_at.items():
            waiting[rank] = max(step, waiting.get(rank, -1))
        verdict, message = finish_verdict(plan.generation.world_size, self.finished,
                                          {r: step for r, (step, _) in self.progress.items()}, waiting)
        if verdict == "complete":
            self.complete(message)
        elif verdict == "mismatch":
            self.fail(message)

    def check_hangs(self) -> None:
        """Ranks without step progress for the hang timeout, and ranks whose process stopped
        pulsing (frozen), are killed and treated as failed."""
        plan = self.plan
        if plan is None or self.job_state != "running":
            return
        if self.membership.pending:
            if self.settings.recovery == "inprocess":  # restart mode: every agent kills its trainers anyway
                self.check_forming(plan)
            return
        now = self.clock()
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
            self.event("hang-peers", f"ranks {waiting} are waiting in a collective on ranks {culprits or hung}")
        for rank in culprits or hung:
            assignment = plan.generation.ranks[rank]
            self.failures += 1
            self.metrics.failures.labels(kind="hang").inc()
            why = (f"frozen: no pulse from its process for {self.settings.pulse_silent_after_s:.0f} s" if rank in frozen
                   else f"hung: no step progress for {self.hang.timeout_s():.1f} s")
            self.event("failure", f"rank {rank} ({assignment.node_id}/{assignment.local_rank}) {why}; killing it",
                       failure_kind="hang", rank=rank)
            self.commands[assignment.node_id].append(f"kill-trainer:{assignment.local_rank}")
            self.hang.remove_rank(rank)
        if self.failure_since is None:
            self.failure_since = self.clock()
        self.membership.collective_failed(plan.generation.number, self.clock())
        self.cond.notify_all()

    def check_forming(self, plan: GenerationPlan) -> None:
        """While a generation forms: a member of the previous one that has not joined it and whose
        process is frozen (no pulse for the pulse timeout), or that has not joined within
        max(30 s, the hang timeout), is killed; its agent restarts it and the new process joins.
        The forming generation never waits for it forever."""
        m = self.membership
        now = self.clock()
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
            self.metrics.failures.labels(kind="hang").inc()
            self.event("failure", f"rank {a.rank} ({a.node_id}/{a.local_rank}) {why} while generation {m.number} "
                                  f"forms; killing it", failure_kind="hang", rank=a.rank)
            self.commands[a.node_id].append(f"kill-trainer:{a.local_rank}")

    def node_dead(self, node_id: str, reason: str) -> None:
        if self.membership.node_dead(node_id, self.clock()):
            self._record_failure("node", f"node {node_id} lost ({reason})")
            self.checkpoint_orders.pop(node_id, None)
            if self.durable is not None:
                orders, outcome = self.durable.on_node_lost(node_id, self._live_nodes())
                self._send_orders(orders)
                self._checkpoint_outcome(outcome)
            self.update_live_world()
            self.metrics.heartbeat_age.remove(node_id) if node_id in self.last_seen else None
            self.last_seen.pop(node_id, None)
            self.try_form()
            self.cond.notify_all()

    def order_restart(self) -> None:
        """Restart mode: once a new generation is pending after a formed one (any failure, a node
        that joins), every live agent restarts all its trainers from the top of the script."""
        m = self.membership
        if (self.settings.recovery != "restart" or self.plan is None or not m.pending or self.job_state != "running"
                or self.restart_ordered >= m.number):
            return
        self.restart_ordered = m.number
        nodes = sorted(self._live_nodes())
        for node_id in nodes:
            self.commands[node_id].append(f"restart-trainers:{m.number}")
        self.event("restart", f"restarting every trainer ({', '.join(nodes)}) into generation {m.number}",
                   generation=m.number)

    def try_form(self) -> None:
        if self.job_state != "running":
            return
        generation = self.membership.try_form(self.clock())
        if generation is None:
            return
        self.catalog_check_and_plan(generation)

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

    def catalog_check_and_plan(self, generation: Generation) -> None:
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
            self.fail(
                f"unrecoverable: more simultaneous losses than the erasure code tolerates. Last committed step "
                f"{restore_step}. " + "; ".join(lost)
            )
            return
        lost_count = self.lost_steps.generation_formed(self.plan.generation.number if self.plan else None,
                                                       generation.number, restore_step)
        self.metrics.lost_steps.inc(lost_count)
        self.lost_trainers.clear()
        self.straggler.reset(range(generation.world_size))
        self.hang.reset(range(generation.world_size), now=self.clock())
        self.pulses = {}
        self.formed_at = self.clock()
        self.metrics.straggler_score.clear()
        store = self.new_store() if self.settings.recovery == "restart" and self.new_store is not None else ""
        self.plan = GenerationPlan(generation, restore_step, blobs, store)
        self.catalog.open_generation(generation.number, generation.world_size)
        self.finished.clear()
        self.failed_at.clear()
        self.progress.clear()
        self.metrics.generation.set(generation.number)
        self.metrics.world_size.set(generation.world_size)
        if self.failure_since is not None:
            self.recoveries += 1
            self.metrics.recoveries.inc()
        self.event(
            "generation",
            f"generation {generation.number} formed: world size {generation.world_size} on "
            f"{', '.join(generation.node_ids())}; {restore_phrase(restore_step, any(b.path for b in blobs))}",
            generation=generation.number, world_size=generation.world_size, restore_step=restore_step,
        )
        self.cond.notify_all()

    def complete(self, message: str) -> None:
        if self.job_state == "running":
            self.job_state = "complete"
            self.event("job-complete", message)
            self._warn_unfired()
            self.final_checkpoint()
            self.cond.notify_all()

    def fail(self, message: str) -> None:
        if self.job_state == "running":
            self.job_state = "failed"
            self.message = message
            self.event("job-failed", message)
            self._warn_unfired()
            self.cond.notify_all()

    def _warn_unfired(self) -> None:
        """The job ended: one `fault-not-fired` warning event per --inject spec that never fired."""
        for spec in unfired_faults([f.raw for f in self.settings.inject], self.fired_faults):
            warning = unfired_warning(spec, self.catalog.newest_committed)
            self.unfired.append(warning)
            self.event("fault-not-fired", warning, fault=spec)
            log.warning("%s", warning)

    def user_error(self, error: UserError) -> tuple[bool, str]:
        """An exception escaped the user's script (lock held): (print its traceback, job-failed message)."""
        decision = self.bugs.report(error)
        if self.job_state != "running":
            return False, self.message
        self.event("user-error", f"rank {error.rank} raised {error.describe()} at step {error.step} "
                                 f"(generation {error.generation})", rank=error.rank, step=error.step,
                   error_type=error.error_type)
        if decision.fail_message:
            self.fail(decision.fail_message)
        return decision.print_traceback, decision.fail_message

    # -- periodic checks -------------------------------------------------------------------
    def tick(self) -> list[str]:
        """Heartbeat-based detection and shrink timeouts. Returns nodes to probe (none here)."""
        now = self.clock()
        with self.cond:
            for node_id, seen in list(self.last_seen.items()):
                age = now - seen
                self.metrics.heartbeat_age.labels(node=node_id).set(age)
                if age >= self.settings.heartbeat_dead_after_s:
                    self.node_dead(node_id, f"no heartbeat for {age:.1f} s")
            self.check_hangs()
            self.check_finish()
            self.order_restart()
            self.try_form()
            self.tick_durable()
        return []

    def tick_durable(self) -> None:
        if self.durable is not None:
            self._checkpoint_outcome(self.durable.tick(self.clock()))

    def effective_ec(self) -> dict[str, Any]:
        """The erasure code in use (call with the lock held): k+m as the current generation's
        snapshots are coded (from its committed blobs, else what ftrain.snapshot.placement gives
        for its nodes), the node count it is spread over and how many simultaneous node losses it
        survives. In async mode: the aggregator's snapshots (spread over the agents only)."""
        s = self.settings
        if s.mode == "async" and self.aggregator is not None:
            snap = self.aggregator.protector.summary()
            nodes = len(snap.get("nodes") or [])
            k, m = (int(x) for x in str(snap.get("ec", "0+0")).split("+"))
            if k == 0:  # nothing stored yet: what the next snapshot will use
                nodes = sum(1 for n in self.membership.nodes.values() if n.alive)
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
        """A node's step, consistent with the committed step (call with the lock held): for a node
        holding ranks of the current generation, the newest step its ranks reported (pulses and
        snapshot reports), never below the step they restored or the last committed one; for
        other nodes the step their agent last reported."""
        plan = self.plan
        ranks = [a.rank for a in plan.generation.ranks if a.node_id == node_id] if plan else []
        if not ranks:
            return reported
        steps = [self.progress[r][0] for r in ranks if r in self.progress]
        floor = max(plan.restore_step, self.catalog.newest_committed) if plan else -1
        return max(steps + [floor]) if steps or floor >= 0 else reported

    def status(self) -> dict[str, Any]:
        with self.cond:
            m = self.membership
            plan = self.plan
            members = []
            for node in m.nodes.values():
                reported = max((t.last_step for t in self.trainers.get(node.node_id, [])), default=None)
                members.append({
                    "node": node.node_id, "address": node.address, "nproc": node.nproc, "alive": node.alive,
                    "slot": node.slot, "heartbeat_age_s": round(self.clock() - self.last_seen[node.node_id], 2)
                    if node.node_id in self.last_seen else None,
                    "ranks": [a.rank for a in plan.generation.ranks if a.node_id == node.node_id] if plan else [],
                    "step": self._node_step(node.node_id, reported) if node.alive else reported,
                    "metrics": self.metrics_endpoints.get(node.node_id, ""),
                    "codec": self.codec_backends.get(node.node_id, ""),
                    "shard_bytes": self.shard_bytes.get(node.node_id, 0),
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
                "ec_effective": self.effective_ec(),
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
                "events": list(self.events)[-20:],
                "uptime_s": round(self.clock() - self.started_at, 1),
                "aggregator": self.aggregator.summary() if self.aggregator is not None else None,
                "checkpoint": self.durable_status(),
            }


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """gRPC methods; each one takes the lock, updates the pure state, and notifies waiters."""

    def __init__(self, state: CoordinatorState, token: str) -> None:
        self.s = state
        self.token = token
        self._probing = threading.Lock()

    # agents ----------------------------------------------------------------------------------
    def RegisterAgent(self, request: pb.RegisterAgentRequest, context: grpc.ServicerContext) -> pb.RegisterAgentResponse:
        s = self.s
        if request.protocol_version and request.protocol_version != PROTOCOL_VERSION:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"agent speaks protocol {request.protocol_version}, coordinator {PROTOCOL_VERSION}: "
                          "run the same ftrain version everywhere")
        if request.job_id and request.job_id != s.settings.job_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"agent belongs to job {request.job_id!r}, this coordinator runs {s.settings.job_id!r}")
        if request.nproc < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "nproc must be >= 1")
        with s.cond:
            node_id = s.membership.register_node(request.node_id, request.address, request.nproc, s.clock(),
                                                 slot=request.slot if request.held or request.generation >= 0 else -1)
            s.last_seen[node_id] = s.clock()
            s.metrics_endpoints[node_id] = request.metrics_address
            s.codec_backends[node_id] = request.ec_backend or "unknown"
            if request.generation >= 0:
                s.membership.observe_generation(request.generation)
            if request.held and s.plan is None:
                s.ingest_held_shards(node_id, request.held)
            s.event("node-joined", f"node {node_id} ({request.hostname or request.address}) registered with "
                                   f"{request.nproc} trainer(s)", node=node_id)
            s.try_form()
            s.cond.notify_all()
        return pb.RegisterAgentResponse(node_id=node_id, config=s.config_message())

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatResponse:
        s = self.s
        with s.cond:
            node = s.membership.nodes.get(request.node_id)
            if node is not None and not node.alive and "evict" in s.commands.get(request.node_id, []):
                s.commands.pop(request.node_id)
                return pb.HeartbeatResponse(job_state=s.job_state, known=True, commands=["evict"])
            if node is None or not node.alive:
                return pb.HeartbeatResponse(job_state=s.job_state, known=False, message="unknown node: re-register")
            s.last_seen[request.node_id] = s.clock()
            s.trainers[request.node_id] = list(request.trainers)
            s.shard_bytes[request.node_id] = request.shard_bytes
            s.checkpoint_results(request.node_id, request.checkpoint_results)
            commands = s.commands.pop(request.node_id, [])
            orders = s.checkpoint_orders.pop(request.node_id, [])
            return pb.HeartbeatResponse(job_state=s.job_state, min_retained_step=s.min_retained_step(),
                                        commands=commands, message=s.message, known=True,
                                        slot=-1 if node.slot is None else node.slot,
                                        generation=s.plan.generation.number if s.plan else -1,
                                        checkpoint_orders=orders, checkpoint_pending=s.checkpoint_pending())

    def ReportTrainerExit(self, request: pb.TrainerExit, context: grpc.ServicerContext) -> pb.Ack:
        s = self.s
        with s.cond:
            if s.job_state != "running":  # ok=False: the job failed, the agent restarts nothing
                return pb.Ack(ok=s.job_state != "failed", message=s.message)
            # did this trainer process reach ftrain.init (its pulse starts there)? By node/local rank and
            # time, not pid: the agent's child may be a wrapper (a shell) around the Python process
            now, prefix = s.clock(), f"{request.node_id}/{request.local_rank}/"
            reached = any(uid.startswith(prefix) and seen >= now - request.uptime_s - 1.0
                          for uid, seen in s.pulse_seen.items())
            started_after = request.uptime_s > 0 and now - s.started_at > request.uptime_s
            startup = startup_failure(request.node_id, request.local_rank, request.exit_code, reached, started_after)
            if startup:
                s.fail(startup)
                return pb.Ack(ok=False, message=startup)
            if request.exit_code == 0:  # a trainer that finished (or a spare that left): nothing failed
                return pb.Ack(ok=True)
            how = f"signal {-request.exit_code}" if request.exit_code < 0 else f"exit code {request.exit_code}"
            if s.membership.trainer_failed(request.node_id, request.local_rank, s.clock()) or s.membership.pending:
                s._record_failure("rank", f"trainer {request.node_id}/{request.local_rank} (pid {request.pid}) died: {how}")
                s.update_live_world((request.node_id, request.local_rank))
            if not request.will_restart:
                s.fail(f"trainer {request.node_id}/{request.local_rank} keeps failing ({how}); its agent gave up")
            s.try_form()
            s.cond.notify_all()
        return pb.Ack(ok=True)

    # trainers --------------------------------------------------------------------------------
    def JoinGeneration(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.GenerationAssignment:
        s = self.s
        deadline = time.monotonic() + min(max(request.wait_s, 0.1), 60.0)
        with s.cond:
            s.membership.observe_generation(request.known_generation)
            plan = s.plan
            if (s.settings.recovery == "restart" and plan is not None and not s.membership.pending
                    and plan.generation.number > request.known_generation
                    and plan.generation.rank_of(request.trainer_uid) is not None and s.job_state == "running"):
                # restart mode: the process its agent joined for takes its rank; it must not count as
                # waiting for the next generation (that one is made of the restarted processes)
                return self._assignment(plan, plan.generation.rank_of(request.trainer_uid))  # type: ignore[arg-type]
            s.membership.trainer_waiting(request.trainer_uid, request.node_id, request.local_rank)
            s.try_form()
            while True:
                if s.job_state != "running":
                    return pb.GenerationAssignment(status=s.job_state, message=s.message)
                plan = s.plan
                if plan is not None and plan.generation.number > request.known_generation and not s.membership.pending:
                    rank = plan.generation.rank_of(request.trainer_uid)
                    if rank is not None:
                        return self._assignment(plan, rank)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not context.is_active():
                    return pb.GenerationAssignment(status="wait")
                s.cond.wait(min(remaining, 0.5))
                if s.membership.pending and request.trainer_uid not in s.membership.waiting.values():
                    s.membership.trainer_waiting(request.trainer_uid, request.node_id, request.local_rank)
                s.try_form()

    def _assignment(self, plan: GenerationPlan, rank: int) -> pb.GenerationAssignment:
        s = self.s
        members = []
        for node_id in plan.generation.node_ids():
            node = s.membership.nodes[node_id]
            first = min(a.rank for a in plan.generation.ranks if a.node_id == node_id)
            members.append(pb.Member(node_id=node_id, address=node.address, first_rank=first, nproc=node.nproc))
        return pb.GenerationAssignment(
            status="ok", generation=plan.generation.number, rank=rank, world_size=plan.generation.world_size,
            store_address=plan.store_address or s.store_address, restore_step=plan.restore_step, restore_blobs=plan.blobs,
            members=members, config=s.config_message(), batch_shares=plan.generation.batch_shares,
        )

    def WatchGeneration(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> pb.WatchResponse:
        s = self.s
        deadline = time.monotonic() + min(max(request.wait_s, 0.1), 60.0)
        with s.cond:
            while (s.membership.number == request.known_generation and s.job_state == "running"
                   and time.monotonic() < deadline and context.is_active()):
                s.cond.wait(min(deadline - time.monotonic(), 0.5) if deadline > time.monotonic() else 0)
            return pb.WatchResponse(generation=s.membership.number, job_state=s.job_state)

    def ReportFailure(self, request: pb.FailureReport, context: grpc.ServicerContext) -> pb.Ack:
        s = self.s
        with s.cond:
            plan = s.plan
            if plan is not None and request.generation == plan.generation.number and request.rank in s.progress:
                s.failed_at[request.rank] = s.progress[request.rank][0]  # reported just before the failure
                s.check_finish()
            opened = s.membership.collective_failed(request.generation, s.clock())
            if opened:
                s.event("collective-failed", f"rank {request.rank} of generation {request.generation}: "
                                             f"{short_reason(request.reason)}")
                if s.failure_since is None:
                    s.failure_since = s.clock()
                s.cond.notify_all()
        threading.Thread(target=self._probe_agents, name="ftrain-probe", daemon=True).start()
        return pb.Ack(ok=True)

    def _probe_agents(self) -> None:
        """Pings every live agent; one that refuses connections is dead (its node was lost)."""
        if not self._probing.acquire(blocking=False):
            return
        try:
            with self.s.cond:
                targets = [(n.node_id, n.address) for n in self.s.membership.nodes.values() if n.alive]
            for node_id, address in targets:
                channel = open_channel(address)
                try:
                    agent_pb2_grpc.AgentStub(channel).Ping(agent_pb2.PingRequest(), timeout=2.0,
                                                           metadata=token_metadata(self.token))
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        with self.s.cond:
                            self.s.node_dead(node_id, "agent unreachable")
                finally:
                    channel.close()
        finally:
            self._probing.release()

    def ReportSnapshot(self, request: pb.SnapshotReport, context: grpc.ServicerContext) -> pb.SnapshotAck:
        s = self.s
        with s.cond:
            blob = request.blob
            record = BlobRecord(step=blob.step, producer_rank=blob.producer_rank,
                                producer_world_size=blob.producer_world_size, producer_trainer=blob.producer_trainer,
                                producer_node=blob.producer_node, shard_nodes=tuple(x.node_id for x in blob.shards),
                                info=blob)
            accepted = s.plan is not None and request.generation == s.plan.generation.number and not s.membership.pending
            if accepted:
                s.metrics.snapshot_bytes.inc(blob.size)
                s.metrics.erasure_encode_bytes.inc(blob.k * blob.shard_len if blob.m else 0)
                s.metrics.lost_steps.inc(s.lost_steps.progress(request.generation, request.step))
                if request.stall_s:
                    s.metrics.snapshot_stall.observe(request.stall_s)
                    s.stall_s = request.stall_s
                if request.snapshot_duration_s:
                    s.metrics.snapshot_duration.observe(request.snapshot_duration_s)
                self._progress(request.rank, request.step)
                if request.compute_time_s:
                    s.compute_times[request.rank] = request.compute_time_s
                    s.record_compute(request.rank, request.step, request.compute_time_s, request.steps_covered or 1)
                if s.catalog.record(request.generation, record):
                    self._committed(request.step)
                self._wait_commit(request.step, request.generation, min(request.wait_commit_s, 60.0), context)
            return pb.SnapshotAck(accepted=accepted, current_generation=s.membership.number,
                                  last_committed_step=s.catalog.newest_committed)

    def _progress(self, rank: int, step: int) -> None:
        """With the state's lock held: rank `rank` of the current generation is at `step` (from a
        snapshot report or a pulse); feeds the hang watchdog and its step-time history."""
        s = self.s
        now = s.clock()
        previous = s.progress.get(rank)
        if previous is not None and step <= previous[0]:
            return  # no newer step (a pulse repeats it, a snapshot report lags it): the watchdog's clock runs on
        step_time = (now - previous[1]) / (step - previous[0]) if previous is not None else None
        s.hang.progress(rank, step, now, step_time)
        s.progress[rank] = (step, now)

    def _committed(self, step: int) -> None:
        s = self.s
        now = s.clock()
        s.metrics.step.set(step)
        generation = s.plan.generation.number if s.plan else -1
        if s._last_commit is not None and s._last_commit[0] == generation and step > s._last_commit[1]:
            steps = step - s._last_commit[1]
            for _ in range(min(steps, 10000)):  # one observation per step: rate(_count) is the step rate
                s.metrics.step_duration.observe((now - s._last_commit[2]) / steps)
        s._last_commit = (generation, step, now)
        if s._last_commit_time is not None:
            s.snapshot_interval_s = now - s._last_commit_time
        s._last_commit_time = now
        s.checkpoint_committed(step)
        if s.failure_since is not None:
            duration = now - s.failure_since
            s.metrics.recovery_duration.observe(duration)
            # phases: until the new generation formed (detection, restarts in restart mode, rendezvous),
            # then restore and the first step(s) to this commit
            formed = max(0.0, min(duration, s.formed_at - s.failure_since))
            s.event("recovered", f"step {step} committed {duration:.2f} s after the failure (generation formed after "
                                 f"{formed:.2f} s, restore and first step {duration - formed:.2f} s)",
                    recovery_s=round(duration, 3), formed_s=round(formed, 3), restore_s=round(duration - formed, 3),
                    recovery_mode=s.settings.recovery)
            s.failure_since = None
        s.cond.notify_all()

    def WaitCommitted(self, request: pb.WaitCommittedRequest, context: grpc.ServicerContext) -> pb.WaitCommittedResponse:
        s = self.s
        with s.cond:
            self._wait_commit(request.step, request.generation, min(max(request.wait_s, 0.1), 60.0), context)
            return pb.WaitCommittedResponse(committed=s.catalog.newest_committed >= request.step,
                                            current_generation=s.membership.number if s.job_state == "running" else -1,
                                            last_committed_step=s.catalog.newest_committed)

    def _wait_commit(self, step: int, generation: int, wait_s: float, context: grpc.ServicerContext) -> None:
        """With the state's lock held: waits until `step` is committed, the generation moves, the job
        ends, `wait_s` pass or the caller goes away."""
        s = self.s
        deadline = time.monotonic() + wait_s
        while (s.catalog.newest_committed < step and s.membership.number == generation and s.job_state == "running"
               and time.monotonic() < deadline and context.is_active()):
            s.cond.wait(min(deadline - time.monotonic(), 0.5))

    def ReportProgress(self, request: pb.ProgressReport, context: grpc.ServicerContext) -> pb.Ack:
        with self.s.cond:
            plan = self.s.plan
            if request.pulse:
                self.s.pulse_seen[request.trainer_uid] = self.s.clock()
                if plan is not None and request.generation == plan.generation.number:
                    self.s.pulses[request.rank] = (self.s.clock(), request.in_collective, request.step)
                    if not self.s.membership.pending:  # as for snapshot reports
                        # steps between snapshots are progress too: with --snapshot-every N the
                        # snapshot reports alone would leave the hang watchdog N steps without news
                        self._progress(request.rank, request.step)
                return pb.Ack(ok=True)
            self.s.progress[request.rank] = (request.step, self.s.clock())
            self.s.metrics.lost_steps.inc(self.s.lost_steps.progress(request.generation, request.step))
        return pb.Ack(ok=True)

    def ClaimFault(self, request: pb.FaultClaim, context: grpc.ServicerContext) -> pb.Ack:
        s = self.s
        with s.cond:
            if request.fault in s.fired_faults or request.fault not in {f.raw for f in s.settings.inject}:
                return pb.Ack(ok=False)
            s.fired_faults.add(request.fault)
            s.event("inject", f"injecting {request.fault} (rank {request.rank} at step {request.step})")
        return pb.Ack(ok=True)

    def ReportFinished(self, request: pb.FinishedReport, context: grpc.ServicerContext) -> pb.Ack:
        s = self.s
        with s.cond:
            plan = s.plan
            if plan is not None and request.generation == plan.generation.number:
                s.finished[request.rank] = request.step
                s.hang.remove_rank(request.rank)
                s.check_finish()
        return pb.Ack(ok=True)

    def ReportUserError(self, request: pb.UserErrorReport, context: grpc.ServicerContext) -> pb.UserErrorVerdict:
        s = self.s
        error = UserError(generation=request.generation, rank=request.rank, step=request.step,
                          error_type=request.error_type, message=request.error_message)
        with s.cond:
            print_traceback, message = s.user_error(error)
            failed = s.job_state == "failed"
        return pb.UserErrorVerdict(print_traceback=print_traceback, job_failed=failed, message=message)

    def GetStatus(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        return pb.StatusResponse(json=json.dumps(self.s.status()))


class Coordinator:
    """Runs the coordinator: gRPC server, TCPStore, ticker and metrics endpoint."""

    def __init__(self, settings: JobSettings, token: str, host: str = "127.0.0.1", port: int = 29400,
                 metrics_port: int | None = None, store_port: int = 0) -> None:
        from torch.distributed import TCPStore  # imported here: only the coordinator hosts the store

        settings.validate()
        resume, passed = self._find_resume(settings) if settings.resume_dir else (None, [])
        self.settings = settings
        self.token = token
        self.host = host
        self.store = TCPStore(host, store_port, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=60))
        self.metrics = metrics_mod.Metrics()
        self.state = CoordinatorState(settings, f"{host}:{self.store.port}", self.metrics)
        self._generation_stores: collections.deque[Any] = collections.deque(maxlen=3)
        self.state.new_store = self._new_store
        for problem in passed:
            self.state.event("checkpoint-passed-over", problem)
        if resume is not None:
            with self.state.cond:
                self.state.resume_from(resume)
        elif settings.resume_dir:
            self.state.event("resume", f"no complete checkpoint in {settings.resume_dir}: starting fresh")
        self.server = make_server(token)
        self.servicer = CoordinatorServicer(self.state, token)
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(self.servicer, self.server)
        services = [pb.DESCRIPTOR.services_by_name["Coordinator"].full_name]
        if settings.mode == "async":  # the aggregator shares this server, port and token check
            from ftrain.aggregate.server import SERVICE_NAME, host_on_coordinator
            host_on_coordinator(self.server, self.state, token)
            services.append(SERVICE_NAME)
        add_health_and_reflection(self.server, services)
        self.port = bind(self.server, host, port)
        self.metrics_port = self.metrics.serve(metrics_port, addr=host) if metrics_port is not None else None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="ftrain-ticker", daemon=True)

    def _new_store(self) -> str:
        """Restart mode: a rendezvous store of the generation's own, so a script's env://
        init_process_group never sees an earlier generation's keys (torch 2.13's agent-store
        rendezvous adds no prefix). The newest three are kept."""
        from torch.distributed import TCPStore

        store = TCPStore(self.host, 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=300))
        self._generation_stores.append(store)
        return f"{self.host}:{store.port}"

    @staticmethod
    def _find_resume(settings: JobSettings) -> tuple[durable_files.Checkpoint | None, list[str]]:
        """--resume: the newest complete checkpoint that checks out, and each newer one passed over
        with its fault. None there: a ConfigError, or a fresh start with --resume-if-any."""
        checkpoint, passed = durable_files.newest_complete(settings.resume_dir)
        for problem in passed:
            log.warning("--resume: passing over %s", problem)
        if checkpoint is None and not settings.resume_optional:
            raise ConfigError(f"--resume {settings.resume_dir}: no complete checkpoint there"
                              + (f" ({'; '.join(passed)})" if passed else "")
                              + "; start without --resume, or point it at a --checkpoint-dir")
        return checkpoint, passed

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "Coordinator":
        self.server.start()
        self._ticker.start()
        log.info("coordinator for job %s on %s (store %s)", self.settings.job_id, self.address, self.state.store_address)
        return self

    def _tick_loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.state.tick()
            except Exception:  # the ticker must never die
                log.exception("coordinator tick failed")

    def wait_done(self, timeout: float | None = None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.state.cond:
            while self.state.job_state == "running":
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self.state.cond.wait(0.5)
            return self.state.job_state

    def wait_checkpoints(self, timeout_s: float = 120.0) -> None:
        """After the job ended: waits (bounded) until no durable checkpoint is being written, so the
        last one is complete before the agents go (they stay while heartbeats say one is pending)."""
        deadline = time.monotonic() + timeout_s
        with self.state.cond:
            while self.state.checkpoint_pending() and time.monotonic() < deadline:
                self.state.cond.wait(0.2)
                self.state.tick_durable()
            if self.state.checkpoint_pending():
                log.warning("the last durable checkpoint was not complete within %.0f s of the job's end", timeout_s)

    def linger(self, timeout_s: float = 15.0) -> None:
        """After the job ended, keeps serving until every live agent has heartbeated once more
        (so it learns the outcome and exits cleanly), at most `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        ended = self.state.clock()
        with self.state.cond:
            while time.monotonic() < deadline:
                live = [n.node_id for n in self.state.membership.nodes.values() if n.alive]
                if all(self.state.last_seen.get(node, 0.0) > ended for node in live):
                    return
                self.state.cond.wait(0.2)

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        self.server.stop(grace).wait(grace + 1)
        self.state.close_events_file()
