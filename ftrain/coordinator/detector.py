"""Failure, hang and straggler detection for the ftrain coordinator (pure logic).

Role: the coordinator feeds this module the signals it receives (agent heartbeats, trainer
step reports with per-step compute times) and asks it *who* is dead, hung or slow and *what*
to do about a slow rank. The module does no I/O, starts no threads and never reads a clock:
every time-dependent call takes ``now`` (seconds, any monotonic origin) from the caller, so
the gRPC shell, the simulator and the tests drive it identically and deterministically.

Contents (defaults after TorchFT / NVIDIA resiliency-ext / MegaScale; the table of timeouts is in
docs/architecture.md):

* :class:`DetectionConfig` -- every threshold, validated.
* :class:`FailureDetector` -- agent heartbeats -> ALIVE / SUSPECT / DEAD per node.
* :class:`HangDetector` -- per-rank step progress watchdog; timeout
  ``max(hang_timeout_min_s, hang_p99_factor * p99(step time))`` and the derived collective
  (gloo/NCCL) timeout.
* :class:`StragglerDetector` -- windowed robust outlier test on per-rank *compute* time
  (median / MAD modified z-score with a rank-count-scaled threshold, confirmed in
  consecutive windows).
* :func:`decide_response` / :func:`rebalance_shares` -- the response ladder
  report -> rebalance (or stale contributor in async mode) -> evict.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from enum import Enum
from statistics import NormalDist
from typing import Iterable, Mapping

__all__ = [
    "DetectionConfig",
    "NodeLiveness",
    "FailureDetector",
    "HangDetector",
    "StragglerFlag",
    "StragglerDetector",
    "z_threshold",
    "ResponsePolicy",
    "Action",
    "decide_response",
    "rebalance_shares",
]

_MAD_TO_SIGMA = 0.6745  # Phi^-1(0.75): MAD of a Gaussian = 0.6745 sigma
_MAD_FLOOR_FRACTION = 0.01  # MAD floor = 1% of the median


# --------------------------------------------------------------------------- config


@dataclass
class DetectionConfig:
    """Detection thresholds. All times in seconds.

    ``straggler_z_base`` and ``straggler_alpha`` define the rank-count-scaled z threshold
    (see :func:`z_threshold`): ``max(z_base, Phi^-1(1 - alpha / n_ranks))``.
    """

    heartbeat_interval_s: float = 1.0
    suspect_after_s: float = 3.0
    dead_after_s: float = 10.0
    hang_timeout_min_s: float = 30.0
    hang_p99_factor: float = 5.0
    hang_step_history: int = 512
    straggler_window: int = 20
    straggler_min_slowdown: float = 1.10
    straggler_confirm_windows: int = 2
    straggler_z_base: float = 3.5
    straggler_alpha: float = 1e-3

    def validate(self) -> "DetectionConfig":
        """Raise ``ValueError`` naming the offending field and the fix; return self."""

        def fail(name: str, value: object, rule: str, fix: str) -> None:
            raise ValueError(f"DetectionConfig.{name}={value!r} {rule}: {fix}")

        def finite_pos(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                fail(name, v, "must be a finite number > 0", f"set {name} to a positive value")

        for name in (
            "heartbeat_interval_s",
            "suspect_after_s",
            "dead_after_s",
            "hang_timeout_min_s",
            "hang_p99_factor",
            "straggler_min_slowdown",
            "straggler_z_base",
            "straggler_alpha",
        ):
            finite_pos(name)
        if self.suspect_after_s <= self.heartbeat_interval_s:
            fail(
                "suspect_after_s",
                self.suspect_after_s,
                f"must be > heartbeat_interval_s ({self.heartbeat_interval_s})",
                "raise suspect_after_s (>= 3 heartbeat intervals is usual) or lower heartbeat_interval_s",
            )
        if self.dead_after_s <= self.suspect_after_s:
            fail(
                "dead_after_s",
                self.dead_after_s,
                f"must be > suspect_after_s ({self.suspect_after_s})",
                "raise dead_after_s or lower suspect_after_s",
            )
        if self.hang_p99_factor < 1.0:
            fail(
                "hang_p99_factor",
                self.hang_p99_factor,
                "must be >= 1 (a timeout below the p99 step time flags healthy steps)",
                "use a factor >= 1, typically 5",
            )
        for name, lo in (("hang_step_history", 1), ("straggler_confirm_windows", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                fail(name, v, f"must be an integer >= {lo}", f"set {name} to an integer >= {lo}")
        w = self.straggler_window
        if not isinstance(w, int) or isinstance(w, bool) or not 20 <= w <= 50:
            fail(
                "straggler_window",
                w,
                "must be an integer number of steps in [20, 50]",
                "use 20-50 steps per window (shorter is too noisy, longer reacts too slowly)",
            )
        if self.straggler_min_slowdown <= 1.0:
            fail(
                "straggler_min_slowdown",
                self.straggler_min_slowdown,
                "must be > 1.0 (it is a ratio to the median rank)",
                "use e.g. 1.10 for 10% slower than the median",
            )
        if self.straggler_alpha >= 1.0:
            fail(
                "straggler_alpha",
                self.straggler_alpha,
                "must be in (0, 1) (per-window family-wise false-alarm probability)",
                "use a small probability such as 1e-3",
            )
        return self


# --------------------------------------------------------------------------- heartbeats


class NodeLiveness(Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


class FailureDetector:
    """Heartbeat-based node liveness.

    A node is ALIVE while its last heartbeat is younger than ``suspect_after_s``, SUSPECT
    until ``dead_after_s``, then DEAD. A node is known from its first heartbeat until
    :meth:`forget`. A DEAD node that heartbeats again becomes ALIVE again (and may be
    reported dead again later); whether it may rejoin is the membership's decision --
    the coordinator normally calls :meth:`forget` when it evicts a node.
    """

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = (config or DetectionConfig()).validate()
        self._last: dict[str, float] = {}
        self._reported_dead: set[str] = set()

    def heartbeat(self, node_id: str, now: float) -> None:
        prev = self._last.get(node_id)
        if prev is None or now >= prev:  # out-of-order (older) heartbeats never age a node
            self._last[node_id] = now
        if now - self._last[node_id] < self.config.dead_after_s:
            self._reported_dead.discard(node_id)

    def forget(self, node_id: str) -> None:
        self._last.pop(node_id, None)
        self._reported_dead.discard(node_id)

    def nodes(self) -> list[str]:
        return sorted(self._last)

    def knows(self, node_id: str) -> bool:
        """The node heartbeated and was not forgotten since (O(1); `nodes()` sorts)."""
        return node_id in self._last

    def heartbeat_age(self, node_id: str, now: float) -> float:
        """Seconds since the node's last heartbeat (``KeyError`` for an unknown node)."""
        return max(0.0, now - self._last[node_id])

    def state(self, node_id: str, now: float) -> NodeLiveness:
        age = self.heartbeat_age(node_id, now)
        if age >= self.config.dead_after_s:
            return NodeLiveness.DEAD
        if age >= self.config.suspect_after_s:
            return NodeLiveness.SUSPECT
        return NodeLiveness.ALIVE

    def states(self, now: float) -> dict[str, NodeLiveness]:
        return {n: self.state(n, now) for n in sorted(self._last)}

    def newly_dead(self, now: float) -> list[str]:
        """Nodes that are DEAD at ``now`` and were not returned by an earlier call."""
        out = [
            n
            for n in sorted(self._last)
            if n not in self._reported_dead and self.state(n, now) is NodeLiveness.DEAD
        ]
        self._reported_dead.update(out)
        return out


