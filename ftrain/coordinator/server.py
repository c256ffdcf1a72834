"""The coordinator process: the gRPC shell around the pure machine (ftrain.coordinator.machine).

Each RPC takes the one lock, hands its request to the machine with the time, applies the effects
it returns (events to the log and the events file, Prometheus updates, a rendezvous store for a
restart-mode generation, a wake-up of blocked callers) and, where the RPC waits (a join, a
commit), waits on the lock's condition with a bound. It also hosts the torch.distributed
TCPStore every generation rendezvouses on (with a generation-specific key prefix, so a stale
rank can never join a newer group), pings agents when a trainer reports a failed collective (a
killed node is found in milliseconds, not after the heartbeat timeout), and serves Prometheus
metrics.
"""
from __future__ import annotations

import collections
import datetime
import json
import logging
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Sequence

import grpc

from ftrain import metrics as metrics_mod
from ftrain.config import PROTOCOL_VERSION, ConfigError, JobSettings
from ftrain.coordinator.bugs import UserError
from ftrain.coordinator.machine import CoordinatorMachine, Effects
from ftrain.proto.ftrain.v1 import agent_pb2, agent_pb2_grpc, coordinator_pb2 as pb, coordinator_pb2_grpc
from ftrain.rpc import add_health_and_reflection, bind, make_server, open_channel, token_metadata
from ftrain.snapshot import durable as durable_files
from ftrain.wire import to_wire

if TYPE_CHECKING:
    from ftrain.aggregate.server import AggregatorService

log = logging.getLogger("ftrain.coordinator")


class CoordinatorState:
    """The pure machine behind one (re-entrant) lock, with the event log and the metrics its
    effects drive. Every public method takes the lock itself; `machine` is read with it held."""

    def __init__(self, settings: JobSettings, store_address: str, metrics: metrics_mod.Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.cond = threading.Condition()
        self.machine = CoordinatorMachine(settings, store_address, clock())
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.events_sink: IO[str] | None = None  # --events-file: one flushed JSON line per event
        self.aggregator: AggregatorService | None = None  # async mode: the aggregator on this server
        self.new_store: Callable[[], str] | None = None  # restart mode: a fresh rendezvous store per generation
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}  # (metric, label values) -> its labelled child

    def apply(self, fx: Effects) -> None:
        """Carries out a machine step's effects (lock held)."""
        for event in fx.events:
            self._record(event.kind, event.message, event.extra)
            if event.warning:
                log.warning("%s", event.message)
        for update in fx.metrics:
            metric: Any = getattr(self.metrics, update.metric)
            if update.op == "clear":
                metric.clear()
                for key in [key for key in self._children if key[0] == update.metric]:
                    del self._children[key]
            elif update.op == "remove":
                metric.remove(*update.labels.values())
                self._children.pop((update.metric, tuple(update.labels.values())), None)
            else:
                if update.labels:  # labels() costs microseconds: the ticker sets one gauge per node 5 times a second
                    key = (update.metric, tuple(update.labels.values()))
                    target = self._children.get(key)
                    if target is None:
                        target = self._children[key] = metric.labels(**update.labels)
                else:
                    target = metric
                getattr(target, update.op)(update.value)
        if fx.need_store and self.new_store is not None:
            self.machine.provide_store(self.new_store())
        if fx.wake:
            self.cond.notify_all()

    @property
    def job_state(self) -> str:
        return self.machine.job_state

    @property
    def message(self) -> str:
        return self.machine.message

    def tick(self) -> None:
        with self.cond:
            self.apply(self.machine.on_tick(self.clock()))

    def fail(self, message: str) -> None:
        with self.cond:
            self.apply(self.machine.fail(self.clock(), message))

    def resume_from(self, checkpoint: durable_files.Checkpoint,
                    fallbacks: Sequence[durable_files.Checkpoint] = ()) -> None:
        with self.cond:
            self.apply(self.machine.resume_from(self.clock(), checkpoint, fallbacks))

    def status(self) -> dict[str, Any]:
        with self.cond:
            aggregator = self.aggregator
            status = self.machine.status(self.clock(), aggregator.summary() if aggregator is not None else None,
                                         aggregator.protector.summary() if aggregator is not None else None)
            status["events"] = list(self.events)[-20:]
            return status

    def dead_nodes(self) -> set[str]:
        """The nodes declared dead (a launcher fences those whose agent still runs)."""
        with self.cond:
            return {node_id for node_id, node in self.machine.membership.nodes.items() if not node.alive}

    # -- the aggregator's view of the coordinator (ftrain.aggregate.server.CoordinatorLink) ---------
    def live_agents(self) -> list[tuple[str, str]]:
        with self.cond:
            return self.machine.live_agents()

    def worker_progress(self, rank: int, generation: int, step: int, steps: int, compute_s: float) -> None:
        with self.cond:
            self.apply(self.machine.on_worker_progress(self.clock(), rank, generation, step, steps, compute_s))

    def restarted(self) -> bool:
        """This coordinator came back after a restart (it learned older generations from its agents)."""
        with self.cond:
            m = self.machine.membership
            return m.floor > 0 or m.slots_restored

    # -- events ----------------------------------------------------------------------------------
    def event(self, kind: str, message: str, **extra: Any) -> None:
        with self.cond:
            self._record(kind, message, extra)

    def _record(self, kind: str, message: str, extra: dict[str, Any]) -> None:
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


