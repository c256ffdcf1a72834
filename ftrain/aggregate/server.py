"""The aggregator service of async / federated mode (``ftrain launch --mode async``).

Role: the gRPC face of a :class:`~ftrain.aggregate.strategy.Strategy`.  Workers (trainers in
async mode, :mod:`ftrain.train.async_worker`) say ``Hello``, ``Pull`` the newest global model,
run H local steps, ``Push`` their delta tagged with the version they started from, and pull
again.  It is hosted on the coordinator's gRPC server (same address, same job token:
:func:`host_on_coordinator`) and can also run alone (``python -m ftrain.aggregate.server``,
used by the restart test).

Wire: models and deltas are flat float32 vectors streamed in ``CHUNK_BYTES`` (4 MiB) chunks,
client-streaming for ``Push``, server-streaming for ``Pull``, each checked with a CRC-32.

Staleness: every update fed to the strategy is recorded as (worker, base version, staleness =
version - base version at arrival, version after, applied?) and, when the strategy accepted
it, observed in ``ftrain_update_staleness``.  ``Status`` returns the counters and, on
request, the full record list; the coordinator's status JSON carries the summary.

Synchronous rules (``strategy.synchronous``, sync FedAvg): a worker whose push did not move the
version is told to ``hold``; it long-polls ``Pull(min_version=base+1)`` until the round closes.

Budget: ``session.steps(N)`` in async mode asks for N local steps per worker *on average*: the
job is done when the accepted updates cover N x world_size local steps (fast workers do more
of them).  After that every push is answered ``done`` and nothing more is applied.

State protection (:class:`StateProtector`): after every ``snapshot_every``-th version change
the strategy's ``state_dict()`` (global model, server optimizer, client memories, version)
plus the runtime's records (budget, per-worker progress) is serialised, Reed-Solomon coded
RS(k, m) (``--ec``, shrunk to the live agents like trainer snapshots) and streamed to the
agents' shard stores, then a small manifest pointing at it is written to every live agent.
Two blob slots alternate, so the agents hold at most two aggregator snapshots.  Before the
strategy may move the version again, the previous snapshot must be stored: a service that
dies loses at most ``snapshot_every`` aggregation steps (1 by default) plus the updates
buffered since.  A fresh service restores from the newest manifest any k good shards decode
(:meth:`StateProtector.restore`); workers notice the new *incarnation* and re-pull.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import grpc
import numpy as np
import torch

from ftrain.aggregate.strategy import DEFAULT_ASYNC_STRATEGY, Update, make_strategy
from ftrain.proto.ftrain.v1 import agent_pb2 as apb
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb
from ftrain.proto.ftrain.v1 import coordinator_pb2_grpc
from ftrain.rpc import CHUNK_BYTES, open_channel, token_metadata
from ftrain.snapshot.erasure import codec, shard_checksum, split_blob
from ftrain.snapshot.placement import effective_code, place_blobs
from ftrain.snapshot.transfer import AgentPool
from ftrain.textfmt import natural_key

log = logging.getLogger("ftrain.aggregate")

MANIFEST_BLOB = "aggregator-manifest"
SNAPSHOT_FORMAT = 1
MAX_VECTOR_BYTES = 16 * 1024 * 1024 * 1024
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Aggregator"].full_name

__all__ = ["AggregatorService", "StateProtector", "Hooks", "host_on_coordinator", "aggregator_status",
           "build_strategy", "check_strategy_spec", "MANIFEST_BLOB"]


# --------------------------------------------------------------------------------------------
# strategies and vectors
# --------------------------------------------------------------------------------------------


def build_strategy(spec: str, num_workers: int) -> Any:
    """``make_strategy(spec or DEFAULT_ASYNC_STRATEGY, num_workers=N)``; a user class that takes no
    ``num_workers`` is built without it."""
    spec = spec or DEFAULT_ASYNC_STRATEGY
    try:
        return make_strategy(spec, num_workers=num_workers)
    except TypeError as error:
        if "num_workers" not in str(error):
            raise
        return make_strategy(spec)


def check_strategy_spec(spec: str) -> str:
    """Validates ``--strategy`` up front (name or importable ``module:Class``); returns it."""
    from ftrain.aggregate.strategy import BUILTIN_STRATEGIES, import_target

    spec = (spec or DEFAULT_ASYNC_STRATEGY).strip()
    if ":" in spec:
        import_target(spec)  # ValueError names the module / attribute
    elif spec.lower() not in BUILTIN_STRATEGIES:
        raise ValueError(f"unknown aggregation strategy {spec!r}; known: {', '.join(sorted(BUILTIN_STRATEGIES))}; "
                         "or give an import path 'package.module:ClassName'")
    return spec


class _Assembler:
    """Reassembles a chunked vector; checks bounds, order-independence and the CRC."""

    def __init__(self) -> None:
        self.buffer: bytearray | None = None
        self.crc = 0
        self.chunks = 0
        self.received = 0

    def add(self, chunk: Any) -> str:
        if self.buffer is None:
            if chunk.total_len > MAX_VECTOR_BYTES or chunk.total_len % 4:
                return f"vector of {chunk.total_len} bytes is not a float32 vector within the limit"
            self.buffer = bytearray(chunk.total_len)
            self.crc = chunk.crc32
        end = chunk.offset + len(chunk.data)
        if end > len(self.buffer):
            return f"chunk at offset {chunk.offset} (+{len(chunk.data)}) overruns the vector ({len(self.buffer)} bytes)"
        self.buffer[chunk.offset:end] = chunk.data
        self.chunks += 1
        self.received += len(chunk.data)
        return ""

    def tensor(self) -> tuple[torch.Tensor | None, str]:
        if self.buffer is None:
            return None, "empty stream"
        if self.received != len(self.buffer):
            return None, f"received {self.received} of {len(self.buffer)} bytes"
        if (shard_checksum(self.buffer) if self.buffer else 0) != self.crc:
            return None, "vector arrived corrupted (crc mismatch)"
        if not self.buffer:
            return torch.empty(0, dtype=torch.float32), ""
        return torch.frombuffer(self.buffer, dtype=torch.float32), ""


# --------------------------------------------------------------------------------------------
# state protection: erasure-coded snapshots on the agents
# --------------------------------------------------------------------------------------------


class _TrackingPool(AgentPool):
    """An AgentPool that remembers which agents refused a shard (left out for a while)."""

    def __init__(self, token: str, job_id: str) -> None:
        super().__init__(token, job_id)
        self.failed: dict[str, float] = {}

    def put_shard(self, address: str, *args: Any, **kwargs: Any) -> None:
        try:
            super().put_shard(address, *args, **kwargs)
        except (grpc.RpcError, OSError):  # gRPC or shard data plane
            self.failed[address] = time.monotonic()
            raise


@dataclass
class _Pending:
    seq: int
    version: int
    state: dict


class StateProtector:
    """Ships aggregator snapshots to the agents (RS-coded) and restores the newest one.

    ``agents()`` returns the live agents as (node_id, address).  ``submit`` hands over a state
    (its tensors already copies); a background thread serialises, codes and ships the newest
    submitted state (older unshipped ones are skipped), retrying around agents that fail.
    """

    def __init__(self, job_id: str, token: str, agents: Callable[[], Sequence[tuple[str, str]]],
                 ec_k: int = 4, ec_m: int = 2, put_timeout_s: float = 10.0, attempts: int = 3) -> None:
        self.job_id = job_id
        self.agents = agents
        self.ec_k, self.ec_m = ec_k, ec_m
        self.put_timeout_s = put_timeout_s
        self.attempts = attempts
        self.pool = _TrackingPool(token, job_id)
        self.cond = threading.Condition()
        self._pending: _Pending | None = None
        self._busy = False
        self._thread: threading.Thread | None = None
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ftrain-agg-shard")
        self.slot = 0
        self.submitted_seq = 0     # tickets: every submit gets the next one
        self.stored_seq = 0        # newest ticket stored (a stored snapshot covers every older ticket)
        self.failed_seq = 0
        self.submitted_version = -1
        self.stored_version = -1
        self.stored = 0
        self.failures = 0
        self.last_error = ""
        self.last_code: tuple[int, int] = (0, 0)
        self.last_nodes: list[str] = []
        self.last_bytes = 0
        self.last_duration_s = 0.0
        self.disabled_reason = ""
        self._closed = False

    # -- shipping ------------------------------------------------------------------------------
    def submit(self, version: int, state: dict) -> int:
        """Queues a snapshot (replacing an older unshipped one); returns its ticket."""
        with self.cond:
            self.submitted_seq += 1
            self._pending = _Pending(self.submitted_seq, version, state)
            self.submitted_version = version
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ftrain-agg-snapshot", daemon=True)
                self._thread.start()
            self.cond.notify_all()
            return self.submitted_seq

    def wait_stored(self, ticket: int, timeout: float) -> bool:
        """Until snapshot ``ticket`` (or a newer one) is stored. False: it failed / timed out."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.stored_seq < ticket:
                if self.failed_seq >= ticket and self._pending is None and not self._busy:
                    return False
                if self.disabled_reason:
                    return True  # nothing to protect with: no agents (single-process / no-agent setups)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self.cond.wait(min(remaining, 0.5))
            return True

    def _run(self) -> None:
        while True:
            with self.cond:
                while self._pending is None and not self._closed:
                    self.cond.wait(1.0)
                if self._closed:
                    return
                job, self._pending = self._pending, None
                assert job is not None  # the wait above ends on a pending job or on close
                self._busy = True
            error = ""
            started = time.monotonic()
            try:
                error = self._ship(job)
            except Exception as exc:  # never let the thread die
                error = f"{type(exc).__name__}: {exc}"
            with self.cond:
                self._busy = False
                if error:
                    self.failures += 1
                    self.last_error = error
                    self.failed_seq = max(self.failed_seq, job.seq)
                    log.warning("aggregator snapshot of version %d not stored: %s", job.version, error)
                else:
                    self.stored_seq = max(self.stored_seq, job.seq)
                    self.stored_version = job.version
                    self.stored += 1
                    self.last_duration_s = time.monotonic() - started
                self.cond.notify_all()

    def _live(self) -> list[tuple[str, str]]:
        now = time.monotonic()
        return [(node, address) for node, address in self.agents()
                if address and now - self.pool.failed.get(address, -1e9) > 30.0]

    def _ship(self, job: _Pending) -> str:
        buffer = io.BytesIO()
        torch.save({"format": SNAPSHOT_FORMAT, "job_id": self.job_id, **job.state}, buffer)
        blob = np.frombuffer(buffer.getbuffer(), dtype=np.uint8)
        size = len(blob)
        crc = shard_checksum(blob)
        error = "no agents"
        for _attempt in range(self.attempts):
            live = self._live()
            if not live:
                if not list(self.agents()):
                    with self.cond:
                        self.disabled_reason = "no agents to hold aggregator snapshots"
                    return ""
                error = "every agent refused a shard recently"
                time.sleep(0.2)
                continue
            nodes = [node for node, _ in live]
            address = dict(live)
            k, m = effective_code(self.ec_k, self.ec_m, len(nodes) + 1)  # the aggregator is no agent
            row = place_blobs(["aggregator"], nodes, k, m)[0]
            data = split_blob(blob, k)
            shards = [data[i] for i in range(k)]
            if m:
                parity = codec(k, m).encode(data)
                shards += [parity[i] for i in range(m)]
            crcs = [shard_checksum(np.ascontiguousarray(s)) for s in shards]
            blob_id = f"aggregator-{self.slot}"
            problems = self.pool.put_shards(self._io, [(node, address[node]) for node in row], blob_id, job.version,
                                            shards, crcs, timeout=self.put_timeout_s)
            if problems:
                error = "shard transfer failed on " + ", ".join(map(str, problems))
                continue
            manifest = json.dumps({
                "format": SNAPSHOT_FORMAT, "job_id": self.job_id, "version": job.version,
                "incarnation": job.state.get("runtime", {}).get("incarnation", ""), "slot": self.slot,
                "blob_id": blob_id, "size": size, "crc32": crc, "k": k, "m": m, "shard_len": int(data.shape[1]),
                "shards": [[i, node, address[node], crcs[i]] for i, node in enumerate(row)], "time": time.time(),
            }).encode()
            manifest_crc = shard_checksum(manifest)
            targets = [(node, address[node]) for node in nodes]
            futures = [self._io.submit(self.pool.put_shard, addr, MANIFEST_BLOB, 0, job.version,
                                       np.frombuffer(manifest, dtype=np.uint8), manifest_crc, timeout=self.put_timeout_s)
                       for _node, addr in targets]
            missing = []
            for future, (node, _addr) in zip(futures, targets):
                try:
                    future.result()
                except (grpc.RpcError, OSError):
                    missing.append(node)
            if any(node in row for node in missing):  # every shard holder must also hold the manifest
                error = f"manifest not stored on {missing}"
                continue
            self.slot = 1 - self.slot
            self.last_code, self.last_nodes, self.last_bytes = (k, m), list(row), size
            return ""
        return error

    # -- restore -------------------------------------------------------------------------------
    def _manifest(self, address: str) -> dict | None:
        stub = self.pool.stub(address)
        buffer = bytearray()
        crc = None
        for chunk in stub.GetShard(apb.GetShardRequest(job_id=self.job_id, blob_id=MANIFEST_BLOB, index=0),
                                   timeout=5.0, metadata=self.pool.metadata):
            buffer += chunk.data
            crc = chunk.crc32
        if crc is None or shard_checksum(buffer) != crc:
            return None
        manifest = json.loads(bytes(buffer))
        return manifest if manifest.get("job_id") == self.job_id else None

    def find_manifests(self) -> list[dict]:
        """The aggregator manifests the live agents hold, newest first."""
        found = []
        for _node, address in list(self.agents()):
            try:
                manifest = self._manifest(address)
            except (grpc.RpcError, ValueError):  # unreachable agent, none stored, garbage
                continue
            if manifest is not None:
                found.append(manifest)
        found.sort(key=lambda m: (m["version"], m["time"]), reverse=True)
        return found

    def restore(self) -> tuple[dict, dict] | None:
        """(state, manifest) of the newest snapshot any k good shards decode, or None if none."""
        from ftrain.snapshot.capture import SnapshotEngine
        from ftrain.snapshot.rebuild import SnapshotLost

        manifests = self.find_manifests()
        if not manifests:
            return None
        engine = SnapshotEngine(self.job_id, "aggregator", "aggregator", self.pool, None)
        seen: set[tuple[int, str, float]] = set()
        try:
            for manifest in manifests:
                key = (manifest["version"], manifest["blob_id"], manifest["time"])
                if key in seen:
                    continue
                seen.add(key)
                info = pb.BlobInfo(blob_id=manifest["blob_id"], step=manifest["version"], producer_trainer="aggregator",
                                   size=manifest["size"], k=manifest["k"], m=manifest["m"],
                                   shard_len=manifest["shard_len"], crc32=manifest["crc32"],
                                   shards=[pb.ShardLocation(index=i, node_id=node, address=addr, crc32=c)
                                           for i, node, addr, c in manifest["shards"]])
                try:
                    blob = engine.fetch(info)
                    state = torch.load(io.BytesIO(blob.tobytes()), weights_only=True)
                except (SnapshotLost, RuntimeError, ValueError, EOFError) as exc:
                    self.last_error = f"snapshot of version {manifest['version']} unreadable: {exc}"
                    log.warning("%s", self.last_error)
                    continue
                if state.get("format") != SNAPSHOT_FORMAT or state.get("job_id") != self.job_id:
                    continue
                with self.cond:
                    self.slot = 1 - int(manifest["slot"])  # never overwrite the snapshot just restored
                    self.stored_version = max(self.stored_version, int(manifest["version"]))
                return state, manifest
        finally:
            engine.close()
        return None

    def summary(self) -> dict[str, Any]:
        with self.cond:
            return {"stored_version": self.stored_version, "submitted_version": self.submitted_version,
                    "stored": self.stored, "failures": self.failures, "last_error": self.last_error[:300],
                    "ec": f"{self.last_code[0]}+{self.last_code[1]}", "nodes": list(self.last_nodes),
                    "bytes": self.last_bytes, "duration_s": round(self.last_duration_s, 4),
                    "disabled": self.disabled_reason}

    def close(self) -> None:
        with self.cond:
            self._closed = True
            self.cond.notify_all()
        self._io.shutdown(wait=False, cancel_futures=True)
        self.pool.close()