# --------------------------------------------------------------------------- hangs


@dataclass
class _RankProgress:
    step: int | None
    last_progress: float


class HangDetector:
    """Per-rank step-progress watchdog.

    ``progress(rank, step, now, step_time_s)`` restarts the rank's clock whenever the
    reported step differs from the last one (a report repeating the same step is not
    progress). ``step_time_s`` samples (all ranks together; in sync training they are equal)
    go into a bounded history (``hang_step_history``) from which the p99 is taken. A rank is
    *hung* when its last progress is older than :meth:`timeout_s`. Only ranks that reported
    at least once (or were armed by ``reset(ranks, now=...)``) are watched.
    """

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = (config or DetectionConfig()).validate()
        self._ranks: dict[int, _RankProgress] = {}
        self._step_times: deque[float] = deque(maxlen=self.config.hang_step_history)

    def progress(self, rank: int, step: int, now: float, step_time_s: float | None = None) -> None:
        st = self._ranks.get(rank)
        if st is None:
            self._ranks[rank] = _RankProgress(step, now)
        elif st.step != step:
            st.step = step
            st.last_progress = max(st.last_progress, now)
        if step_time_s is not None and math.isfinite(step_time_s) and step_time_s >= 0:
            self._step_times.append(float(step_time_s))

    def p99_step_time_s(self) -> float | None:
        """Nearest-rank 99th percentile of the recent step times (None before any sample)."""
        if not self._step_times:
            return None
        xs = sorted(self._step_times)
        return xs[max(0, math.ceil(0.99 * len(xs)) - 1)]

    def timeout_s(self) -> float:
        """``max(hang_timeout_min_s, hang_p99_factor * p99(recent step times))``."""
        p99 = self.p99_step_time_s()
        t = self.config.hang_timeout_min_s
        if p99 is not None:
            t = max(t, self.config.hang_p99_factor * p99)
        return t

    def collective_timeout_s(self) -> float:
        """Timeout for the process group (gloo/NCCL) of the *next* generation.

        ``collective_timeout = timeout_s() + dead_after_s``. Derivation: a healthy collective
        lasts at most one step (<= p99 step time <= timeout_s() / hang_p99_factor), so any
        collective still blocked after ``timeout_s()`` is waiting on a hung or dead peer. The
        watchdog must fire *first* -- it knows which rank stopped, the collective error does
        not -- and the coordinator then needs time to push the new generation to the agents;
        ``dead_after_s`` is the slack the system already grants for that (it bounds how long
        a node may go unheard). So the survivors' blocked collective always errors out, at
        the latest ``dead_after_s`` after the hang verdict, and cannot block recovery forever
        (gloo cannot be aborted from outside; NCCL is aborted on the recovery command and the
        timeout is the backstop). With defaults: 30 + 10 = 40 s. Process-group timeouts are
        fixed at creation, so the coordinator hands the current value to each new generation.
        """
        return self.timeout_s() + self.config.dead_after_s

    def hung(self, now: float) -> list[int]:
        t = self.timeout_s()
        return sorted(r for r, st in self._ranks.items() if now - st.last_progress > t)

    def last_progress_age(self, rank: int, now: float) -> float:
        return max(0.0, now - self._ranks[rank].last_progress)

    def reset(self, ranks: Iterable[int] | None = None, now: float | None = None) -> None:
        """Restart the clocks after a recovery (generation change).

        ``ranks`` None means every rank. With ``now=None`` the ranks are forgotten and
        watched again from their next report; with ``now`` given they are armed at ``now``,
        so a rank that never reports after the recovery is still caught. The step-time
        history is kept (it describes the job, not a generation).
        """
        targets = list(self._ranks) if ranks is None else list(ranks)
        for r in targets:
            if now is None:
                self._ranks.pop(r, None)
            else:
                self._ranks[r] = _RankProgress(None, now)

    def remove_rank(self, rank: int) -> None:
        self._ranks.pop(rank, None)


