"""The node agent: registers with the coordinator, runs and watches P trainers, heartbeats.

Heartbeats come from the agent's own thread, never from the training loop, so a busy trainer
is never mistaken for a dead node. A trainer that dies is reported and restarted into the next
generation (up to `max_restarts`). The agent's shard store outlives any trainer.
"""
from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from ftrain import config as cfg
from ftrain import metrics as metrics_mod
from ftrain.agent.checkpoint import CheckpointWriter
from ftrain.agent.dataplane import ShardDataServer
from ftrain.agent.standby import Standbys
from ftrain.agent.store import AgentServicer, ShardStore
from ftrain.proto.ftrain.v1 import agent_pb2, agent_pb2_grpc, coordinator_pb2 as pb, coordinator_pb2_grpc
from ftrain.rpc import (PeerUnavailable, Unauthenticated, add_health_and_reflection, bind, call_retrying,
                        describe_rpc_error, make_server, open_channel, token_metadata)
from ftrain.snapshot import local_copy
from ftrain.snapshot.transfer import AgentPool
from ftrain.wire import from_wire, to_wire

log = logging.getLogger("ftrain.agent")
_PR_SET_PDEATHSIG = 1


_PRCTL: Any
try:  # resolved before any fork: the child may only call the function pointer
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _PRCTL = None


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when its parent dies (a lost node loses its trainers)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _codec_backend() -> str:
    """The erasure codec backend this node's trainers load (same interpreter and environment)."""
    from ftrain.snapshot.erasure import default_backend

    return default_backend()


@dataclass
class TrainerProcess:
    local_rank: int
    process: subprocess.Popen | None  # None while restart mode joins its generation before starting it
    restarts: int = 0
    state: str = "running"
    generation: int = -1  # restart mode: the generation the process was started into
    exit_code: int = 0
    started: float = field(default_factory=time.monotonic)


class AgentError(RuntimeError):
    pass


class _NodeServicer(AgentServicer):
    """The shard store plus the trainers' metrics reports (so each node is one scrape target)."""

    def __init__(self, agent: "Agent") -> None:
        super().__init__(agent.store, agent.job_id, agent._node_ref, agent.data_server.address)
        self.agent = agent

    def ReportTrainerMetrics(self, request: agent_pb2.TrainerMetrics, context: grpc.ServicerContext) -> agent_pb2.TrainerMetricsAck:
        self._check_job(request.job_id, context)
        self.agent.metrics.record_trainer_report(request)
        if self.agent.trainer_steps.get(request.local_rank) != request.step and self.agent.standbys is not None:
            self.agent.standbys.progress(request.local_rank)
        self.agent.trainer_steps[request.local_rank] = request.step
        return agent_pb2.TrainerMetricsAck(ok=True)


