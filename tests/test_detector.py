"""Tests for ftrain.coordinator.detector (pure detection logic; no clocks, no I/O)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftrain.coordinator.detector import (
    Action,
    DetectionConfig,
    FailureDetector,
    HangDetector,
    NodeLiveness,
    ResponsePolicy,
    StragglerDetector,
    StragglerFlag,
    decide_response,
    rebalance_shares,
    z_threshold,
)

# ----------------------------------------------------------------------------- helpers


def synth_times(
    n_ranks: int,
    n_steps: int,
    seed: int,
    noise: float = 0.02,
    slow: dict[int, float] | None = None,
    drift: float = 0.0,
    tail: str = "gauss",
) -> np.ndarray:
    """(n_steps, n_ranks) compute times ~ 1.0 * (1 + noise * eps), optional slow ranks,
    a global linear drift of ``drift`` (fraction) over the trace, heavy-tailed variants."""
    rng = np.random.default_rng(seed)
    if tail == "gauss":
        eps = rng.standard_normal((n_steps, n_ranks))
    elif tail == "t3":  # Student-t(3), scaled to unit variance
        eps = rng.standard_t(3, (n_steps, n_ranks)) / math.sqrt(3.0)
    else:
        raise ValueError(tail)
    t = 1.0 + noise * eps
    if tail == "t3":  # plus rare stalls (GC, page faults): 1% of steps 1.5-3x
        spikes = rng.random((n_steps, n_ranks)) < 0.01
        t = np.where(spikes, t * rng.uniform(1.5, 3.0, (n_steps, n_ranks)), t)
    t *= (1.0 + drift * np.arange(n_steps) / max(1, n_steps - 1))[:, None]
    for r, f in (slow or {}).items():
        t[:, r] *= f
    return np.maximum(t, 1e-6)


def feed(det: StragglerDetector, times: np.ndarray, step0: int = 0) -> list[StragglerFlag]:
    flags: list[StragglerFlag] = []
    n_steps, n_ranks = times.shape
    rows = times.tolist()
    for i in range(n_steps):
        row = rows[i]
        for r in range(n_ranks):
            det.record(r, step0 + i, row[r])
        flags.extend(det.new_flags())
    return flags


# ----------------------------------------------------------------------------- config


def test_defaults_match_design():
    c = DetectionConfig()
    assert (c.heartbeat_interval_s, c.suspect_after_s, c.dead_after_s) == (1.0, 3.0, 10.0)
    assert (c.hang_timeout_min_s, c.hang_p99_factor) == (30.0, 5.0)
    assert (c.straggler_window, c.straggler_min_slowdown, c.straggler_confirm_windows) == (20, 1.10, 2)
    assert c.validate() is c


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"dead_after_s": 3.0}, "dead_after_s"),
        ({"suspect_after_s": 0.5}, "suspect_after_s"),
        ({"heartbeat_interval_s": 0.0}, "heartbeat_interval_s"),
        ({"heartbeat_interval_s": float("nan")}, "heartbeat_interval_s"),
        ({"hang_timeout_min_s": -1.0}, "hang_timeout_min_s"),
        ({"hang_p99_factor": 0.5}, "hang_p99_factor"),
        ({"straggler_window": 10}, "straggler_window"),
        ({"straggler_window": 51}, "straggler_window"),
        ({"straggler_window": 25.0}, "straggler_window"),
        ({"straggler_min_slowdown": 1.0}, "straggler_min_slowdown"),
        ({"straggler_confirm_windows": 0}, "straggler_confirm_windows"),
        ({"straggler_alpha": 1.5}, "straggler_alpha"),
        ({"straggler_z_base": 0}, "straggler_z_base"),
        ({"hang_step_history": 0}, "hang_step_history"),
    ],
)
def test_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=field) as ei:
        DetectionConfig(**kwargs).validate()
    assert ":" in str(ei.value)  # "<field>=<value> <rule>: <fix>"


def test_dead_after_message_says_fix():
    with pytest.raises(ValueError, match=r"dead_after_s.*must be > suspect_after_s.*raise dead_after_s"):
        DetectionConfig(suspect_after_s=5.0, dead_after_s=4.0).validate()


def test_detectors_validate_config():
    bad = DetectionConfig(dead_after_s=1.0)
    for cls in (FailureDetector, HangDetector, StragglerDetector):
        with pytest.raises(ValueError):
            cls(bad)


# ----------------------------------------------------------------------------- heartbeats


def test_heartbeat_transitions():
    fd = FailureDetector()
    fd.heartbeat("a", 100.0)
    fd.heartbeat("b", 100.0)
    assert fd.states(100.0) == {"a": NodeLiveness.ALIVE, "b": NodeLiveness.ALIVE}
    assert fd.states(102.9)["a"] is NodeLiveness.ALIVE
    assert fd.states(103.0)["a"] is NodeLiveness.SUSPECT
    fd.heartbeat("b", 108.0)
    assert fd.states(109.99) == {"a": NodeLiveness.SUSPECT, "b": NodeLiveness.ALIVE}
    assert fd.newly_dead(109.99) == []
    assert fd.states(110.0)["a"] is NodeLiveness.DEAD
    assert fd.heartbeat_age("a", 110.0) == pytest.approx(10.0)
    assert fd.newly_dead(110.0) == ["a"]
    assert fd.newly_dead(111.0) == []  # reported once
    assert fd.newly_dead(200.0) == ["b"]
    assert fd.newly_dead(300.0) == []


def test_heartbeat_revival_forget_and_out_of_order():
    fd = FailureDetector()
    fd.heartbeat("a", 0.0)
    assert fd.newly_dead(10.0) == ["a"]
    fd.heartbeat("a", 11.0)  # came back (partition healed)
    assert fd.states(11.0)["a"] is NodeLiveness.ALIVE
    assert fd.newly_dead(25.0) == ["a"]  # dies again -> reported again
    fd.forget("a")
    assert fd.states(30.0) == {}
    assert fd.newly_dead(30.0) == []
    with pytest.raises(KeyError):
        fd.heartbeat_age("a", 30.0)
    fd.heartbeat("c", 50.0)
    fd.heartbeat("c", 40.0)  # late-delivered older heartbeat does not age the node
    assert fd.heartbeat_age("c", 52.0) == pytest.approx(2.0)


def test_heartbeat_custom_config():
    fd = FailureDetector(DetectionConfig(heartbeat_interval_s=0.1, suspect_after_s=0.3, dead_after_s=1.0))
    fd.heartbeat("n", 0.0)
    assert fd.state("n", 0.31) is NodeLiveness.SUSPECT
    assert fd.newly_dead(1.0) == ["n"]


# ----------------------------------------------------------------------------- hangs


def test_hang_timeout_formula():
    hd = HangDetector()
    assert hd.timeout_s() == 30.0  # no samples: the floor
    for i in range(100):
        hd.progress(0, i, float(i), step_time_s=1.0)
    assert hd.timeout_s() == 30.0  # 5 * 1 s < 30 s
    hd2 = HangDetector()
    times = [2.0] * 99 + [20.0]  # p99 (nearest rank) of 100 samples = 99th smallest = 2.0
    for i, t in enumerate(times):
        hd2.progress(0, i, float(i), step_time_s=t)
    assert hd2.p99_step_time_s() == 2.0
    assert hd2.timeout_s() == 30.0
    hd2.progress(0, 100, 100.0, step_time_s=20.0)  # 2 of 101 samples at 20 s -> p99 = 20
    assert hd2.p99_step_time_s() == 20.0
    assert hd2.timeout_s() == pytest.approx(100.0)
    assert hd2.collective_timeout_s() == pytest.approx(100.0 + 10.0)
    assert HangDetector().collective_timeout_s() == pytest.approx(40.0)


def test_hang_history_is_bounded():
    hd = HangDetector(DetectionConfig(hang_step_history=50))
    for i in range(50):
        hd.progress(0, i, float(i), step_time_s=100.0)
    assert hd.timeout_s() == pytest.approx(500.0)
    for i in range(50, 100):
        hd.progress(0, i, float(i), step_time_s=1.0)
    assert hd.timeout_s() == 30.0  # old slow steps aged out


def test_hung_ranks_and_reset():
    hd = HangDetector()
    for r in range(4):
        hd.progress(r, 0, 0.0, 1.0)
    assert hd.hung(1000.0) == [0, 1, 2, 3]
    for s in range(1, 40):
        for r in (0, 1, 3):
            hd.progress(r, s, float(s), 1.0)
        hd.progress(2, 5, float(s), 1.0)  # rank 2 keeps reporting step 5: no progress
    assert hd.hung(30.99) == []
    assert hd.hung(31.01) == [2]  # rank 2 last progressed (step 0 -> 5) at t=1, timeout 30
    assert hd.hung(68.9) == [2]
    assert hd.hung(69.5) == [0, 1, 2, 3]
    assert hd.last_progress_age(2, 31.0) == pytest.approx(30.0)
    # never-reported ranks are not watched
    assert 7 not in hd.hung(1e9)
    # recovery: forget clocks (watched again from the next report)
    hd.reset([2])
    assert hd.hung(100.0) == [0, 1, 3]
    hd.reset()
    assert hd.hung(1e9) == []
    # armed reset: a rank that never reports after recovery is still caught
    hd.reset([0, 1], now=200.0)
    assert hd.hung(229.0) == []
    hd.progress(0, 50, 210.0, 1.0)
    assert hd.hung(231.0) == [1]
    hd.remove_rank(1)
    assert hd.hung(231.0) == []


# ----------------------------------------------------------------------------- stragglers


def test_threshold_scaling():
    assert z_threshold(3) == 3.5
    assert z_threshold(4) == 3.5
    vals = [z_threshold(n) for n in (4, 16, 64, 256, 1024, 16384)]
    assert vals == sorted(vals)
    assert z_threshold(64) == pytest.approx(4.16, abs=0.01)
    assert z_threshold(256) == pytest.approx(4.47, abs=0.01)
    # a 1.10x rank among uniform ranks has z >= 0.6745*0.10/0.01 = 6.7: detectable at any scale
    assert z_threshold(1_000_000) < 6.7
    with pytest.raises(ValueError):
        z_threshold(0)


def test_slow_rank_among_64_flagged_within_two_windows():
    W = 20
    det = StragglerDetector()
    times = synth_times(64, 2 * W, seed=1, slow={17: 1.2})
    flags = feed(det, times)
    assert [f.rank for f in flags] == [17]
    f = flags[0]
    assert f.window == 1 and f.slowdown == pytest.approx(1.2, abs=0.02)
    assert f.z >= z_threshold(64)
    assert det.flagged() == {17}
    sc = det.scores()
    assert len(sc) == 64 and sc[17] == pytest.approx(1.2, abs=0.02)
    assert all(abs(v - 1.0) < 0.02 for r, v in sc.items() if r != 17)
    assert det.new_flags() == []  # each flag once


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_three_x_rank_among_four_flagged(seed):
    det = StragglerDetector()
    flags = feed(det, synth_times(4, 40, seed=seed, slow={2: 3.0}))
    assert [(f.rank, f.window) for f in flags] == [(2, 1)]
    assert flags[0].slowdown == pytest.approx(3.0, rel=0.02)


def test_four_healthy_ranks_no_flags():
    # 4 ranks x 2500 windows = 10,000 rank-windows
    det = StragglerDetector()
    flags = feed(det, synth_times(4, 2500 * 20, seed=5, drift=0.02))
    assert flags == [] and det.flagged() == set()


@pytest.mark.parametrize(
    "n_ranks, n_windows, seed, drift, tail, noise",
    [
        (64, 160, 21, 0.02, "gauss", 0.02),  # 10,240 rank-windows
        (64, 160, 22, -0.01, "t3", 0.02),  # heavy tails + stalls, 10,240 rank-windows
        (16, 320, 23, 0.015, "gauss", 0.05),  # noisier, 5,120 rank-windows
        (256, 10, 24, 0.02, "gauss", 0.02),  # 2,560 rank-windows
    ],
)
def test_healthy_ranks_no_false_positives(n_ranks, n_windows, seed, drift, tail, noise):
    det = StragglerDetector()
    flags = feed(det, synth_times(n_ranks, n_windows * 20, seed, noise=noise, drift=drift, tail=tail))
    assert flags == []
    assert det.flagged() == set()
    assert det.last_window_evaluated == n_windows - 1


def test_single_slow_window_is_not_confirmed():
    W = 20
    times = synth_times(16, 4 * W, seed=3)
    times[W : 2 * W, 5] *= 2.0  # one slow window (e.g. a transient) only
    det = StragglerDetector()
    assert feed(det, times) == []
    assert det.scores()[5] == pytest.approx(1.0, abs=0.02)


def test_persistent_straggler_reflags_and_clears():
    W = 20
    det = StragglerDetector()
    times = synth_times(8, 8 * W, seed=4, slow={3: 1.5})
    times[6 * W :, 3] /= 1.5  # recovers in windows 6, 7
    flags = feed(det, times)
    assert [(f.rank, f.window) for f in flags] == [(3, 1), (3, 3), (3, 5)]
    assert det.flagged() == set()  # cleared by the healthy windows


def test_remove_rank_unblocks_and_reset():
    W = 20
    det = StragglerDetector()
    times = synth_times(5, 3 * W, seed=6, slow={1: 2.0})
    rows = times.tolist()
    for i in range(3 * W):
        for r in range(5):
            if r == 4 and i >= 10:
                continue  # rank 4 stops reporting mid window 0 (hung / dead)
            det.record(r, i, rows[i][r])
    assert det.new_flags() == []  # window 0 waits for rank 4
    assert det.last_window_evaluated is None
    det.remove_rank(4)
    assert [(f.rank, f.window) for f in det.new_flags()] == [(1, 1)]
    assert det.last_window_evaluated == 2  # window 2 closed on its 20th sample
    det.reset()
    assert det.flagged() == set() and det.scores() == {} and det.new_flags() == []


def test_partial_windows_stale_reports_and_async_lag():
    W = 20
    det = StragglerDetector()
    # after a restore at step 115 (mid window 5): partial window 5 (5 samples < W/2) is skipped
    times = synth_times(4, 45, seed=7, slow={0: 3.0})
    rows = times.tolist()
    for i in range(45):
        for r in range(4):
            det.record(r, 115 + i, rows[i][r])
    # window 5 skipped; windows 6 (steps 120-139) and 7 (140-159 closed on its 20th sample)
    assert [(f.rank, f.window) for f in det.new_flags()] == [(0, 7)]
    det.record(1, 3, 100.0)  # stale report for an evaluated window: ignored
    assert det.flagged() == {0}
    # async: the 3x slow worker lags in steps; evaluation waits for it, then flags it
    for declared in (False, True):
        det.reset(ranks=range(4) if declared else None)
        done = [0, 0, 0, 0]
        flags = []
        for tick in range(6 * W):
            for r in range(4):
                if r == 0 and tick % 3:
                    continue  # rank 0 finishes a step every 3rd tick
                det.record(r, done[r], 3.0 if r == 0 else 1.0 + 0.001 * r)
                done[r] += 1
            flags += [(f.rank, f.window, tick) for f in det.new_flags()]
        # window 1 of rank 0 closes at its 40th step, on tick 117
        assert flags == [(0, 1, 117)]


def test_two_ranks_not_tested():
    det = StragglerDetector()
    assert feed(det, synth_times(2, 100, seed=8, slow={0: 3.0})) == []
    assert det.scores()[0] > det.scores()[1]


def test_record_rejects_bad_time():
    with pytest.raises(ValueError):
        StragglerDetector().record(0, 0, float("nan"))


# ----------------------------------------------------------------------------- response


def _flag(rank: int = 3, slowdown: float = 1.5) -> StragglerFlag:
    return StragglerFlag(rank=rank, slowdown=slowdown, z=10.0, window=1)


def test_decide_response_ladder():
    f = _flag()
    kinds = lambda pol: [decide_response(pol, "sync", f, k).kind for k in (1, 2, 3, 4)]  # noqa: E731
    R, B, E = ResponsePolicy.REPORT, ResponsePolicy.REBALANCE, ResponsePolicy.EVICT
    assert kinds("report") == [R, R, R, R]
    assert kinds("rebalance") == [R, B, B, B]
    assert kinds("evict") == [R, B, E, E]
    assert kinds(ResponsePolicy.EVICT) == [R, B, E, E]
    a = decide_response("rebalance", "sync", f, 2)
    assert isinstance(a, Action) and a.rank == 3 and a.relative_share == pytest.approx(1 / 1.5)
    assert decide_response("evict", "sync", f, 1).relative_share is None
    for pol in ("report", "rebalance", "evict"):
        for k in (1, 2, 5):
            a = decide_response(pol, "async", f, k)
            assert a.kind is R and a.stale_contributor
    with pytest.raises(ValueError, match="policy"):
        decide_response("kill", "sync", f, 1)
    with pytest.raises(ValueError, match="mode"):
        decide_response("report", "federated", f, 1)
    with pytest.raises(ValueError, match="times_flagged"):
        decide_response("report", "sync", f, 0)


def test_rebalance_shares_examples():
    assert rebalance_shares({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}, 32) == {0: 8, 1: 8, 2: 8, 3: 8}
    s = rebalance_shares({0: 1.0, 1: 2.0, 2: 1.0, 3: 1.0}, 35)  # weights 1, .5, 1, 1 -> 10, 5, 10, 10
    assert s == {0: 10, 1: 5, 2: 10, 3: 10}
    s = rebalance_shares({0: 1.0, 1: 1000.0}, 2)
    assert s == {0: 1, 1: 1}
    s = rebalance_shares({0: 1.0, 1: 1000.0, 2: 1000.0}, 10)
    assert sum(s.values()) == 10 and min(s.values()) >= 1 and s[0] == 8
    with pytest.raises(ValueError, match="global_batch"):
        rebalance_shares({0: 1.0, 1: 1.0}, 1)
    with pytest.raises(ValueError, match="empty"):
        rebalance_shares({}, 8)
    with pytest.raises(ValueError, match="rank 1"):
        rebalance_shares({0: 1.0, 1: 0.0}, 8)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    slow=st.lists(st.floats(0.2, 20.0, allow_nan=False), min_size=1, max_size=40),
    extra=st.integers(0, 2000),
)
def test_rebalance_shares_properties(slow, extra):
    slowdowns = {r * 3 + 1: s for r, s in enumerate(slow)}
    G = len(slow) + extra
    out = rebalance_shares(slowdowns, G)
    assert set(out) == set(slowdowns)
    assert sum(out.values()) == G
    assert all(v >= 1 for v in out.values())
    w = {r: 1 / s for r, s in slowdowns.items()}
    tot = sum(w.values())
    q = {r: G * w[r] / tot for r in w}
    all_ge_one = all(v >= 1 for v in q.values())
    for a in out:
        if all_ge_one:
            assert abs(out[a] - q[a]) < 1 + 1e-9  # largest remainder: within one of the ideal
        for b in out:
            if slowdowns[a] < slowdowns[b]:
                assert out[a] >= out[b]  # monotone