# --------------------------------------------------------------------------- stragglers


def z_threshold(n_ranks: int, z_base: float = 3.5, alpha: float = 1e-3) -> float:
    """Modified-z threshold for a window with ``n_ranks`` participating ranks.

    ``max(z_base, Phi^-1(1 - alpha / n_ranks))`` -- a Bonferroni-corrected one-sided
    Gaussian quantile. For Gaussian per-rank statistics the modified z
    ``0.6745 (t - M) / MAD`` is ~ N(0, 1) (0.6745 sigma = MAD), so each healthy rank exceeds
    ``c`` with probability ``1 - Phi(c)``; by the union bound the chance that *any* of n
    healthy ranks exceeds the threshold in one window is <= alpha (1e-3). Requiring
    ``straggler_confirm_windows`` consecutive windows makes it ~alpha^2 for independent
    windows. ``z_base`` = 3.5 (Iglewicz & Hoaglin's classic modified-z outlier cut-off) keeps
    small jobs from using a lax cut-off. Values: n=4 -> 3.50, 16 -> 3.84, 64 -> 4.16,
    256 -> 4.47, 1024 -> 4.76, 16384 -> 5.29 -- slowly growing, so a clear straggler
    (z >= 6.7 for any >= 1.10x slowdown when ranks are uniform, because the MAD is floored at
    1% of the median) is still caught at any scale.
    """
    if n_ranks < 1:
        raise ValueError(f"n_ranks must be >= 1, got {n_ranks}")
    return max(z_base, NormalDist().inv_cdf(1.0 - alpha / n_ranks))