def machine_memory_bytes() -> int:
    """This machine's memory, or its container's limit (cgroup v2, then v1) where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as handle:
                text = handle.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


class Agent:
    def __init__(self, coordinator: str, token: str, nproc: int, command: list[str], job_id: str = "",
                 node_id: str = "", host: str = "127.0.0.1", port: int = 0, metrics_port: int | None = None,
                 max_restarts: int = 10, connect_timeout_s: float = 30.0, heartbeat_interval_s: float = 1.0,
                 extra_env: dict[str, str] | None = None, checkpoint_dir: str = "", snapshot_memory: str = "") -> None:
        cfg.parse_host_port(coordinator)
        if snapshot_memory:
            cfg.snapshot_memory_bytes(snapshot_memory, machine_memory_bytes())  # a bad value fails here, at start
        if nproc < 1:
            raise cfg.ConfigError(f"--nproc-per-node must be >= 1; got {nproc}")
        if not command:
            raise cfg.ConfigError("ftrain agent needs the training command after `--`, e.g. -- python train.py")
        self.coordinator = coordinator
        self.token = token
        self.nproc = nproc
        self.command = command
        self.job_id = job_id
        self.node_id = node_id
        self.host = host
        self.max_restarts = max_restarts
        self.connect_timeout_s = connect_timeout_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.extra_env = dict(extra_env or {})
        self.metadata = token_metadata(token)
        self.channel = open_channel(coordinator)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.store = ShardStore()
        self.metrics = metrics_mod.Metrics()
        self.reads = {"shard": 0, "whole": 0}  # shards served over the network (ftrain_shard_reads_total)
        self.store.on_read = self._count_read
        self.shm_dir = ""  # restart mode: trainers keep their own blobs whole here (ftrain.snapshot.local_copy)
        self._node_ref = [node_id]
        self.server = make_server(token, max_workers=32)
        self.port = bind(self.server, host, port)
        self.data_server = ShardDataServer(self.store, token, lambda: self.job_id, host)
        self.metrics_port = self.metrics.serve(metrics_port, addr=host) if metrics_port is not None else None
        self.trainers: dict[int, TrainerProcess] = {}
        self.trainer_steps: dict[int, int] = {}  # local rank -> steps done (from its metrics reports)
        self.job_state = "running"
        self.job_message = ""
        self.slot = -1         # from heartbeats; sent again if the coordinator restarts
        self.generation = -1
        self.recovery = "inprocess"  # the job's (from registration): "restart" starts trainers with torchrun's env
        self._spawned = 0      # restart mode: trainer uids are node/local_rank/aN
        self._to_spawn: queue.Queue[tuple[TrainerProcess, dict[str, str]]] = queue.Queue()  # joined, to start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.checkpoint_dir = checkpoint_dir  # where this node mounts the job's checkpoint directory ("" = its path)
        self.snapshot_memory = snapshot_memory  # this node's own --snapshot-memory ("": the job's)
        self.standbys: Standbys | None = None  # --standby-trainers (from the job's config)
        self._refused_counted = 0
        self._writer: CheckpointWriter | None = None  # the durable tier's writer, made at the first order
        self._wake = threading.Event()  # heartbeat now (a checkpoint result is ready)
        self._checkpoint_pending = False  # the coordinator says a durable checkpoint is still being written

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- coordinator ----------------------------------------------------------------------------
    def register(self) -> None:
        deadline = time.monotonic() + self.connect_timeout_s
        request = pb.RegisterAgentRequest(job_id=self.job_id, node_id=self.node_id, address=self.address,
                                          nproc=self.nproc, hostname=socket.gethostname(),
                                          protocol_version=cfg.PROTOCOL_VERSION,
                                          metrics_address=f"{self.host}:{self.metrics_port}" if self.metrics_port else "",
                                          slot=self.slot, generation=self.generation,
                                          ec_backend=_codec_backend(),
                                          held=[pb.HeldShard(blob_info=info, index=index)
                                                for info, index in self.store.held()])
        try:
            response = call_retrying(lambda: self.stub.RegisterAgent(request, timeout=5.0, metadata=self.metadata),
                                     f"coordinator {self.coordinator}", max(0.0, deadline - time.monotonic()),
                                     interval_s=0.5)
        except (PeerUnavailable, Unauthenticated) as error:
            raise AgentError(str(error)) from None
        except grpc.RpcError as error:
            raise AgentError(describe_rpc_error(error, f"coordinator {self.coordinator}")) from None
        self.node_id = response.node_id
        self._node_ref[0] = response.node_id
        self.recovery = response.config.recovery or "inprocess"
        try:
            self.store.limit = cfg.snapshot_memory_bytes(self.snapshot_memory or response.config.snapshot_memory,
                                                         machine_memory_bytes())
        except cfg.ConfigError as error:  # the coordinator validated the job's value; keep the default
            log.warning("%s; using %s", error, cfg.DEFAULT_SNAPSHOT_MEMORY)
            self.store.limit = cfg.snapshot_memory_bytes("", machine_memory_bytes())
        self.metrics.snapshot_memory_limit.set(self.store.limit)
        if response.config.standby_trainers and self.standbys is None:
            self.standbys = Standbys(self._trainer_command(), self._environment, die_with_parent)
            if self.standbys.argv is None:
                log.warning("--standby-trainers: %s is not `python SCRIPT.py ...` or `python -m MODULE ...`; "
                            "trainers start cold", " ".join(self._trainer_command())[:200])
        if not self.job_id:
            self.job_id = response.config.job_id
        log.info("agent %s registered at %s (shard store %s)", self.node_id, self.coordinator, self.address)

    def _heartbeat_loop(self) -> None:
        failures_since: float | None = None
        while not self._stop.is_set():
            self._wake.wait(self.heartbeat_interval_s)  # a finished checkpoint order wakes it early
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                infos = [pb.TrainerInfo(local_rank=t.local_rank, pid=t.process.pid if t.process else 0,
                                        state=to_wire(pb.TrainerState, t.state),
                                        exit_code=t.exit_code, last_step=self.trainer_steps.get(t.local_rank, 0))
                         for t in self.trainers.values()]
            count, size = self.store.stats()
            self.store.outside_bytes = local_copy.bytes_held(self.shm_dir)  # the trainers' whole copies: this
            size += self.store.outside_bytes                                # node's snapshot memory too
            self.metrics.shard_store_bytes.set(size)
            refused, self._refused_counted = self.store.refused - self._refused_counted, self.store.refused
            if refused:
                self.metrics.shard_refusals.inc(refused)
                log.warning("refused %d snapshot shard(s): the snapshot memory limit (%d bytes) is reached",
                            refused, self.store.limit)
            results = self._writer.take_results() if self._writer is not None else []
            try:
                response = self.stub.Heartbeat(pb.HeartbeatRequest(node_id=self.node_id, trainers=infos, shard_bytes=size,
                                                                   checkpoint_results=results,
                                                                   shard_limit_bytes=self.store.limit),
                                               timeout=5.0, metadata=self.metadata)
                failures_since = None
            except grpc.RpcError as error:
                if results and self._writer is not None:
                    self._writer.give_back(results)
                failures_since = failures_since or time.monotonic()
                if time.monotonic() - failures_since > self.connect_timeout_s:
                    self._finish("failed", describe_rpc_error(error, f"coordinator {self.coordinator}") +
                                 f"; gave up after {self.connect_timeout_s:.0f} s")
                continue
            job_state = from_wire(pb.JobState, response.job_state)
            if not response.known and job_state == "running":
                try:
                    self.register()  # the coordinator restarted: re-register under the same node id
                except AgentError as error:
                    log.warning("re-registration failed: %s", error)
                continue
            self.slot, self.generation = response.slot, max(self.generation, response.generation)
            self._checkpoint_pending = response.checkpoint_pending
            if response.min_retained_step > 0 or response.skipped_steps or response.dropped_blobs:
                self.store.drop_older_than(response.min_retained_step, response.skipped_steps, response.pinned_steps,
                                           response.dropped_blobs)
                local_copy.prune(self.shm_dir, response.min_retained_step, response.skipped_steps,
                                 response.pinned_steps)
            for command in response.commands:
                self._run_command(command)
            for order in response.checkpoint_orders:
                if self._writer is None:
                    self._writer = CheckpointWriter(self.store, AgentPool(self.token, self.job_id), self._node_ref,
                                                    self.checkpoint_dir, on_result=self._wake.set)
                self._writer.submit(order)
            if job_state != "running":
                self._finish(job_state, response.message)

    def _run_command(self, command: str) -> None:
        verb, _, arg = command.partition(":")
        if verb == "evict":  # the coordinator removed this node (e.g. a persistent straggler)
            log.warning("node %s evicted by the coordinator; stopping its trainers", self.node_id)
            self._finish("evicted", "evicted by the coordinator")
            return
        if verb == "restart-trainers":  # restart mode: every trainer starts over in generation `arg`
            threading.Thread(target=self._restart_all, args=(int(arg) if arg.isdigit() else 1 << 62,),
                             name="ftrain-restart", daemon=True).start()
            return
        with self._lock:
            trainer = self.trainers.get(int(arg)) if arg.isdigit() else None
        if trainer is None:
            log.warning("ignoring command %r", command)
            return
        if verb == "kill-trainer" and trainer.process is not None:
            log.warning("killing trainer %s on the coordinator's order", arg)
            trainer.process.kill()

    def _finish(self, state: str, message: str) -> None:
        if self.job_state == "running":
            self.job_state, self.job_message = state, message

    # -- trainers ---------------------------------------------------------------------------------
    def _trainer_command(self) -> list[str]:
        first = self.command[0]
        if first.endswith(".py"):
            return [sys.executable, *self.command]
        return list(self.command)

    def _restart_all(self, generation: int) -> None:
        """Restart mode, on the coordinator's order: kill every trainer running in a generation
        before `generation`, then start each again once it has its rank in the new generation (not
        a failure: nothing is reported). A trainer already started (or joining) for `generation` or
        later, e.g. the one that died and was restarted at once, is left alone."""
        with self._lock:
            running = [t for t in self.trainers.values() if t.state == "running" and t.process is not None
                       and t.generation < generation]
            for trainer in running:
                trainer.state = "joining"
        for trainer in running:
            assert trainer.process is not None
            trainer.process.kill()
            trainer.process.wait()
        log.info("restarting %d trainer(s) into the next generation", len(running))
        for trainer in running:
            self._start(trainer)

    def _start(self, trainer: TrainerProcess) -> None:
        """Starts a trainer process: at once, or in restart mode once the coordinator has given it
        its rank (torchrun's variables must be set before the script runs)."""
        if self.recovery != "restart":
            self._run(trainer)
            return
        trainer.state = "joining"
        threading.Thread(target=self._join_and_spawn, args=(trainer,), name=f"ftrain-join-{trainer.local_rank}",
                         daemon=True).start()

    def _join_and_spawn(self, trainer: TrainerProcess) -> None:
        with self._lock:
            self._spawned += 1
            uid = f"{self.node_id}/{trainer.local_rank}/a{self._spawned}"
        while not self._stop.is_set() and self.job_state == "running":
            try:
                reply = self.stub.JoinGeneration(pb.JoinRequest(
                    trainer_uid=uid, node_id=self.node_id, local_rank=trainer.local_rank,
                    known_generation=self.generation, wait_s=20.0), timeout=30.0, metadata=self.metadata)
            except grpc.RpcError as error:
                log.warning("joining the next generation for trainer %d: %s", trainer.local_rank,
                            describe_rpc_error(error, "coordinator"))
                self._stop.wait(1.0)
                continue
            if reply.status == pb.ASSIGNMENT_STATUS_WAIT:
                continue
            if reply.status != pb.ASSIGNMENT_STATUS_OK:  # the job ended meanwhile
                trainer.state = "finished" if reply.status == pb.ASSIGNMENT_STATUS_COMPLETE else "exited"
                return
            self.generation = max(self.generation, reply.generation)
            host, _, port = reply.store_address.rpartition(":")
            local_world = sum(m.nproc for m in reply.members if m.node_id == self.node_id) or self.nproc
            node_rank = next((i for i, m in enumerate(reply.members) if m.node_id == self.node_id), 0)
            torchrun = {  # as torchrun sets them; env:// connects as a client to the generation's own store
                "RANK": str(reply.rank), "WORLD_SIZE": str(reply.world_size), "LOCAL_RANK": str(trainer.local_rank),
                "LOCAL_WORLD_SIZE": str(local_world), "GROUP_RANK": str(node_rank), "ROLE_RANK": str(reply.rank),
                "ROLE_WORLD_SIZE": str(reply.world_size), "MASTER_ADDR": host, "MASTER_PORT": port,
                "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": str(reply.generation),
                "TORCHELASTIC_RUN_ID": self.job_id, "FTRAIN_TRAINER_UID": uid,
                "FTRAIN_GENERATION": str(reply.generation),
            }
            if self.host in ("127.0.0.1", "localhost") and "GLOO_SOCKET_IFNAME" not in os.environ:
                torchrun["GLOO_SOCKET_IFNAME"] = "lo"  # the script's own gloo group binds where the agent does
            # started by the main thread: a child's PDEATHSIG fires when the *thread* that forked it ends
            trainer.generation = reply.generation
            self._to_spawn.put((trainer, torchrun))
            return

    def _spawn(self, local_rank: int, extra: dict[str, str] | None = None) -> subprocess.Popen:
        """A trainer process: a standby turned into it (--standby-trainers), else a new one."""
        env = self._environment(local_rank, extra)
        if self.standbys is None:
            return subprocess.Popen(self._trainer_command(), env=env, preexec_fn=die_with_parent)
        process = self.standbys.take(local_rank, env)
        if process is not None:
            log.info("trainer %d started warm, from standby pid %d", local_rank, process.pid)
        else:
            process = subprocess.Popen(self._trainer_command(), env=env, preexec_fn=die_with_parent)
        self.standbys.schedule(local_rank)  # ready for the next failure, once this trainer is under way
        return process

    def _environment(self, local_rank: int, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env.update(extra or {})
        env.update({
            cfg.ENV_COORDINATOR: self.coordinator, cfg.ENV_JOB_ID: self.job_id, cfg.ENV_NODE_ID: self.node_id,
            cfg.ENV_LOCAL_RANK: str(local_rank), cfg.ENV_TOKEN: self.token,
            "FTRAIN_AGENT_ADDRESS": self.address, "FTRAIN_BIND_HOST": self.host, local_copy.ENV_DIR: self.shm_dir,
            "FTRAIN_LOG_SOURCE": f"{self.node_id}/{local_rank}",  # ftrain.textfmt: one log line format
        })
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def _run(self, trainer: TrainerProcess, extra: dict[str, str] | None = None) -> None:
        trainer.process, trainer.started, trainer.state = self._spawn(trainer.local_rank, extra), time.monotonic(), "running"

    def _spawn_joined(self) -> None:
        """Restart mode (main thread): starts the trainers whose generation their join thread got."""
        while True:
            try:
                trainer, torchrun = self._to_spawn.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                if self.job_state != "running" or self._stop.is_set():
                    return
                self._run(trainer, torchrun)

    def _watch_trainers(self) -> None:
        while True:
            self._spawn_joined()
            if self.standbys is not None:
                self.standbys.refill()
            with self._lock:
                trainers = list(self.trainers.values())
            for trainer in trainers:
                if trainer.state not in ("running",) or trainer.process is None:
                    continue
                code = trainer.process.poll()
                if code is None:
                    continue
                uptime_s = time.monotonic() - trainer.started
                if code == 0:
                    trainer.state, trainer.exit_code = "finished", 0
                    # reported too: a script that exits without ever calling ftrain.init fails the job
                    self._report_exit(trainer, 0, False, uptime_s)
                    continue
                trainer.exit_code = code
                will_restart = self.job_state == "running" and trainer.restarts < self.max_restarts
                trainer.state = "restarting" if will_restart else "exited"
                if not self._report_exit(trainer, code, will_restart, uptime_s):
                    will_restart, trainer.state = False, "exited"  # the job failed: nothing to restart into
                if will_restart:
                    log.warning("trainer %d exited with %s; restarting", trainer.local_rank, code)
                    trainer.restarts += 1
                    self.metrics.trainer_restarts.inc()
                    self._start(trainer)
            if self.job_state != "running":
                return
            if all(t.state == "finished" for t in trainers) and trainers:
                # every trainer finished; wait for the coordinator to declare the job complete
                if self._stop.wait(0.1):
                    return
                continue
            if self._stop.wait(0.05):
                return

    def _await_checkpoints(self, timeout_s: float = 120.0) -> None:
        """The job ended: a durable checkpoint still being written (the job's last step, say) is
        finished first, as long as the coordinator says one is pending (bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.job_state == "complete":
            writer = self._writer
            busy = writer is not None and (not writer.idle() or writer.has_results())
            if not busy and not self._checkpoint_pending:
                return
            self._wake.set()  # heartbeat now: results out, orders in
            time.sleep(0.1)
        if self._checkpoint_pending:
            log.warning("leaving with a durable checkpoint unfinished (%.0f s after the job's end)", timeout_s)

    def _report_exit(self, trainer: TrainerProcess, code: int, will_restart: bool, uptime_s: float) -> bool:
        """Reports a trainer's exit; False when the coordinator answers that the job failed."""
        try:
            ack = self.stub.ReportTrainerExit(pb.TrainerExit(node_id=self.node_id, local_rank=trainer.local_rank,
                                                             pid=trainer.process.pid if trainer.process else 0, exit_code=code,
                                                             will_restart=will_restart, uptime_s=uptime_s),
                                              timeout=5.0, metadata=self.metadata)
        except grpc.RpcError as error:
            log.warning("could not report trainer exit: %s", describe_rpc_error(error, "coordinator"))
            return True
        if not ack.ok:
            self._finish("failed", ack.message)
            return False
        return True

    def run(self) -> int:
        """Runs until the job completes (0) or fails (1)."""
        agent_pb2_grpc.add_AgentServicer_to_server(_NodeServicer(self), self.server)
        add_health_and_reflection(self.server, [agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name])
        self.server.start()
        self.data_server.start()
        try:
            self.register()
        except AgentError as error:
            log.error("%s", error)
            self.server.stop(0)
            self.data_server.stop()
            return 2
        self.servicer_job = self.job_id
        if self.recovery == "restart":
            self.shm_dir = local_copy.make_dir(self.job_id, self.node_id)
        with self._lock:
            for local_rank in range(self.nproc):
                self.trainers[local_rank] = TrainerProcess(local_rank, None)
        for trainer in list(self.trainers.values()):
            self._start(trainer)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="ftrain-heartbeat", daemon=True)
        heartbeat.start()
        try:
            self._watch_trainers()
            self._await_checkpoints()
            # job over: give finished trainers a moment to exit, then make sure none is left
            deadline = time.monotonic() + (10.0 if self.job_state == "complete" else 2.0)
            for trainer in self.trainers.values():
                if trainer.process is None:
                    continue
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    trainer.process.wait(timeout=remaining)
                except subprocess.TimeoutExpired:
                    trainer.process.kill()
                    trainer.process.wait()
        finally:
            self._stop.set()
            self._wake.set()
            for trainer in self.trainers.values():
                if trainer.process is not None and trainer.process.poll() is None:
                    trainer.process.kill()
            self.server.stop(0.5)
            self.data_server.stop()
            if self._writer is not None:
                self._writer.close()
            local_copy.remove_dir(self.shm_dir)
            if self.standbys is not None:
                self.standbys.stop()
                log.info("agent %s: started %d trainer(s) warm from standbys and %d cold", self.node_id,
                         self.standbys.warm, self.standbys.cold)
            log.info("agent %s: served %d shard(s) and %d whole cop(ies) over the network", self.node_id,
                     self.reads["shard"], self.reads["whole"])
        if self.job_state == "complete":
            log.info("agent %s: job complete", self.node_id)
            return 0
        log.error("agent %s: job %s: %s", self.node_id, self.job_state, self.job_message[:160])
        return 1

    def _count_read(self, index: int) -> None:
        kind = "whole" if index == local_copy.FULL_COPY else "shard"
        with self._lock:
            self.reads[kind] += 1
        self.metrics.shard_reads.labels(kind=kind).inc()

    def stop(self) -> None:
        self._finish("failed", "agent stopped")
        self._stop.set()
        self._wake.set()
