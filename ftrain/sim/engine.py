"""Discrete-event simulation of a large training job under three fault-tolerance policies.

Pure: no I/O, all randomness from a seeded ``numpy.random.Generator``.

The job
-------
``gpus`` GPUs on ``nodes = ceil(gpus / gpus_per_node)`` nodes, run for ``days``. Work is
counted in *job-seconds*: one second of the whole job training at nominal speed, so
goodput = useful job-seconds / wall seconds, and lost GPU-hours = (wall - useful) x gpus.

The trace (shared by every policy of one run: common random numbers)
--------------------------------------------------------------------
* node failures: Poisson, ``node_failures_per_1000_days`` per node;
* domain failures (optional): Poisson per domain of ``domain_nodes`` nodes, all its nodes at once;
* planned interruptions: periodic, ``planned_per_day``, random phase;
* slow-node episodes: Poisson per node, exponential duration, step time x ``slowdown``.
  Sync training runs at the slowest node's pace, so any active episode slows the whole job.

Policies (what each event costs)
--------------------------------
checkpoint-restart
    Blocking checkpoint of ``checkpoint_write_s`` after every ``tau`` of useful work (Daly's
    optimum unless set). A failure at any time (training, writing, restarting) loses the work
    since the last complete checkpoint and (re)starts a full restart of ``restart_time_s``.
    This is exactly Daly's model, so without planned/slow events it reproduces
    :func:`ftrain.sim.daly.goodput`. Slow nodes are never detected.
replica-heal (TorchFT-like)
    The job is ``nodes / replica_group_nodes`` replica groups. A failure stalls everyone for
    ``detection_s`` (the collective times out) and discards the step in flight; the failed
    group then heals for ``heal_time_s`` (replacement + restart + weights from a peer) while
    the others train at reduced capacity; nobody rolls back. If every group is down at once
    the job restarts from the last disk checkpoint. Periodic async disk checkpoints cost
    ``async_checkpoint_stall_s`` each. Slow nodes are never detected.
ftrain
    Every ``snapshot_every`` steps an in-memory snapshot stalls training ``snapshot_stall_s``;
    it is committed ``snapshot_commit_s`` later. A failure costs ``recovery_time_s`` of the
    whole job (detection + new generation + restore from peers) and the work since the last
    *committed* snapshot. Erasure coding: as in :mod:`ftrain.snapshot.placement`, node p's
    snapshot blob is coded RS(k, m) onto k+m *other* nodes, modelled as its k+m successors on
    a placement ring; p's EC group is {p} + those holders. When p and more than m of its
    holders (more than m+1 nodes of the group) fail within the vulnerability window
    (recovery + one snapshot interval + commit latency), p's state is undecodable and the job
    falls back to the last disk checkpoint (drained in the background every
    ``disk_checkpoint_interval_s``) plus a full restart. ``ec_placement=rack-aware`` orders
    the ring so that neighbours sit in different failure domains; ``packed`` does not. Slow nodes are detected after ``straggler_detect_s`` and evicted
    (a planned recovery without rollback). ``ftrain_replacement=shrink`` continues without the
    failed replica until a replacement arrives, then grows (a planned recovery).

All policies: a planned interruption is a blocking checkpoint (``checkpoint_write_s``)
followed by a full restart (``restart_time_s``), without lost work.

Loss causes (job-seconds; they and the useful work sum to the wall time)
-------------------------------------------------------------------------
``rework`` (work rolled back and recomputed), ``restart`` (job-wide downtime after failures:
restarts, recoveries, detection stalls), ``checkpoint`` (checkpoint writes, snapshot and
async-checkpoint stalls), ``planned`` (planned interruptions), ``slow`` (running at a slow
node's pace, evictions), ``degraded`` (capacity missing while a group heals or the job is
shrunk).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import daly
from .params import POLICIES, Resolved

DAY = 86400.0
CAUSES = ("rework", "restart", "checkpoint", "planned", "slow", "degraded")
COUNTERS = ("failures", "node_failures", "domain_failures", "planned", "slow_episodes",
            "checkpoints", "full_restarts", "recoveries", "heals", "fallbacks", "evictions",
            "grows")

# Event kinds of the external trace, in tie-breaking order.
_FAIL, _PLANNED, _SLOW = 0, 1, 2


@dataclass(frozen=True)
class Job:
    gpus: int
    gpus_per_node: int = 8
    days: float = 30.0

    def __post_init__(self) -> None:
        if int(self.gpus) != self.gpus or self.gpus < 1:
            raise ValueError(f"gpus must be a positive integer, got {self.gpus!r}")
        if int(self.gpus_per_node) != self.gpus_per_node or self.gpus_per_node < 1:
            raise ValueError(f"gpus_per_node must be a positive integer, got {self.gpus_per_node!r}")
        if not (self.days > 0 and math.isfinite(self.days)):
            raise ValueError(f"days must be > 0, got {self.days!r}")

    @property
    def nodes(self) -> int:
        return -(-self.gpus // self.gpus_per_node)

    @property
    def horizon_s(self) -> float:
        return self.days * DAY


def failure_rate_per_s(job: Job, p: Resolved) -> float:
    """Unplanned job-level failure events per second (node + domain failures)."""
    node = job.nodes * p["node_failures_per_1000_days"] / 1000.0 / DAY
    domains = -(-job.nodes // p["domain_nodes"])
    dom = domains * p["domain_failures_per_1000_days"] / 1000.0 / DAY
    return node + dom


def job_mtbf_s(job: Job, p: Resolved) -> float:
    lam = failure_rate_per_s(job, p)
    return math.inf if lam == 0 else 1.0 / lam


def checkpoint_interval(job: Job, p: Resolved) -> float:
    """The checkpoint-restart interval in use: the flag, else Daly's optimum."""
    if p["checkpoint_interval_s"] is not None:
        return float(p["checkpoint_interval_s"])
    M = job_mtbf_s(job, p)
    if M == math.inf:
        return job.horizon_s
    tau = daly.daly_interval(p["checkpoint_write_s"], M)
    return max(tau, p["step_time_s"])