def _wait(state: CoordinatorState, done: Callable[[], bool], wait_s: float, context: grpc.ServicerContext) -> None:
    """With the lock held: waits until `done()`, `wait_s` pass or the caller goes away."""
    deadline = time.monotonic() + wait_s
    while not done() and time.monotonic() < deadline and context.is_active():
        state.cond.wait(min(deadline - time.monotonic(), 0.5))


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """gRPC methods: each one hands its request to the machine under the lock and applies the effects."""

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
            node_id, fx = s.machine.on_register(s.clock(), request)
            s.apply(fx)
            return pb.RegisterAgentResponse(node_id=node_id, config=s.machine.config_message())

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatResponse:
        with self.s.cond:
            reply, fx = self.s.machine.on_heartbeat(self.s.clock(), request)
            self.s.apply(fx)
            return reply

    def ReportTrainerExit(self, request: pb.TrainerExit, context: grpc.ServicerContext) -> pb.Ack:
        with self.s.cond:
            ack, fx = self.s.machine.on_trainer_exit(self.s.clock(), request)
            self.s.apply(fx)
            return ack

    # trainers --------------------------------------------------------------------------------
    def JoinGeneration(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.GenerationAssignment:
        s = self.s
        deadline = time.monotonic() + min(max(request.wait_s, 0.1), 60.0)
        with s.cond:
            first = True
            while True:
                assignment, fx = s.machine.on_join(s.clock(), request, first)
                s.apply(fx)
                if assignment is not None:
                    return assignment
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not context.is_active():
                    return pb.GenerationAssignment(status=pb.ASSIGNMENT_STATUS_WAIT)
                s.cond.wait(min(remaining, 0.5))
                first = False

    def WatchGeneration(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> pb.WatchResponse:
        s = self.s
        with s.cond:
            m = s.machine
            _wait(s, lambda: m.membership.number != request.known_generation or m.job_state != "running",
                  min(max(request.wait_s, 0.1), 60.0), context)
            return pb.WatchResponse(generation=m.membership.number, job_state=to_wire(pb.JobState, m.job_state))

    def ReportFailure(self, request: pb.FailureReport, context: grpc.ServicerContext) -> pb.Ack:
        with self.s.cond:
            self.s.apply(self.s.machine.on_failure_report(self.s.clock(), request))
        threading.Thread(target=self._probe_agents, name="ftrain-probe", daemon=True).start()
        return pb.Ack(ok=True)

    def _probe_agents(self) -> None:
        """Pings every live agent; one that refuses connections is dead (its node was lost)."""
        if not self._probing.acquire(blocking=False):
            return
        try:
            for node_id, address in self.s.live_agents():
                channel = open_channel(address)
                try:
                    agent_pb2_grpc.AgentStub(channel).Ping(agent_pb2.PingRequest(), timeout=2.0,
                                                           metadata=token_metadata(self.token))
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.UNAVAILABLE:
                        with self.s.cond:
                            self.s.apply(self.s.machine.on_agent_unreachable(self.s.clock(), node_id))
                finally:
                    channel.close()
        finally:
            self._probing.release()

    def ReportSnapshot(self, request: pb.SnapshotReport, context: grpc.ServicerContext) -> pb.SnapshotAck:
        s = self.s
        with s.cond:
            m = s.machine
            accepted, fx = m.on_snapshot(s.clock(), request)
            s.apply(fx)
            if accepted:
                _wait(s, lambda: m.commit_wait_over(request.step, request.generation),
                      min(request.wait_commit_s, 60.0), context)
            return pb.SnapshotAck(accepted=accepted, current_generation=m.membership.number,
                                  last_committed_step=m.catalog.newest_committed)

    def WaitCommitted(self, request: pb.WaitCommittedRequest, context: grpc.ServicerContext) -> pb.WaitCommittedResponse:
        s = self.s
        with s.cond:
            m = s.machine
            _wait(s, lambda: m.commit_wait_over(request.step, request.generation),
                  min(max(request.wait_s, 0.1), 60.0), context)
            return pb.WaitCommittedResponse(committed=m.catalog.newest_committed >= request.step,
                                            current_generation=m.membership.number if m.job_state == "running" else -1,
                                            last_committed_step=m.catalog.newest_committed,
                                            skipped=m.catalog.is_skipped(request.step))

    def ReportProgress(self, request: pb.ProgressReport, context: grpc.ServicerContext) -> pb.Ack:
        with self.s.cond:
            self.s.apply(self.s.machine.on_progress(self.s.clock(), request))
        return pb.Ack(ok=True)

    def ClaimFault(self, request: pb.FaultClaim, context: grpc.ServicerContext) -> pb.Ack:
        with self.s.cond:
            ok, fx = self.s.machine.on_fault_claim(request)
            self.s.apply(fx)
        return pb.Ack(ok=ok)

    def ReportFinished(self, request: pb.FinishedReport, context: grpc.ServicerContext) -> pb.Ack:
        with self.s.cond:
            self.s.apply(self.s.machine.on_finished(self.s.clock(), request))
        return pb.Ack(ok=True)

    def ReportUserError(self, request: pb.UserErrorReport, context: grpc.ServicerContext) -> pb.UserErrorVerdict:
        error = UserError(generation=request.generation, rank=request.rank, step=request.step,
                          error_type=request.error_type, message=request.error_message)
        with self.s.cond:
            (print_traceback, message), fx = self.s.machine.on_user_error(self.s.clock(), error)
            self.s.apply(fx)
            failed = self.s.job_state == "failed"
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
        if settings.recovery == "restart":  # the first generation's; each one formed asks for the next
            self.state.machine.provide_store(self._new_store())
        for problem in passed:
            self.state.event("checkpoint-passed-over", problem)
        if resume is not None:
            self.state.resume_from(resume, durable_files.older_complete(settings.resume_dir, resume.step))
        elif settings.resume_dir:
            self.state.event("resume", f"no complete checkpoint in {settings.resume_dir}: starting fresh")
        if settings.checkpoint_dir and resume is None:  # a restarted coordinator of a running job goes on from it
            found, _ = durable_files.newest_complete(settings.checkpoint_dir, verify=False)
            self.state.machine.durable_found = found if found is not None and found.job_id == settings.job_id else None
        # every trainer may hold long-polls (a join, a generation watch, a snapshot's commit wait) and each
        # holds a worker thread: with 64 (the default) a job of more than a few dozen trainers starved its own
        # heartbeats and its nodes were declared dead before generation 0 formed. Threads start on demand.
        self.server = make_server(token, max_workers=min(4000, 64 + 3 * settings.target_nodes))
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
        log.info("coordinator for job %s on %s (store %s)", self.settings.job_id, self.address, self.state.machine.store_address)
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
            while self.state.machine.checkpoint_pending() and time.monotonic() < deadline:
                self.state.cond.wait(0.2)
                self.state.apply(self.state.machine.on_durable_tick(self.state.clock()))
            if self.state.machine.checkpoint_pending():
                log.warning("the last durable checkpoint was not complete within %.0f s of the job's end", timeout_s)

    def linger(self, timeout_s: float = 15.0) -> None:
        """After the job ended, keeps serving until every live agent has heartbeated once more
        (so it learns the outcome and exits cleanly), at most `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        ended = self.state.clock()
        with self.state.cond:
            while time.monotonic() < deadline and not self.state.machine.heard_from_all_since(ended,
                                                                                            self.state.clock()):
                self.state.cond.wait(0.2)

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        self.server.stop(grace).wait(grace + 1)
        self.state.close_events_file()