@dataclass(frozen=True)
class StragglerFlag:
    """A confirmed straggler detection, emitted once by :meth:`StragglerDetector.new_flags`."""

    rank: int
    slowdown: float  # rank's window statistic / median over ranks
    z: float  # modified z-score in the confirming window
    window: int  # index of the confirming window (window w covers steps [w*W, (w+1)*W))


class StragglerDetector:
    """Windowed straggler detector on per-rank compute time.

    Feed it ``record(rank, step, compute_time_s)`` -- the time the rank spent computing
    the step (forward/backward/optimizer), *not* the wall step time, which synchronous
    collectives make equal across ranks. Window ``w`` holds steps ``[w*W, (w+1)*W)`` with
    ``W = straggler_window``.

    * A rank's window closes when it has W samples there or reports a step of a later
      window; its statistic is the median of its samples (windows with fewer than W/2
      samples, e.g. the partial first window after a restore, are skipped for that rank).
    * Window ``w`` is evaluated once every known rank has closed it (so in async mode the
      evaluation goes at the pace of the slowest rank; a rank that stops reporting must be
      removed with :meth:`remove_rank`, which the coordinator does on eviction / new
      generation). Ranks are known from their first report, or up front when passed as
      ``ranks`` to the constructor / :meth:`reset` (recommended: the generation's ranks).
      Reports for already-evaluated windows are ignored.
    * Evaluation over the n participating ranks: ``M`` = median of the statistics,
      ``MAD`` = median |t - M|; ``z = 0.6745 (t - M) / max(MAD, 0.01 M)``. A rank passes
      the window's test when ``t >= straggler_min_slowdown * M`` and
      ``z >= z_threshold(n)``. Windows with fewer than 3 participants are not tested (with
      2 ranks no robust statement about *which* one is slow is possible).
    * A rank is *flagged* once it passes in ``straggler_confirm_windows`` consecutive tested
      windows, and stays flagged until it fails a test. A new :class:`StragglerFlag` is
      emitted at confirmation and again after every further ``straggler_confirm_windows``
      slow windows, so a persistent straggler keeps producing flags and the response ladder
      can escalate.
    """

    def __init__(self, config: DetectionConfig | None = None, ranks: Iterable[int] | None = None) -> None:
        self.config = (config or DetectionConfig()).validate()
        self.reset(ranks)

    # -- public -------------------------------------------------------------------------

    def reset(self, ranks: Iterable[int] | None = None) -> None:
        """Forget everything (use on a generation change).

        ``ranks``: the new generation's ranks, if known. Declared ranks are waited for from
        the first window even before their first report (in async mode a slow worker's first
        report comes late); undeclared ranks become known at their first report.
        """
        self._samples: dict[int, dict[int, float]] = {}  # rank -> {step: time} (open window)
        self._open_window: dict[int, int] = {}  # rank -> window of _samples
        self._closed_upto: dict[int, int] = {}  # rank -> highest window it will no longer add to
        self._done: dict[int, dict[int, float]] = {}  # window -> {rank: median}
        self._eval_next = 0  # lowest window not evaluated yet
        self._evaluated_any = False
        self._behind = 0  # ranks with _closed_upto < _eval_next
        self._streak: dict[int, int] = {}
        self._scores: dict[int, float] = {}
        self._flagged: set[int] = set()
        self._pending_flags: list[StragglerFlag] = []
        self._last_window_evaluated: int | None = None
        self._evaluations = getattr(self, "_evaluations", 0)  # kept across resets: it only ever grows
        for r in ranks or ():
            if r not in self._closed_upto:
                self._closed_upto[r] = -1
                self._behind += 1

    def record(self, rank: int, step: int, compute_time_s: float) -> None:
        if not math.isfinite(compute_time_s) or compute_time_s < 0:
            raise ValueError(f"compute_time_s must be finite and >= 0, got {compute_time_s!r}")
        W = self.config.straggler_window
        w = step // W
        if self._evaluated_any and w < self._eval_next:
            return  # stale report for an evaluated window (e.g. replay after a restore)
        if rank not in self._closed_upto:
            self._closed_upto[rank] = w - 1
            if w - 1 < self._eval_next:
                self._behind += 1
        elif w <= self._closed_upto[rank]:
            return  # the rank already closed this window
        ow = self._open_window.get(rank)
        if ow is not None and w > ow:
            self._close(rank, w - 1)
        self._open_window[rank] = w
        samples = self._samples.setdefault(rank, {})
        samples[step] = float(compute_time_s)
        if len(samples) >= W:
            self._close(rank, w)
        self._maybe_evaluate()

    def remove_rank(self, rank: int) -> None:
        """Drop a rank (evicted / left); windows it was holding back get evaluated."""
        if rank in self._closed_upto:
            if self._closed_upto[rank] < self._eval_next:
                self._behind -= 1
            del self._closed_upto[rank]
        self._samples.pop(rank, None)
        self._open_window.pop(rank, None)
        for d in self._done.values():
            d.pop(rank, None)
        self._streak.pop(rank, None)
        self._scores.pop(rank, None)
        self._flagged.discard(rank)
        self._pending_flags = [f for f in self._pending_flags if f.rank != rank]
        self._maybe_evaluate()

    def flagged(self) -> set[int]:
        return set(self._flagged)

    def scores(self) -> dict[int, float]:
        """Latest slowdown ratio t / M per rank (for the ``ftrain_straggler_score`` gauge)."""
        return dict(self._scores)

    def new_flags(self) -> list[StragglerFlag]:
        out, self._pending_flags = self._pending_flags, []
        return out

    def threshold(self, n_ranks: int) -> float:
        return z_threshold(n_ranks, self.config.straggler_z_base, self.config.straggler_alpha)

    @property
    def last_window_evaluated(self) -> int | None:
        return self._last_window_evaluated

    @property
    def evaluations(self) -> int:
        """How many windows have been evaluated so far (the scores can only change when it grows)."""
        return self._evaluations

    # -- internals ------------------------------------------------------------------------

    def _close(self, rank: int, upto: int) -> None:
        """Close the rank's open window and every window up to ``upto``."""
        ow = self._open_window.pop(rank, None)
        samples = self._samples.pop(rank, None)
        if ow is not None and samples and len(samples) >= (self.config.straggler_window + 1) // 2:
            self._done.setdefault(ow, {})[rank] = statistics.median(samples.values())
        old = self._closed_upto[rank]
        if upto > old:
            self._closed_upto[rank] = upto
            if old < self._eval_next <= upto:
                self._behind -= 1

    def _maybe_evaluate(self) -> None:
        if self._behind > 0 or not self._closed_upto:
            return
        target = min(self._closed_upto.values())
        if target < self._eval_next:
            return
        for w in sorted(k for k in self._done if k <= target):
            self._evaluate(w, self._done.pop(w))
        self._eval_next = target + 1
        self._evaluated_any = True
        self._behind = sum(1 for c in self._closed_upto.values() if c < self._eval_next)

    def _evaluate(self, window: int, stats: dict[int, float]) -> None:
        stats = {r: t for r, t in stats.items() if r in self._closed_upto}
        n = len(stats)
        if n == 0:
            return
        self._last_window_evaluated = window
        M = statistics.median(stats.values())
        if M <= 0:
            return
        self._evaluations += 1
        for r, t in stats.items():
            self._scores[r] = t / M
        if n < 3:
            return
        mad = statistics.median(abs(t - M) for t in stats.values())
        denom = max(mad, _MAD_FLOOR_FRACTION * M)
        thr = self.threshold(n)
        cw = self.config.straggler_confirm_windows
        for r in sorted(stats):
            t = stats[r]
            z = _MAD_TO_SIGMA * (t - M) / denom
            if t >= self.config.straggler_min_slowdown * M and z >= thr:
                s = self._streak.get(r, 0) + 1
                self._streak[r] = s
                if s >= cw:
                    self._flagged.add(r)
                    if s % cw == 0:
                        self._pending_flags.append(StragglerFlag(r, t / M, z, window))
            else:
                self._streak[r] = 0
                self._flagged.discard(r)