# --------------------------------------------------------------------------------------------
# the service
# --------------------------------------------------------------------------------------------


@dataclass
class Hooks:
    """What the host (the coordinator) wants to hear; every hook is called without the lock."""

    progress: Callable[[int, int, int, int, float], None] | None = None  # rank, generation, step, steps, compute_s
    event: Callable[..., None] | None = None                             # kind, message, **extra
    fail: Callable[[str], None] | None = None                            # the job cannot go on
    restarted: Callable[[], bool] | None = None                          # host restarted: state must be restored


class AggregatorService(coordinator_pb2_grpc.AggregatorServicer):
    """Strategy + lock + records + protection, served over gRPC (see the module docstring)."""

    def __init__(self, job_id: str, token: str, strategy: str = "", *, num_workers: int | None = None,
                 agents: Callable[[], Sequence[tuple[str, str]]] | None = None, ec_k: int = 4, ec_m: int = 2,
                 snapshot_every: int = 1, metrics: Any = None, hooks: Hooks | None = None,
                 chunk_bytes: int = CHUNK_BYTES, protect_timeout_s: float = 30.0,
                 restore_timeout_s: float = 60.0) -> None:
        self.job_id = job_id
        self.spec = strategy or DEFAULT_ASYNC_STRATEGY
        self.num_workers = num_workers
        self.snapshot_every = max(1, int(snapshot_every))
        self.metrics = metrics
        self.hooks = hooks or Hooks()
        self.chunk_bytes = chunk_bytes
        self.protect_timeout_s = protect_timeout_s
        self.restore_timeout_s = restore_timeout_s
        self.protector = StateProtector(job_id, token, agents or (lambda: []), ec_k, ec_m)
        self.incarnation = secrets.token_hex(6)
        self.lock = threading.Condition()
        self.strategy: Any = None
        self.initialized = False
        self.done = False
        self.budget = 0
        self.steps_accepted = 0
        self.progress: dict[str, dict[str, Any]] = {}
        # one per update fed to the strategy: (seq, worker, rank, generation, base version, staleness,
        # version after, applied, worker's local step after it)
        self.records: list[tuple] = []
        self.received = self.applied = self.ignored = self.refused = 0  # job totals (restored with the state)
        self.applied_here = 0  # applied by this incarnation: what `records` and the metric cover
        self.chunks_in = self.chunks_out = 0
        self.restored_from: int | None = None
        self._captured = 0            # ticket of the newest snapshot handed to the protector
        self._restoring = False
        self._restore_checked = False
        self._restore_required_since: float | None = None
        self._model_cache: tuple[int, bytes, int] | None = None  # (version, bytes, crc)

    # -- helpers -----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.strategy.version if self.initialized else -1

    def _event(self, kind: str, message: str, **extra: Any) -> None:
        log.info("%s: %s", kind, message)
        if self.hooks.event is not None:
            try:
                self.hooks.event(kind, message, **extra)
            except Exception:  # observability must never break aggregation
                log.exception("aggregator event hook failed")

    def _runtime_state(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation, "spec": self.spec, "num_workers": self.num_workers,
                "budget": self.budget, "steps_accepted": self.steps_accepted, "done": self.done,
                "progress": {k: dict(v) for k, v in self.progress.items()}, "applied": self.applied,
                "ignored": self.ignored, "received": self.received}

    def _capture_locked(self) -> None:
        """Hands a copy of the state to the protector (call with the lock held)."""
        state = {"strategy": self.strategy.state_dict(), "runtime": self._runtime_state()}
        self._captured = self.protector.submit(self.strategy.version, state)

    def _load_locked(self, state: dict, manifest: dict) -> None:
        runtime = state["runtime"]
        self.spec = runtime["spec"]
        self.num_workers = runtime["num_workers"]
        strategy = build_strategy(self.spec, int(self.num_workers or 1))
        strategy.load_state_dict(state["strategy"])
        self.strategy = strategy
        self.budget = int(runtime["budget"])
        self.steps_accepted = int(runtime["steps_accepted"])
        self.done = bool(runtime["done"])
        self.progress = {k: dict(v) for k, v in runtime["progress"].items()}
        self.applied, self.ignored = int(runtime["applied"]), int(runtime["ignored"])
        self.received = int(runtime["received"])
        self.initialized = True
        self.restored_from = strategy.version
        self._model_cache = None

    def _ensure_strategy_locked(self, world_size: int) -> None:
        if self.strategy is None:
            self.num_workers = self.num_workers or max(1, int(world_size))
            self.strategy = build_strategy(self.spec, self.num_workers)

    def _try_restore(self, known_version: int) -> None:
        """Before the first init: a snapshot on the agents wins over a fresh start."""
        with self.lock:
            if self.initialized or self._restoring or self._restore_checked:
                return
            self._restoring = True
        result = None
        try:
            result = self.protector.restore()
        except Exception as exc:
            log.warning("aggregator restore failed: %s", exc)
        restarted = known_version >= 0
        if not restarted and self.hooks.restarted is not None:
            try:
                restarted = bool(self.hooks.restarted())
            except Exception:
                restarted = False
        failure = ""
        with self.lock:
            self._restoring = False
            if result is not None and not self.initialized:
                state, manifest = result
                self._load_locked(state, manifest)
                message = (f"aggregator restored version {self.strategy.version} ({self.spec}) from the agents' shards "
                           f"(incarnation {self.incarnation}, snapshot by incarnation {manifest.get('incarnation')})")
                self._restore_checked = True
                self.lock.notify_all()
            elif restarted and not self.initialized:
                # workers held a model: its state must come back, never a silent fresh start
                now = time.monotonic()
                self._restore_required_since = self._restore_required_since or now
                message = ""
                if now - self._restore_required_since > self.restore_timeout_s:
                    failure = (f"aggregator state lost: no decodable snapshot on the live agents after "
                               f"{self.restore_timeout_s:.0f} s ({self.protector.last_error or 'no manifest found'})")
            else:
                self._restore_checked = True
                message = ""
        if result is not None and message:
            self._event("aggregator-restored", message, version=self.restored_from)
        if failure:
            self._event("aggregator-lost", failure)
            if self.hooks.fail is not None:
                self.hooks.fail(failure)

    # -- RPCs --------------------------------------------------------------------------------
    def Hello(self, request: pb.AggregatorHello, context: grpc.ServicerContext) -> pb.AggregatorWelcome:
        self._try_restore(request.known_version)
        with self.lock:
            if self._restoring or (not self.initialized and not self._restore_checked):
                return pb.AggregatorWelcome(status=pb.WELCOME_STATUS_RESTORING, incarnation=self.incarnation,
                                            message="the aggregator is restoring its state from the agents")
            self._ensure_strategy_locked(request.world_size)
            if self.budget <= 0 and request.total_steps > 0:
                self.budget = int(request.total_steps) * max(1, int(request.world_size))
            record = self.progress.get(request.worker_id)
            return pb.AggregatorWelcome(
                status=pb.WELCOME_STATUS_OK if self.initialized else pb.WELCOME_STATUS_INIT, incarnation=self.incarnation, version=self.version,
                done=self.done, synchronous=bool(getattr(self.strategy, "synchronous", False)),
                strategy=repr(self.strategy), resume_step=int(record["step"]) if record else -1,
                resume_json=record["resume"] if record else "",
                resume_world_size=int(record["world_size"]) if record else 0,
                budget=self.budget, steps_accepted=self.steps_accepted)

    def _receive(self, request_iterator: Iterator[pb.UpdateChunk], context: grpc.ServicerContext
                 ) -> tuple[pb.UpdateChunk, torch.Tensor]:
        assembler = _Assembler()
        header: pb.UpdateChunk | None = None
        for chunk in request_iterator:
            if header is None:
                header = chunk
            problem = assembler.add(chunk)
            if problem:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        vector, problem = assembler.tensor()
        if header is None or vector is None or problem:
            context.abort(grpc.StatusCode.DATA_LOSS if "crc" in problem else grpc.StatusCode.INVALID_ARGUMENT,
                          problem or "empty push")
        with self.lock:
            self.chunks_in += assembler.chunks
        return header, vector  # type: ignore[return-value]

    def Push(self, request_iterator: Iterator[pb.UpdateChunk], context: grpc.ServicerContext) -> pb.PushReply:
        header, vector = self._receive(request_iterator, context)
        if header.init:
            return self._init(header, vector, context)
        deadline = time.monotonic() + self.protect_timeout_s
        while True:  # the previous snapshot must be stored before the version may move again
            with self.lock:
                target = self._captured
            if target and time.monotonic() < deadline:
                self.protector.wait_stored(target, max(0.0, deadline - time.monotonic()))
            with self.lock:
                if self._captured != target and time.monotonic() < deadline:
                    continue
                reply, after = self._apply_locked(header, vector, context)
                final = self._captured if reply.done and reply.status != pb.PUSH_STATUS_DONE else 0
                break
        if final:  # the final state is stored before the push that ended the job returns
            self.protector.wait_stored(final, self.protect_timeout_s)
        for call in after:
            call()
        return reply

    def _init(self, header: pb.UpdateChunk, vector: torch.Tensor, context: grpc.ServicerContext) -> pb.PushReply:
        with self.lock:
            if self.initialized:
                return pb.PushReply(status=pb.PUSH_STATUS_IGNORED, message="already initialized", incarnation=self.incarnation,
                                    version=self.version, done=self.done)
            if not self._restore_checked:
                return pb.PushReply(status=pb.PUSH_STATUS_REBASE, message="say Hello first", incarnation=self.incarnation,
                                    version=-1)
            self._ensure_strategy_locked(header.world_size)
            self.strategy.init(vector.clone())
            self.initialized = True
            self._model_cache = None
            self._capture_locked()
            self.lock.notify_all()
            reply = pb.PushReply(status=pb.PUSH_STATUS_APPLIED, incarnation=self.incarnation, version=self.version, done=self.done)
            message = (f"aggregator initialized: {self.strategy!r}, {vector.numel()} parameters from worker "
                       f"{header.worker_id}; budget {self.budget} local steps")
        self._event("aggregator-init", message)
        return reply

    def _apply_locked(self, h: pb.UpdateChunk, delta: torch.Tensor, context: grpc.ServicerContext
                      ) -> tuple[pb.PushReply, list[Callable[[], None]]]:
        inc = self.incarnation
        if not self.initialized or (h.incarnation and h.incarnation != inc) or h.base_version > self.version:
            self.refused += 1
            why = ("not initialized" if not self.initialized else
                   f"aggregator restarted (incarnation {inc}, update from {h.incarnation})"
                   if h.incarnation and h.incarnation != inc else
                   f"base version {h.base_version} is ahead of the current version {self.version}")
            return pb.PushReply(status=pb.PUSH_STATUS_REBASE, message=why, incarnation=inc, version=self.version,
                                done=self.done), []
        if self.done:
            self.refused += 1
            return pb.PushReply(status=pb.PUSH_STATUS_DONE, incarnation=inc, version=self.version, done=True), []
        model = self.strategy.model
        if delta.numel() != model.numel():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"update has {delta.numel()} elements, the global model {model.numel()}")
        update = Update(delta=delta, base_version=int(h.base_version), worker_id=h.worker_id,
                        num_samples=int(h.num_samples))
        tau = self.strategy.staleness(update)
        ignored_before = getattr(self.strategy, "ignored_stale", None)
        changed = bool(self.strategy.on_update(update))
        ignored = ignored_before is not None and getattr(self.strategy, "ignored_stale", ignored_before) > ignored_before
        applied = not ignored
        self.received += 1
        after: list[Callable[[], None]] = []
        if applied:
            self.applied += 1
            self.applied_here += 1
            self.steps_accepted += max(0, int(h.local_steps))
            self.progress[h.worker_id] = {"step": int(h.step), "resume": h.resume_json, "world_size": int(h.world_size),
                                          "rank": int(h.rank), "generation": int(h.generation)}
            if self.metrics is not None:
                self.metrics.update_staleness.observe(tau)
        else:
            self.ignored += 1
        self.records.append((self.received, h.worker_id, int(h.rank), int(h.generation), int(h.base_version), tau,
                             self.strategy.version, applied, int(h.step)))
        if self.budget > 0 and self.steps_accepted >= self.budget and not self.done:
            self.done = True
            staleness = [r[5] for r in self.records if r[7]]
            message = (f"budget of {self.budget} local steps reached at version {self.strategy.version}: "
                       f"{self.applied} updates applied, {self.ignored} ignored, mean staleness "
                       f"{(sum(staleness) / len(staleness)) if staleness else 0.0:.2f}")
            after.append(lambda: self._event("aggregator-done", message, version=self.strategy.version))
        if changed:
            self._model_cache = None
        if (changed and self.strategy.version % self.snapshot_every == 0) or self.done:
            self._capture_locked()
        self.lock.notify_all()
        progress = self.hooks.progress
        if progress is not None and applied:
            args = (int(h.rank), int(h.generation), int(h.step), int(h.local_steps), float(h.compute_time_s))
            after.append(lambda: self._safe(progress, *args))
        hold = bool(getattr(self.strategy, "synchronous", False)) and applied and not changed and not self.done
        return pb.PushReply(status=pb.PUSH_STATUS_APPLIED if applied else pb.PUSH_STATUS_IGNORED, incarnation=inc, version=self.strategy.version,
                            staleness=tau, hold=hold, done=self.done), after

    @staticmethod
    def _safe(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("aggregator hook failed")

    def _model_bytes_locked(self) -> tuple[int, bytes, int]:
        version = self.strategy.version
        if self._model_cache is None or self._model_cache[0] != version:
            data = self.strategy.model.detach().contiguous().numpy().tobytes()
            self._model_cache = (version, data, shard_checksum(data) if data else 0)
        return self._model_cache

    def Pull(self, request: pb.PullRequest, context: grpc.ServicerContext) -> Iterator[pb.ModelChunk]:
        deadline = time.monotonic() + min(max(request.wait_s, 0.0), 60.0)
        with self.lock:
            while True:
                if not self.initialized:
                    status = pb.MODEL_STATUS_UNINITIALIZED
                    break
                if self.done or self.version >= request.min_version:
                    status = pb.MODEL_STATUS_OK
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not context.is_active():
                    status = pb.MODEL_STATUS_WAIT
                    break
                self.lock.wait(min(remaining, 0.5))
            inc, done = self.incarnation, self.done
            version = self.version
            if status == pb.MODEL_STATUS_OK and request.have_version == version and request.incarnation in ("", inc):
                status = pb.MODEL_STATUS_UNCHANGED
            payload = self._model_bytes_locked() if status == pb.MODEL_STATUS_OK else None
        if payload is None:
            yield pb.ModelChunk(status=status, incarnation=inc, version=version, done=done)
            return
        _, data, crc = payload
        sent = 0
        view = memoryview(data)
        offset = 0
        while True:
            piece = bytes(view[offset:offset + self.chunk_bytes])
            if offset == 0:
                yield pb.ModelChunk(status=pb.MODEL_STATUS_OK, incarnation=inc, version=version, done=done, offset=0,
                                    total_len=len(data), crc32=crc, data=piece)
            else:
                yield pb.ModelChunk(offset=offset, total_len=len(data), data=piece)
            sent += 1
            offset += len(piece)
            if offset >= len(data):
                break
        with self.lock:
            self.chunks_out += sent

    def Status(self, request: pb.AggregatorStatusRequest, context: grpc.ServicerContext) -> pb.AggregatorStatusResponse:
        out = self.summary()
        if request.include_records:
            with self.lock:
                out["records"] = [list(r) for r in self.records]
        return pb.AggregatorStatusResponse(json=json.dumps(out))

    def summary(self) -> dict[str, Any]:
        with self.lock:
            applied = [r[5] for r in self.records if r[7]]
            histogram: dict[str, int] = {}
            for tau in applied:
                histogram[str(tau)] = histogram.get(str(tau), 0) + 1
            out = {
                "strategy": repr(self.strategy) if self.strategy is not None else self.spec,
                "incarnation": self.incarnation, "initialized": self.initialized, "version": self.version,
                "done": self.done, "budget": self.budget, "steps_accepted": self.steps_accepted,
                "updates_received": self.received, "updates_applied": self.applied,
                "updates_ignored": self.ignored, "updates_refused": self.refused,
                "updates_applied_this_incarnation": self.applied_here,
                "staleness_recorded": len(applied), "staleness_histogram": histogram,
                "mean_staleness": round(sum(applied) / len(applied), 4) if applied else 0.0,
                "max_staleness": max(applied) if applied else 0,
                "restored_from_version": self.restored_from, "chunks_in": self.chunks_in, "chunks_out": self.chunks_out,
                "workers": {k: {"step": v["step"], "rank": v["rank"], "generation": v["generation"]}
                            for k, v in sorted(self.progress.items())},
            }
        if self.metrics is not None:
            count = self.metrics.registry.get_sample_value("ftrain_update_staleness_count")
            out["staleness_metric_count"] = int(count or 0)
        out["snapshot"] = self.protector.summary()
        return out

    def close(self) -> None:
        self.protector.close()


# --------------------------------------------------------------------------------------------
# hosting
# --------------------------------------------------------------------------------------------


class CoordinatorLink(Protocol):
    """What the aggregator needs of the coordinator that hosts it (each call takes its lock)."""

    settings: Any  # ftrain.config.JobSettings
    metrics: Any  # ftrain.metrics.Metrics
    aggregator: "AggregatorService | None"

    def live_agents(self) -> list[tuple[str, str]]: ...
    def worker_progress(self, rank: int, generation: int, step: int, steps: int, compute_s: float) -> None: ...
    def event(self, kind: str, message: str, **extra: Any) -> None: ...
    def fail(self, message: str) -> None: ...
    def restarted(self) -> bool: ...


def host_on_coordinator(server: grpc.Server, coordinator: CoordinatorLink, token: str) -> AggregatorService:
    """Adds the aggregator to the coordinator's gRPC server (same port, same token check).

    Live agents come from the membership, applied updates feed the hang watchdog and the
    straggler detector (a worker's push is its step progress), events go to the job's event
    log, and an unrecoverable loss of the aggregator's state fails the job.
    """
    settings = coordinator.settings

    def agents() -> list[tuple[str, str]]:
        return sorted(coordinator.live_agents(), key=lambda agent: natural_key(agent[0]))

    service = AggregatorService(settings.job_id, token, settings.strategy, agents=agents, ec_k=settings.ec.k,
                                ec_m=settings.ec.m, snapshot_every=settings.snapshot_every,
                                metrics=coordinator.metrics,
                                hooks=Hooks(progress=coordinator.worker_progress, event=coordinator.event,
                                            fail=coordinator.fail, restarted=coordinator.restarted))
    coordinator_pb2_grpc.add_AggregatorServicer_to_server(service, server)
    coordinator.aggregator = service
    return service


def aggregator_status(address: str, token: str, include_records: bool = False, timeout: float = 10.0) -> dict:
    """The aggregator's status JSON (``include_records``: every update's staleness record)."""
    channel = open_channel(address)
    try:
        reply = coordinator_pb2_grpc.AggregatorStub(channel).Status(
            pb.AggregatorStatusRequest(include_records=include_records), timeout=timeout,
            metadata=token_metadata(token))
        return json.loads(reply.json)
    finally:
        channel.close()


def main(argv: Sequence[str] | None = None) -> int:
    """A stand-alone aggregator (no coordinator): for tests and for hosting it beside one.

    FTRAIN_TOKEN carries the job token; ``--agents`` lists the shard stores that hold its
    snapshots. Prints ``listening on HOST:PORT`` once serving."""
    from ftrain.config import ENV_TOKEN
    from ftrain.rpc import add_health_and_reflection, bind, make_server

    parser = argparse.ArgumentParser(prog="python -m ftrain.aggregate.server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--strategy", default="")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--agents", default="", help="comma-separated host:port of agent shard stores")
    parser.add_argument("--ec", default="4+2")
    parser.add_argument("--snapshot-every", type=int, default=1)
    args = parser.parse_args(argv)
    token = os.environ.get(ENV_TOKEN, "")
    if not token:
        print(f"set {ENV_TOKEN}", file=sys.stderr)
        return 2
    addresses = [a for a in args.agents.split(",") if a]
    k, _, m = args.ec.partition("+")
    service = AggregatorService(args.job_id, token, args.strategy, num_workers=args.num_workers,
                                agents=lambda: [(f"agent{i}", a) for i, a in enumerate(addresses)],
                                ec_k=int(k), ec_m=int(m or 0), snapshot_every=args.snapshot_every)
    server = make_server(token)
    coordinator_pb2_grpc.add_AggregatorServicer_to_server(service, server)
    add_health_and_reflection(server, [SERVICE_NAME])
    port = bind(server, args.host, args.port)
    server.start()
    print(f"listening on {args.host}:{port}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