# --------------------------------------------------------------------------------------------
# trace


@dataclass
class Trace:
    """External events, sorted: (time, kind, payload)."""

    events: list[tuple[float, int, Any]]
    horizon: float


def make_trace(job: Job, p: Resolved, rng: np.random.Generator) -> Trace:
    T = job.horizon_s
    n = job.nodes
    ev: list[tuple[float, int, Any]] = []

    def poisson_times(rate_per_s: float) -> np.ndarray:
        if rate_per_s <= 0:
            return np.empty(0)
        k = rng.poisson(rate_per_s * T)
        return np.sort(rng.uniform(0.0, T, size=k))

    # node failures: payload (nodes tuple, u) with u ~ U(0,1) the fraction of the step in flight
    t = poisson_times(n * p["node_failures_per_1000_days"] / 1000.0 / DAY)
    nodes = rng.integers(0, n, size=t.size)
    u = rng.uniform(size=t.size)
    ev.extend((float(a), _FAIL, ((int(b),), float(c), "node")) for a, b, c in zip(t, nodes, u))

    dn = p["domain_nodes"]
    n_dom = -(-n // dn)
    t = poisson_times(n_dom * p["domain_failures_per_1000_days"] / 1000.0 / DAY)
    doms = rng.integers(0, n_dom, size=t.size)
    u = rng.uniform(size=t.size)
    for a, d, c in zip(t, doms, u):
        members = tuple(range(int(d) * dn, min((int(d) + 1) * dn, n)))
        ev.append((float(a), _FAIL, (members, float(c), "domain")))

    if p["planned_per_day"] > 0:
        period = DAY / p["planned_per_day"]
        offset = rng.uniform(0.0, period)
        for a in np.arange(offset, T, period):
            ev.append((float(a), _PLANNED, None))

    t = poisson_times(n * p["slow_per_1000_node_days"] / 1000.0 / DAY)
    durs = rng.exponential(p["slow_duration_s"], size=t.size)
    snodes = rng.integers(0, n, size=t.size)
    ev.extend((float(a), _SLOW, (i, float(d), int(s)))
              for i, (a, d, s) in enumerate(zip(t, durs, snodes)))

    ev.sort(key=lambda e: (e[0], e[1]))
    return Trace(ev, T)


# --------------------------------------------------------------------------------------------
# policies


class _Policy:
    """Shared machinery: phases, accounting, slow episodes, the planned-interruption path."""

    name = ""

    def __init__(self, job: Job, p: Resolved) -> None:
        self.job = job
        self.p = p
        self.t = 0.0
        self.training = True
        self.pause_end = 0.0
        self.pause_kind = "restart"  # loss cause the pause is booked to
        self.pause_tag = ""  # what happens when it ends
        self.loss = dict.fromkeys(CAUSES, 0.0)
        self.count = dict.fromkeys(COUNTERS, 0)
        self.work = 0.0  # useful job-seconds that are not (yet) rolled back
        self.slow: dict[int, float] = {}  # active episode id -> end time
        self.slowdown = float(p["slowdown"])
        self.capacity = 1.0
        self.eff = 1.0
        self.planned_waiting = False

    # -- rates and accounting --------------------------------------------------------------
    def speed(self) -> float:
        return 1.0 / self.slowdown if self.slow else 1.0

    def rate(self) -> float:
        return self.capacity * self.speed() * self.eff

    def advance(self, t1: float) -> None:
        dt = t1 - self.t
        if dt <= 0.0:
            return
        if not self.training:
            self.loss[self.pause_kind] += dt
        else:
            cap, sp, eff = self.capacity, self.speed(), self.eff
            self.loss["degraded"] += (1.0 - cap) * dt
            self.loss["slow"] += cap * (1.0 - sp) * dt
            self.loss["checkpoint"] += cap * sp * (1.0 - eff) * dt
            self.progress(cap * sp * eff * dt)
        self.t = t1

    def progress(self, w: float) -> None:
        self.work += w

    def rollback(self, w: float) -> None:
        w = min(max(w, 0.0), self.work)
        self.work -= w
        self.loss["rework"] += w

    def pause(self, duration: float, kind: str, tag: str) -> None:
        self.training = False
        self.pause_end = self.t + duration
        self.pause_kind = kind
        self.pause_tag = tag

    # -- timers ----------------------------------------------------------------------------
    def timers(self) -> list[tuple[float, Callable[[], None]]]:
        """(time, handler) of every internal event that may come next."""
        out: list[tuple[float, Callable[[], None]]] = []
        if not self.training:
            out.append((self.pause_end, self._end_pause))
        if self.slow:
            eid = min(self.slow, key=self.slow.__getitem__)
            out.append((self.slow[eid], lambda: self._slow_end(eid)))
        return out

    def fast_forward(self, t_limit: float) -> None:
        """Optionally jump over many identical internal cycles that end before ``t_limit``."""

    def _end_pause(self) -> None:
        tag = self.pause_tag
        self.training = True
        self.end_pause(tag)
        if self.training and self.planned_waiting:
            self.planned_waiting = False
            self.start_planned()

    def end_pause(self, tag: str) -> None:
        if tag == "ckpt-planned":
            self.planned_checkpoint_done()
            self.pause(self.p["restart_time_s"], "planned", "restart")

    def _slow_end(self, eid: int) -> None:
        del self.slow[eid]

    # -- external events -------------------------------------------------------------------
    def on_slow(self, eid: int, duration: float, node: int) -> None:
        self.count["slow_episodes"] += 1
        self.slow[eid] = self.t + duration

    def on_planned(self) -> None:
        self.count["planned"] += 1
        if not self.training and self.pause_tag == "restart":
            return  # the job is down anyway; maintenance rides along
        if self.training:
            self.start_planned()
        else:
            self.planned_waiting = True

    def start_planned(self) -> None:
        self.pause(self.p["checkpoint_write_s"], "planned", "ckpt-planned")

    def planned_checkpoint_done(self) -> None:
        pass

    def on_failure(self, nodes: tuple[int, ...], u: float, kind: str) -> None:
        self.count["failures"] += 1
        self.count["node_failures" if kind == "node" else "domain_failures"] += 1
        self.fail(nodes, u)

    def fail(self, nodes: tuple[int, ...], u: float) -> None:
        raise NotImplementedError

    def restart_again(self) -> bool:
        """A failure during a full restart restarts it (Daly's model). True if handled."""
        if not self.training and self.pause_tag == "restart":
            self.pause(self.p["restart_time_s"], "restart", "restart")
            return True
        return False


class CheckpointRestart(_Policy):
    name = "checkpoint-restart"

    def __init__(self, job: Job, p: Resolved) -> None:
        super().__init__(job, p)
        self.tau = checkpoint_interval(job, p)
        self.C = float(p["checkpoint_write_s"])
        self.R = float(p["restart_time_s"])
        self.pending = 0.0  # work since the last complete checkpoint

    def progress(self, w: float) -> None:
        self.work += w
        self.pending += w

    def timers(self):
        out = super().timers()
        if self.training:
            r = self.rate()
            if r > 0:
                out.append((self.t + max(self.tau - self.pending, 0.0) / r, self._segment_done))
        return out

    def fast_forward(self, t_limit: float) -> None:
        # Right after a checkpoint/restart, with nothing else scheduled before t_limit, whole
        # (tau of work + C of writing) cycles are identical: account for them in one go.
        if not self.training or self.pending > 0.0 or self.planned_waiting:
            return
        r = self.rate()
        if r <= 0:
            return
        if self.slow:
            t_limit = min(t_limit, min(self.slow.values()))
        cycle = self.tau / r + self.C
        n = math.floor((t_limit - self.t) / cycle) - 1
        if n < 1:
            return
        self.advance(self.t + n * self.tau / r)
        self.pending = 0.0
        self.loss["checkpoint"] += n * self.C
        self.t += n * self.C
        self.count["checkpoints"] += n

    def _segment_done(self) -> None:
        self.pause(self.C, "checkpoint", "ckpt")

    def end_pause(self, tag: str) -> None:
        if tag == "ckpt":
            self.pending = 0.0
            self.count["checkpoints"] += 1
        elif tag == "ckpt-planned":
            self.pending = 0.0
            self.count["checkpoints"] += 1
            self.pause(self.R, "planned", "restart")

    def start_planned(self) -> None:
        if not self.training and self.pause_tag == "ckpt":
            self.pause_tag = "ckpt-planned"  # the checkpoint being written will do
            return
        super().start_planned()

    def on_planned(self) -> None:
        if not self.training and self.pause_tag == "ckpt":
            self.count["planned"] += 1
            self.pause_tag = "ckpt-planned"
            return
        super().on_planned()

    def fail(self, nodes, u) -> None:
        self.rollback(self.pending)
        self.pending = 0.0
        self.planned_waiting = False
        self.count["full_restarts"] += 1
        self.pause(self.R, "restart", "restart")


class ReplicaHeal(_Policy):
    name = "replica-heal"

    def __init__(self, job: Job, p: Resolved) -> None:
        super().__init__(job, p)
        self.group_nodes = int(p["replica_group_nodes"])
        self.groups = max(1, job.nodes // self.group_nodes)
        self.healing: dict[int, float] = {}
        self.disk = 0.0  # work at the last disk checkpoint
        self.interval = float(p["disk_checkpoint_interval_s"])
        self.eff = max(0.0, 1.0 - p["async_checkpoint_stall_s"] / self.interval)
        self.next_disk = self.interval

    def _set_capacity(self) -> None:
        self.capacity = 1.0 - len(self.healing) / self.groups

    def timers(self):
        out = super().timers()
        if self.healing:
            g = min(self.healing, key=self.healing.__getitem__)
            out.append((self.healing[g], lambda g=g: self._healed(g)))
        out.append((self.next_disk, self._disk_checkpoint))
        return out

    def _healed(self, g: int) -> None:
        del self.healing[g]
        self._set_capacity()

    def _disk_checkpoint(self) -> None:
        if self.training:
            self.disk = self.work
        self.next_disk = self.t + self.interval

    def planned_checkpoint_done(self) -> None:
        self.disk = self.work
        self.healing.clear()
        self._set_capacity()

    def fail(self, nodes, u) -> None:
        if self.restart_again():
            return
        if not self.training and self.pause_tag == "ckpt-planned":
            return  # healthy replicas finish the final checkpoint; the restart replaces the node
        groups = {min(n // self.group_nodes, self.groups - 1) for n in nodes}
        lost_step = u * self.p["step_time_s"] * self.rate() if self.training else 0.0
        for g in groups:
            if g not in self.healing:
                self.count["heals"] += 1
            self.healing[g] = self.t + self.p["heal_time_s"]
        if len(self.healing) >= self.groups:
            # no healthy replica left to heal from: restart from the last disk checkpoint
            self.count["fallbacks"] += 1
            self.count["full_restarts"] += 1
            self.rollback(self.work - self.disk)
            self.healing.clear()
            self._set_capacity()
            self.planned_waiting = False
            self.pause(self.p["restart_time_s"], "restart", "restart")
            return
        self._set_capacity()
        self.rollback(lost_step)
        if self.training:
            self.pause(self.p["detection_s"], "restart", "detect")
        else:
            self.pause_end = max(self.pause_end, self.t + self.p["detection_s"])


class FTrain(_Policy):
    name = "ftrain"

    def __init__(self, job: Job, p: Resolved) -> None:
        super().__init__(job, p)
        step = float(p["step_time_s"])
        self.K = p["snapshot_every"] * step  # work between snapshots
        self.commit = float(p["snapshot_commit_s"])
        self.interval = float(p["disk_checkpoint_interval_s"])
        self.eff = (step / (step + p["snapshot_stall_s"] / p["snapshot_every"])) * max(
            0.0, 1.0 - p["ftrain_disk_stall_s"] / self.interval)
        self.recovery = float(p["recovery_time_s"])
        self.planned_recovery = max(self.recovery - p["detection_s"], 0.0)
        self.m = int(p["ec_m"])
        self.holders = int(p["ec_k"]) + self.m  # a blob's shards sit on k+m other nodes
        n = job.nodes
        self.n = n
        dn = int(p["domain_nodes"])
        self.n_domains = -(-n // dn)
        self.domain_nodes = dn
        self.rack_aware = p["ec_placement"] == "rack-aware"
        self.window = self.recovery + self.K + self.commit
        self.failed_at: dict[int, float] = {}  # ring position -> time of its last failure
        self.gen_work = 0.0  # work since the current generation restored its snapshot
        self.disk = 0.0
        self.next_disk = self.interval
        self.detect_after = float(p["straggler_detect_s"])
        self.detect: dict[int, float] = {}  # slow episode id -> detection time
        self.shrink = p["ftrain_replacement"] == "shrink"
        self.group_nodes = min(int(p["replica_group_nodes"]), n)
        self.unit = self.group_nodes / n
        self.replacements: list[float] = []  # arrival times (shrink mode), heap

    def ring_position(self, node: int) -> int:
        """Position of ``node`` in the placement ring (blob of position p -> p+1..p+k+m).

        packed: node order, so a domain's nodes are ring neighbours; rack-aware: the ring
        interleaves domains, so ring neighbours (up to the number of domains) never share one.
        """
        if not self.rack_aware or self.n_domains < 2:
            return node
        d, j = divmod(node, self.domain_nodes)
        full = self.n - (self.n_domains - 1) * self.domain_nodes  # nodes in the last domain
        # column-major over a domains x domain_nodes grid whose last row may be short
        if j < full:
            return j * self.n_domains + d
        return full * self.n_domains + (j - full) * (self.n_domains - 1) + d

    def _set_capacity(self) -> None:
        self.capacity = max(0.0, 1.0 - len(self.replacements) * self.unit)

    def progress(self, w: float) -> None:
        self.work += w
        self.gen_work += w

    def since_committed(self) -> float:
        """Work since the newest committed snapshot (what a failure now would lose)."""
        g = self.gen_work
        if g <= 0.0:
            return 0.0
        r = math.fmod(g, self.K)
        lag = self.commit * self.rate()
        if r < lag and g >= self.K:
            return min(g, r + self.K)
        return r

    def timers(self):
        out = super().timers()
        out.append((self.next_disk, self._disk_checkpoint))
        if self.detect:
            eid = min(self.detect, key=self.detect.__getitem__)
            out.append((self.detect[eid], lambda eid=eid: self._straggler_detected(eid)))
        if self.replacements:
            out.append((self.replacements[0], self._replacement_arrived))
        return out

    def _disk_checkpoint(self) -> None:
        if self.training:
            self.disk = self.work - self.since_committed()
        self.next_disk = self.t + self.interval

    def _slow_end(self, eid: int) -> None:
        super()._slow_end(eid)
        self.detect.pop(eid, None)

    def on_slow(self, eid, duration, node) -> None:
        super().on_slow(eid, duration, node)
        if self.detect_after < duration:
            self.detect[eid] = self.t + self.detect_after

    def _straggler_detected(self, eid: int) -> None:
        del self.detect[eid]
        del self.slow[eid]
        self.count["evictions"] += 1
        if self.training:
            # planned recovery at the next snapshot boundary: no rollback
            self.gen_work = 0.0
            self.pause(self.planned_recovery, "slow", "evict")
        # else: folded into the recovery/restart in progress
        if self.shrink and not (not self.training and self.pause_tag == "restart"):
            heapq.heappush(self.replacements, self.t + self.p["replacement_delay_s"])
            self._set_capacity()

    def _replacement_arrived(self) -> None:
        heapq.heappop(self.replacements)
        self._set_capacity()
        self.count["grows"] += 1
        if self.training:
            self.gen_work = 0.0
            self.pause(self.planned_recovery, "degraded", "grow")

    def planned_checkpoint_done(self) -> None:
        self.disk = self.work
        self.gen_work = 0.0
        self.failed_at.clear()
        self.replacements.clear()
        self._set_capacity()

    def _ec_overloaded(self, nodes: tuple[int, ...]) -> bool:
        """Record failures; True if some failed producer lost more than m of its k+m holders
        within the vulnerability window (its snapshot blob is then undecodable)."""
        n, h, lo = self.n, self.holders, self.t - self.window
        pos = [self.ring_position(x) for x in nodes]
        for q in pos:
            self.failed_at[q] = self.t

        def down(q: int) -> bool:
            return self.failed_at.get(q % n, -math.inf) >= lo

        for q in pos:
            for j in range(h + 1):  # producers whose group {p, p+1..p+h} contains q
                prod = (q - j) % n
                if down(prod) and sum(down(prod + i) for i in range(1, h + 1)) > self.m:
                    return True
        return False

    def fail(self, nodes, u) -> None:
        if self.restart_again():
            return
        if not self.training and self.pause_tag == "ckpt-planned":
            return  # peers hold the lost node's shards; the final checkpoint completes
        if self._ec_overloaded(nodes):
            self.count["fallbacks"] += 1
            self.count["full_restarts"] += 1
            self.rollback(self.work - self.disk)
            self.gen_work = 0.0
            self.failed_at.clear()
            self.replacements.clear()
            self._set_capacity()
            self.planned_waiting = False
            self.pause(self.p["restart_time_s"], "restart", "restart")
            return
        self.count["recoveries"] += 1
        if self.training:
            self.rollback(self.since_committed())
        self.gen_work = 0.0
        if self.shrink:
            # the job drops every data-parallel replica (model-parallel group) that lost a node
            for _ in {x // self.group_nodes for x in nodes}:
                heapq.heappush(self.replacements, self.t + self.p["replacement_delay_s"])
            self._set_capacity()
        # a failure during a recovery, eviction or grow starts the recovery over
        self.pause(self.recovery, "restart", "recovery")


POLICY_CLASSES: dict[str, type[_Policy]] = {
    "checkpoint-restart": CheckpointRestart,
    "replica-heal": ReplicaHeal,
    "ftrain": FTrain,
}


# --------------------------------------------------------------------------------------------
# running


@dataclass
class RunResult:
    policy: str
    wall_s: float
    useful_s: float  # job-seconds
    loss_s: dict[str, float]
    counts: dict[str, int]

    @property
    def goodput(self) -> float:
        return self.useful_s / self.wall_s


def run_policy(job: Job, p: Resolved, policy: str, trace: Trace) -> RunResult:
    """Simulate one policy over one trace."""
    if policy not in POLICY_CLASSES:
        raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    sim = POLICY_CLASSES[policy](job, p)
    T = trace.horizon
    events = trace.events
    i, n_ev = 0, len(events)
    while True:
        t_ext = events[i][0] if i < n_ev else math.inf
        sim.fast_forward(min(t_ext, T))
        t_int, handler = math.inf, None
        for tt, h in sim.timers():
            if tt < t_int:
                t_int, handler = tt, h
        t_next = min(t_int, t_ext, T)
        sim.advance(max(t_next, sim.t))
        if t_next >= T:
            break
        if t_int <= t_ext and handler is not None:
            handler()
            continue
        _, kind, payload = events[i]
        i += 1
        if kind == _FAIL:
            sim.on_failure(*payload)
        elif kind == _PLANNED:
            sim.on_planned()
        else:
            sim.on_slow(*payload)
    return RunResult(policy, T, sim.work, dict(sim.loss), dict(sim.count))


@dataclass
class Summary:
    """Mean (and spread) over runs for one policy."""

    policy: str
    goodput: float
    goodput_sd: float
    goodput_runs: list[float]
    lost_gpu_hours: float
    lost_gpu_hours_by_cause: dict[str, float]
    events: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


def simulate(
    job: Job,
    p: Resolved,
    policies: tuple[str, ...] | list[str] = POLICIES,
    runs: int = 1,
    seed: int = 0,
) -> dict[str, Summary]:
    """Run every policy on the same ``runs`` seeded traces; return per-policy summaries."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs!r}")
    for pol in policies:
        if pol not in POLICY_CLASSES:
            raise ValueError(f"unknown policy {pol!r}; choose from {', '.join(POLICIES)}")
    results: dict[str, list[RunResult]] = {pol: [] for pol in policies}
    for r in range(runs):
        rng = np.random.default_rng([int(seed), r])
        trace = make_trace(job, p, rng)
        for pol in policies:
            results[pol].append(run_policy(job, p, pol, trace))
    out: dict[str, Summary] = {}
    to_gpu_h = job.gpus / 3600.0
    for pol, rs in results.items():
        g = [x.goodput for x in rs]
        extra: dict[str, Any] = {}
        if pol == "checkpoint-restart":
            extra["checkpoint_interval_s"] = checkpoint_interval(job, p)
        out[pol] = Summary(
            policy=pol,
            goodput=float(np.mean(g)),
            goodput_sd=float(np.std(g, ddof=1)) if len(g) > 1 else 0.0,
            goodput_runs=g,
            lost_gpu_hours=float(np.mean([(x.wall_s - x.useful_s) * to_gpu_h for x in rs])),
            lost_gpu_hours_by_cause={c: float(np.mean([x.loss_s[c] * to_gpu_h for x in rs]))
                                     for c in CAUSES},
            events={k: float(np.mean([x.counts[k] for x in rs])) for k in COUNTERS},
            extra=extra,
        )
    return out


def closed_form(job: Job, p: Resolved) -> dict[str, float]:
    """Daly's closed-form numbers for checkpoint-restart (node/domain failures only)."""
    M = job_mtbf_s(job, p)
    C, R = p["checkpoint_write_s"], p["restart_time_s"]
    tau = checkpoint_interval(job, p)
    return {
        "job_mtbf_s": M,
        "failures_per_day": 0.0 if M == math.inf else DAY / M,
        "young_tau_s": daly.young_interval(C, M) if M != math.inf else math.inf,
        "daly_tau_opt_s": daly.daly_interval(C, M),
        "checkpoint_interval_s": tau,
        "daly_goodput": daly.goodput(tau, C, R, M),
        "daly_goodput_at_opt": daly.goodput(max(daly.daly_interval(C, M), 1e-9), C, R, M)
        if M != math.inf else 1.0,
        # ftrain: Young's first-order balance of the per-snapshot stall against the expected
        # rollback, sqrt(2 * stall * M), in steps (commit latency ignored)
        "ftrain_snapshot_every_young": (
            daly.young_interval(p["snapshot_stall_s"], M) / p["step_time_s"]
            if M != math.inf else math.inf),
    }


def scenario(job: Job, p: Resolved) -> dict[str, float]:
    """Expected event counts per day for the job (for the report header)."""
    n = job.nodes
    return {
        "nodes": n,
        "node_failures_per_day": n * p["node_failures_per_1000_days"] / 1000.0,
        "domain_failures_per_day": -(-n // p["domain_nodes"]) * p["domain_failures_per_1000_days"] / 1000.0,
        "planned_per_day": p["planned_per_day"],
        "slow_episodes_per_day": n * p["slow_per_1000_node_days"] / 1000.0,
    }