# --------------------------------------------------------------------------- response


class ResponsePolicy(Enum):
    """How far the ladder may escalate for a slow rank (also the rung an Action is on)."""

    REPORT = "report"
    REBALANCE = "rebalance"
    EVICT = "evict"


@dataclass(frozen=True)
class Action:
    """What the coordinator should do about one :class:`StragglerFlag`.

    ``kind`` REPORT: emit the event / metric only (in async mode also: the rank's updates
    simply arrive late and are down-weighted as stale -- ``stale_contributor`` True).
    REBALANCE: give the rank a smaller share of the global batch; ``relative_share`` =
    1 / slowdown relative to a healthy rank; the integer per-rank batch sizes come from
    :func:`rebalance_shares`. EVICT: open a new generation without the rank (replace it).
    """

    kind: ResponsePolicy
    rank: int
    slowdown: float
    relative_share: float | None = None
    stale_contributor: bool = False
    reason: str = ""


def decide_response(
    policy: str | ResponsePolicy, mode: str, flag: StragglerFlag, times_flagged: int
) -> Action:
    """The response ladder, as a pure function.

    ``times_flagged`` counts the flags of this rank so far, including ``flag`` (1 = first).
    The detector re-flags a rank that stays slow every ``straggler_confirm_windows``
    windows, so the count grows while the slowness persists (or recurs after a rebalance).

    * mode ``"async"``: always REPORT with ``stale_contributor=True`` -- nobody waits for a
      slow worker; its late updates are weighted by staleness.
    * mode ``"sync"``, by policy (the policy is the highest rung allowed):
        - ``report``:    REPORT on every flag.
        - ``rebalance``: 1st flag REPORT; 2nd and later REBALANCE.
        - ``evict``:     1st flag REPORT; 2nd REBALANCE; 3rd and later EVICT (the rank
          stayed or became slow again despite the smaller share).
    """
    try:
        pol = policy if isinstance(policy, ResponsePolicy) else ResponsePolicy(str(policy).lower())
    except ValueError:
        raise ValueError(
            f"unknown straggler policy {policy!r}: use one of "
            + ", ".join(p.value for p in ResponsePolicy)
        ) from None
    if mode not in ("sync", "async"):
        raise ValueError(f"unknown mode {mode!r}: use 'sync' or 'async'")
    if times_flagged < 1:
        raise ValueError(f"times_flagged must be >= 1 (it includes this flag), got {times_flagged}")
    r, s = flag.rank, flag.slowdown
    if mode == "async":
        return Action(
            ResponsePolicy.REPORT, r, s, stale_contributor=True,
            reason=f"async mode: rank {r} ({s:.2f}x) becomes a stale contributor",
        )
    if times_flagged == 1 or pol is ResponsePolicy.REPORT:
        return Action(
            ResponsePolicy.REPORT, r, s,
            reason=f"rank {r} is {s:.2f}x slower than the median (flag #{times_flagged}, policy {pol.value})",
        )
    if pol is ResponsePolicy.REBALANCE or times_flagged == 2:
        return Action(
            ResponsePolicy.REBALANCE, r, s, relative_share=1.0 / s,
            reason=f"rank {r} still {s:.2f}x slow (flag #{times_flagged}): shrink its batch share",
        )
    return Action(
        ResponsePolicy.EVICT, r, s,
        reason=f"rank {r} still {s:.2f}x slow after rebalancing (flag #{times_flagged}): evict and replace",
    )


def rebalance_shares(slowdowns: Mapping[int, float], global_batch: int) -> dict[int, int]:
    """Integer per-rank batch sizes proportional to ``1 / slowdown`` summing to ``global_batch``.

    ``slowdowns`` must list every rank (healthy ranks 1.0). Apportionment by largest
    remainder on the ideal shares ``q_r = G w_r / sum(w)``, ``w_r = 1 / slowdown_r``, with
    every rank getting at least 1; ties broken by rank id, so the result is deterministic
    and monotone (a slower rank never gets more than a faster one).
    """
    if not slowdowns:
        raise ValueError("slowdowns is empty: give a slowdown (1.0 if healthy) for every rank")
    n = len(slowdowns)
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < n:
        raise ValueError(
            f"global_batch={global_batch!r} must be an integer >= the number of ranks ({n}) "
            "so that every rank gets at least one sample"
        )
    for r, s in slowdowns.items():
        if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
            raise ValueError(f"slowdown of rank {r} must be finite and > 0, got {s!r}")
    ranks = sorted(slowdowns)
    weights = {r: 1.0 / slowdowns[r] for r in ranks}
    total = math.fsum(weights.values())
    q = {r: global_batch * weights[r] / total for r in ranks}
    x = {r: max(1, math.floor(q[r])) for r in ranks}
    diff = global_batch - sum(x.values())
    if diff > 0:
        order = sorted(ranks, key=lambda r: (-(q[r] - x[r]), r))
        i = 0
        while diff > 0:
            x[order[i % n]] += 1
            diff -= 1
            i += 1
    while diff < 0:
        # take from the most over-allocated ranks that can spare a sample
        order = sorted((r for r in ranks if x[r] > 1), key=lambda r: (q[r] - x[r], -r))
        for r in order:
            if diff == 0:
                break
            x[r] -= 1
            diff += 1
    return x


# --------------------------------------------------------------------------- frozen processes


def frozen_ranks(last_pulse: Mapping[int, float], ranks: Iterable[int], since: float, now: float,
                 silent_after_s: float, first_pulse_grace_s: float) -> list[int]:
    """Ranks whose trainer process has stopped pulsing: the last pulse is older than
    `silent_after_s`, or none came within `first_pulse_grace_s` of `since` (the generation's
    start). A process that is alive pulses every second from its own thread whatever its loop
    does (a long evaluation, a slow step), so silence means frozen (SIGSTOP) or wedged."""
    out = []
    for rank in ranks:
        seen = last_pulse.get(rank)
        if seen is None:
            if now - since > first_pulse_grace_s:
                out.append(rank)
        elif now - seen > silent_after_s:
            out.append(rank)
    return sorted(out)
