"""Tests for ftrain.aggregate: every update rule against hand-computed values, equivalences
(FedStale beta=0 / beta=1, DiLoCo vs torch.optim.SGD), bit-exact resume, registry, plug-ins."""

from __future__ import annotations

import io
import math
import random
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ftrain.aggregate.diloco import DiLoCo
from ftrain.aggregate.ess import ess_lr, ess_lr_scale, ess_ratio
from ftrain.aggregate.fedasync import FedAsync, staleness_weight
from ftrain.aggregate.fedavg import FedAvg
from ftrain.aggregate.fedbuff import FedBuff
from ftrain.aggregate.fedstale import FedStale, FedVARP
from ftrain.aggregate.mifa import MIFA
from ftrain.aggregate.strategy import (
    BUILTIN_STRATEGIES,
    DEFAULT_ASYNC_STRATEGY,
    BaseStrategy,
    ServerSGD,
    StalenessTracker,
    Strategy,
    Update,
    available_strategies,
    make_strategy,
)


def T(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def U(delta: torch.Tensor, base: int, worker: str, n: int = 1) -> Update:
    return Update(delta=delta, base_version=base, worker_id=worker, num_samples=n)


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------
# Update / protocol basics
# --------------------------------------------------------------------------------------


def test_update_validation() -> None:
    with pytest.raises(ValueError, match="1-D"):
        U(torch.zeros(2, 2), 0, "w")
    with pytest.raises(ValueError, match="float32"):
        U(torch.zeros(2, dtype=torch.float64), 0, "w")
    with pytest.raises(ValueError, match="base_version"):
        U(T(0.0), -1, "w")
    with pytest.raises(ValueError, match="num_samples"):
        U(T(0.0), 0, "w", -1)
    with pytest.raises(TypeError):
        Update(delta=[0.0], base_version=0, worker_id="w")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(BUILTIN_STRATEGIES))
def test_builtins_satisfy_protocol(name: str) -> None:
    s = make_strategy(name, num_workers=2)
    assert s.name == name
    with pytest.raises(RuntimeError, match="init"):
        _ = s.model
    s.init(T(1.0, 2.0))
    assert isinstance(s, Strategy)
    assert s.version == 0
    with pytest.raises(ValueError, match="elements"):
        s.on_update(U(T(1.0), 0, "w0"))
    with pytest.raises(ValueError, match="base version"):
        s.on_update(U(T(1.0, 1.0), 5, "w0"))
    with pytest.raises(ValueError, match="1-D float32"):
        s.init(torch.zeros(2, dtype=torch.float64))


def test_init_copies_model() -> None:
    x = T(1.0, 2.0)
    s = FedAsync(alpha=1.0, function="constant")
    s.init(x)
    s.on_update(U(T(1.0, 1.0), 0, "a"))
    assert torch.equal(x, T(1.0, 2.0))
    assert torch.equal(s.model, T(2.0, 3.0))


def test_staleness_is_version_minus_base() -> None:
    s = FedAsync(alpha=0.5, function="constant")
    s.init(T(0.0))
    for _ in range(3):
        s.on_update(U(T(1.0), s.version, "a"))
    assert s.version == 3
    assert s.staleness(U(T(0.0), 1, "b")) == 2


# --------------------------------------------------------------------------------------
# FedAvg
# --------------------------------------------------------------------------------------


def test_fedavg_waits_for_everyone_weights_by_samples_ignores_stale() -> None:
    s = FedAvg(num_workers=2)
    assert s.synchronous
    s.init(T(0.0, 0.0))
    assert not s.on_update(U(T(1.0, 2.0), 0, "a", n=1))
    assert s.pending == ["a"]
    assert torch.equal(s.model, T(0.0, 0.0))
    assert s.on_update(U(T(3.0, 4.0), 0, "b", n=3))
    # (1*[1,2] + 3*[3,4]) / 4 = [2.5, 3.5]
    assert torch.equal(s.model, T(2.5, 3.5))
    assert s.version == 1
    # a stale update (made from version 0) is ignored
    assert not s.on_update(U(T(100.0, 100.0), 0, "a"))
    assert s.ignored_stale == 1 and s.pending == []
    # a worker's second update for the same round replaces its first
    s.on_update(U(T(9.0, 9.0), 1, "a", n=1))
    s.on_update(U(T(1.0, 1.0), 1, "a", n=1))
    assert s.on_update(U(T(3.0, 3.0), 1, "b", n=1))
    assert torch.equal(s.model, T(4.5, 5.5))


def test_fedavg_server_lr_and_unweighted() -> None:
    s = FedAvg(num_workers=2, lr=2.0, weight_by_samples=False)
    s.init(T(0.0))
    s.on_update(U(T(1.0), 0, "a", n=1))
    s.on_update(U(T(3.0), 0, "b", n=100))
    assert torch.equal(s.model, T(4.0))  # 2 * (1 + 3) / 2


def test_fedavg_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        FedAvg(num_workers=0)
    with pytest.raises(ValueError):
        FedAvg(num_workers=2, lr=0.0)


# --------------------------------------------------------------------------------------
# FedAsync
# --------------------------------------------------------------------------------------


def test_staleness_functions() -> None:
    assert staleness_weight(5.0, "constant") == 1.0
    assert staleness_weight(3.0, "polynomial", p=0.5) == pytest.approx(0.5)
    assert staleness_weight(1.0, "polynomial", p=1.0) == pytest.approx(0.5)
    assert staleness_weight(0.5, "hinge", a=10.0, b=1.0) == 1.0
    assert staleness_weight(1.0, "hinge", a=10.0, b=1.0) == 1.0
    assert staleness_weight(3.0, "hinge", a=1.0, b=1.0) == pytest.approx(1.0 / 3.0)
    with pytest.raises(ValueError):
        staleness_weight(0.0, "exp")
    with pytest.raises(ValueError):
        FedAsync(function="exp")
    with pytest.raises(ValueError):
        FedAsync(alpha=1.5)


def test_fedasync_constant_is_plain_mixing() -> None:
    # x <- (1 - a) x + a (x + delta) = x + a delta
    s = FedAsync(alpha=0.5, function="constant")
    s.init(T(1.0, 1.0))
    assert s.on_update(U(T(2.0, 0.0), 0, "a"))
    assert torch.equal(s.model, T(2.0, 1.0))
    assert s.version == 1


def test_fedasync_polynomial_with_fixed_expected_staleness() -> None:
    s = FedAsync(alpha=0.5, function="polynomial", p=0.5, expected_staleness=2.0)
    s.init(T(0.0))
    s.on_update(U(T(0.0), 0, "a"))
    s.on_update(U(T(0.0), 1, "a"))
    # tau = 2, t = 2 / 2 = 1, s = 2^-0.5
    s.on_update(U(T(1.0), 0, "b"))
    assert s.last_weight == pytest.approx(0.5 * 2**-0.5)
    assert_close(s.model, T(0.5 * 2**-0.5))


def test_fedasync_hinge_is_normalised_by_running_mean() -> None:
    s = FedAsync(alpha=1.0, function="hinge", hinge_a=1.0, hinge_b=1.0)
    s.init(T(0.0))
    # staleness observed: 0, then 1, then 2 -> running mean of the three = 1
    s.on_update(U(T(0.0), 0, "a"))  # tau 0
    s.on_update(U(T(0.0), 0, "b"))  # tau 1
    s.on_update(U(T(0.0), 0, "c"))  # tau 2
    assert s.tracker.mean == pytest.approx(1.0)
    # tau = 3 -> t = 3 / 1 = 3 -> hinge 1 / (1 * (3 - 1) + 1) = 1/3
    s.on_update(U(T(3.0), 0, "d"))
    assert s.last_weight == pytest.approx(1.0 / 3.0)
    assert_close(s.model, T(1.0))
    # at high concurrency the same relative staleness gets the same weight
    big = FedAsync(alpha=1.0, function="hinge", hinge_a=1.0, hinge_b=1.0, expected_staleness=100.0)
    assert big.mixing_weight(300) == pytest.approx(1.0 / 3.0)
    assert big.mixing_weight(80) == 1.0


def test_fedasync_num_workers_is_the_prior_expected_staleness() -> None:
    s = FedAsync(alpha=1.0, function="polynomial", p=1.0, num_workers=5)
    s.init(T(0.0))
    assert s.mixing_weight(4) == pytest.approx(0.5)  # t = 4 / (5 - 1) = 1 -> 1/2


def test_staleness_tracker_cumulative_then_ema() -> None:
    tr = StalenessTracker(ema=0.5)
    tr.observe(4)  # weight max(0.5, 1) = 1 -> 4
    tr.observe(0)  # weight max(0.5, 1/2) -> 2
    tr.observe(2)  # weight 0.5 -> 2
    assert tr.mean == pytest.approx(2.0)
    tr.observe(6)  # 2 + 0.5 * 4 = 4
    assert tr.mean == pytest.approx(4.0)
    fixed = StalenessTracker(expected=10.0)
    assert fixed.normalise(5) == pytest.approx(0.5)
    assert fixed.expected == 10.0


# --------------------------------------------------------------------------------------
# FedBuff, server optimizer, ESS
# --------------------------------------------------------------------------------------


def test_fedbuff_weights_and_one_step_per_buffer() -> None:
    s = FedBuff(buffer_size=2, lr=1.0, expected_staleness=1.0)
    s.init(T(0.0, 0.0))
    assert not s.on_update(U(T(2.0, 0.0), 0, "a"))  # tau 0 -> w 1
    assert s.version == 0 and torch.equal(s.model, T(0.0, 0.0))
    # bump the version with a filler round so the next update is stale
    s.on_update(U(T(0.0, 0.0), 0, "b"))  # tau 0 -> w 1; flush: mean([2,0],[0,0]) = [1,0]
    assert s.version == 1 and torch.equal(s.model, T(1.0, 0.0))
    s2 = FedBuff(buffer_size=2, lr=2.0, expected_staleness=1.0)
    s2.init(T(0.0, 0.0))
    for _ in range(3):  # three filler rounds -> version 3
        s2.on_update(U(T(0.0, 0.0), s2.version, "f"))
        s2.on_update(U(T(0.0, 0.0), s2.version, "f"))
    assert s2.version == 3
    s2.on_update(U(T(3.0, 0.0), 3, "a"))  # tau 0, w = 1
    s2.on_update(U(T(0.0, 3.0), 0, "b"))  # tau 3, w = (1 + 3)^-0.5 = 0.5
    # D = (1*[3,0] + 0.5*[0,3]) / 1.5 = [2, 1]; x += 2 * D
    assert_close(s2.model, T(4.0, 2.0))


def test_fedbuff_staleness_relative_to_mean() -> None:
    s = FedBuff(buffer_size=100)
    s.init(T(0.0))
    for tau in (10, 30):
        s.tracker.observe(tau)
    assert s.tracker.expected == pytest.approx(20.0)
    # tau 20 (= mean) -> t = 1 -> 2^-0.5; tau 60 -> t = 3 -> 1/2
    assert s.weight(U(T(0.0), 0, "a"), 20) == pytest.approx(2**-0.5)
    assert s.weight(U(T(0.0), 0, "a"), 60) == pytest.approx(0.5)
    sw = FedBuff(buffer_size=100, weight_by_samples=True, expected_staleness=1.0)
    assert sw.weight(U(T(0.0), 0, "a", n=7), 0) == pytest.approx(7.0)


def test_server_sgd_matches_torch_sgd() -> None:
    for nesterov in (False, True):
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(6, generator=g)
        deltas = [torch.randn(6, generator=g) for _ in range(4)]
        ours = x0.clone()
        opt = ServerSGD(lr=0.7, momentum=0.9, nesterov=nesterov)
        p = torch.nn.Parameter(x0.clone())
        ref = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=nesterov, foreach=False)
        for d in deltas:
            opt.step(ours, d.clone())
            p.grad = -d.clone()
            ref.step()
        assert_close(ours, p.detach())
    with pytest.raises(ValueError):
        ServerSGD(lr=1.0, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError):
        ServerSGD(lr=-1.0)


def test_ess_formula() -> None:
    assert ess_ratio([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert ess_ratio([1.0, 0.0]) == pytest.approx(0.5)
    assert ess_ratio([1.0, 0.5]) == pytest.approx(2.25 / 2.5)
    assert ess_ratio([]) == 1.0
    assert ess_lr_scale([1.0, 0.0]) == pytest.approx(math.sqrt(0.5))
    assert ess_lr(2.0, [1.0, 0.0, 0.0, 0.0]) == pytest.approx(2.0 * math.sqrt(0.25))
    with pytest.raises(ValueError):
        ess_ratio([1.0, -1.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=1, max_size=20))
def test_ess_ratio_in_unit_interval(ws: list[float]) -> None:
    r = ess_ratio(ws)
    assert 0.0 < r <= 1.0 + 1e-12


def test_fedbuff_with_ess_scales_lr() -> None:
    s = FedBuff(buffer_size=2, lr=1.0, ess=True, expected_staleness=1.0)
    s.init(T(0.0))
    s._version = 3  # the version counter only; the model is unchanged
    s.on_update(U(T(3.0), 3, "a"))  # w = 1
    s.on_update(U(T(0.0), 0, "b"))  # tau 3 -> w = 0.5
    rho = 2.25 / (2 * 1.25)
    assert_close(s.model, T(2.0 * math.sqrt(rho)))


# --------------------------------------------------------------------------------------
# FedStale / FedVARP / MIFA
# --------------------------------------------------------------------------------------


def _two_rounds(s: BaseStrategy) -> None:
    s.init(T(0.0, 0.0))
    # round 1: A (1 sample), B (3 samples)
    s.on_update(U(T(4.0, 0.0), 0, "A", n=1))
    s.on_update(U(T(0.0, 4.0), 0, "B", n=3))
    # round 2: A again, C (4 samples) for the first time
    s.on_update(U(T(8.0, 0.0), 1, "A", n=1))
    s.on_update(U(T(0.0, 8.0), 0, "C", n=4))


def test_fedstale_hand_computed() -> None:
    s = FedStale(beta=0.5, buffer_size=2, lr=1.0)
    s.init(T(0.0, 0.0))
    s.on_update(U(T(4.0, 0.0), 0, "A", n=1))
    assert s.on_update(U(T(0.0, 4.0), 0, "B", n=3))
    # round 1: a = (1/4, 3/4), p = 1, no memory: D = [1, 3]
    assert torch.equal(s.model, T(1.0, 3.0))
    s.on_update(U(T(8.0, 0.0), 1, "A", n=1))
    s.on_update(U(T(0.0, 8.0), 0, "C", n=4))
    # round 2: a = (1/8, 3/8, 4/8) for (A, B, C); p_A = 2/2 = 1, p_C = 1/2
    # memory part: 0.5 * (1/8 [4,0] + 3/8 [0,4]) = [0.25, 0.75]
    # A: (1/8)/1 * ([8,0] - 0.5 [4,0]) = [0.75, 0]
    # C: (4/8)/(1/2) * [0, 8] = [0, 8]
    # D = [1.0, 8.75] -> x = [2.0, 11.75]
    assert_close(s.model, T(2.0, 11.75))
    assert s.participation("A") == 1.0 and s.participation("C") == 0.5 and s.participation("B") == 0.5
    assert torch.equal(s.memory["A"], T(8.0, 0.0))


def test_fedvarp_and_mifa_hand_computed() -> None:
    v = FedVARP(buffer_size=2, lr=1.0)
    _two_rounds(v)
    # round 1 -> [1, 3]; round 2: memory 1/8 [4,0] + 3/8 [0,4] = [0.5, 1.5]
    # A: 1/8 ([8,0] - [4,0]) = [0.5, 0]; C: 1 * [0, 8]  -> D = [1, 9.5]
    assert_close(v.model, T(2.0, 12.5))
    m = MIFA(buffer_size=2, lr=1.0)
    _two_rounds(m)
    # round 1 -> [1, 3]; round 2: memories A=[8,0], B=[0,4], C=[0,8] with a = 1/8, 3/8, 4/8
    # D = [1, 1.5 + 4] = [1, 5.5]
    assert_close(m.model, T(2.0, 8.5))
    mu = MIFA(buffer_size=2, lr=1.0, weight_by_samples=False, num_workers=4)
    _two_rounds(mu)
    # uniform 1/max(known, N): round 1: 1/4 ([4,0] + [0,4]) = [1, 1]
    # round 2: 1/4 ([8,0] + [0,4] + [0,8]) = [2, 3]
    assert_close(mu.model, T(3.0, 4.0))


def test_repeated_arrivals_in_a_buffer_are_averaged() -> None:
    s = MIFA(buffer_size=3, lr=1.0)
    s.init(T(0.0))
    s.on_update(U(T(2.0), 0, "A", n=1))
    s.on_update(U(T(4.0), 0, "A", n=1))
    s.on_update(U(T(9.0), 0, "B", n=1))
    # A -> 3, B -> 9, a = 1/2 each -> 6
    assert_close(s.model, T(6.0))
    assert s.participations == {"A": 1, "B": 1} and s.rounds == 1


def _random_stream(seed: int, n_updates: int, dim: int = 5, workers: int = 4) -> list[tuple[str, int, torch.Tensor, int]]:
    """(worker, lag, delta, samples): the base version is ``max(0, version - lag)`` at arrival."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    sizes = {f"w{i}": rng.randint(1, 9) for i in range(workers)}
    out = []
    for _ in range(n_updates):
        w = rng.choice(sorted(sizes)[: rng.randint(1, workers)])  # low ids arrive more often
        out.append((w, rng.randint(0, 6), torch.randn(dim, generator=g), sizes[w]))
    return out


def _feed(s: BaseStrategy, stream: list[tuple[str, int, torch.Tensor, int]]) -> None:
    for w, lag, d, n in stream:
        s.on_update(U(d, max(0, s.version - lag), w, n))


def _reference_fedstale(beta: float, k: int, x0: torch.Tensor, stream: list[tuple[str, int, torch.Tensor, int]]) -> torch.Tensor:
    """Independent float64 implementation of the FedStale rule with online p estimates."""
    x = x0.double().clone()
    h: dict[str, torch.Tensor] = {}
    samples: dict[str, int] = {}
    parts: dict[str, int] = {}
    rounds = 0
    buf: list[tuple[str, torch.Tensor]] = []
    for w, _lag, d, n in stream:
        buf.append((w, d.double()))
        samples[w] = n
        if len(buf) < k:
            continue
        rounds += 1
        fresh: dict[str, list[torch.Tensor]] = {}
        for ww, dd in buf:
            fresh.setdefault(ww, []).append(dd)
        dk = {ww: torch.stack(v).mean(0) for ww, v in fresh.items()}
        for ww in dk:
            parts[ww] = parts.get(ww, 0) + 1
        known = set(h) | set(dk)
        tot = sum(samples[q] for q in known)
        a = {q: samples[q] / tot for q in known}
        D = sum((beta * a[q] * h[q] for q in h), torch.zeros_like(x))
        for q, dq in dk.items():
            p = parts[q] / rounds
            D = D + (a[q] / p) * (dq - beta * h.get(q, torch.zeros_like(x)))
        x = x + D
        h.update(dk)
        buf = []
    return x.float()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fedstale_matches_reference_and_limits(seed: int) -> None:
    stream = _random_stream(seed, 40)
    x0 = torch.zeros(5)
    for beta in (0.0, 0.5, 1.0):
        s = FedStale(beta=beta, buffer_size=3)
        s.init(x0)
        _feed(s, stream)
        torch.testing.assert_close(s.model, _reference_fedstale(beta, 3, x0, stream), rtol=1e-5, atol=1e-5)


def test_fedstale_beta0_is_fedavg_with_inverse_participation_weights() -> None:
    stream = _random_stream(7, 30)
    s = FedStale(beta=0.0, buffer_size=3)
    s.init(torch.zeros(5))
    # FedAvg with 1/p weights: D = sum_{k in S} (a_k / p_k) d_k, no memory involved
    x = torch.zeros(5, dtype=torch.float64)
    samples: dict[str, int] = {}
    seen: set[str] = set()
    parts: dict[str, int] = {}
    rounds = 0
    buf: dict[str, list[torch.Tensor]] = {}
    count = 0
    for w, lag, d, n in stream:
        s.on_update(U(d, max(0, s.version - lag), w, n))
        buf.setdefault(w, []).append(d.double())
        samples[w] = n
        count += 1
        if count == 3:
            rounds += 1
            seen |= set(buf)
            tot = sum(samples[q] for q in seen)
            for q in buf:
                parts[q] = parts.get(q, 0) + 1
            x = x + sum(((samples[q] / tot) / (parts[q] / rounds)) * torch.stack(v).mean(0) for q, v in buf.items())
            buf, count = {}, 0
            torch.testing.assert_close(s.model, x.float(), rtol=1e-5, atol=1e-5)
    assert rounds == 10


def test_fedstale_beta1_equals_fedvarp() -> None:
    stream = _random_stream(3, 37)
    a, b = FedStale(beta=1.0, buffer_size=4, lr=0.25, momentum=0.5), FedVARP(buffer_size=4, momentum=0.5)
    a.init(torch.ones(5))
    b.init(torch.ones(5))
    _feed(a, stream)
    _feed(b, stream)
    assert torch.equal(a.model, b.model) and a.version == b.version
    assert FedVARP().beta == 1.0 and FedStale().beta == 0.5
    # defaults (tuned in benchmarks/aggregation.py): K as a fraction of num_workers
    assert FedStale(num_workers=20).buffer_size == 20 and FedVARP(num_workers=20).buffer_size == 10
    assert MIFA(num_workers=20).buffer_size == 10 and FedBuff(num_workers=20).buffer_size == 5
    assert FedStale().buffer_size == 10 and MIFA().buffer_size == 5


def test_fedstale_options_validated() -> None:
    with pytest.raises(ValueError):
        FedStale(beta=1.5)
    with pytest.raises(ValueError):
        FedStale(p_min=2.0)
    with pytest.raises(ValueError):
        FedStale(buffer_size=0)


# --------------------------------------------------------------------------------------
# DiLoCo
# --------------------------------------------------------------------------------------


def test_diloco_defaults_and_outer_nesterov_step() -> None:
    s = DiLoCo(buffer_size=2)
    assert (s.opt.lr, s.opt.momentum, s.opt.nesterov) == (0.7, 0.9, True)
    assert DiLoCo(num_workers=6).buffer_size == 6
    with pytest.raises(ValueError, match="num_workers"):
        DiLoCo()
    g = torch.Generator().manual_seed(1)
    theta0 = torch.randn(4, generator=g)
    s.init(theta0)
    p = torch.nn.Parameter(theta0.clone())
    ref = torch.optim.SGD([p], lr=0.7, momentum=0.9, nesterov=True, foreach=False)
    for _ in range(3):
        locals_ = [s.model + torch.randn(4, generator=g) for _ in range(2)]
        start = s.model.clone()
        for i, loc in enumerate(locals_):
            s.on_update(U(loc - start, s.version, f"w{i}"))
        # pseudo-gradient = theta_start - theta_local, averaged
        p.grad = torch.stack([start - loc for loc in locals_]).mean(0)
        ref.step()
        assert_close(s.model, p.detach())
    assert s.version == 3


def test_diloco_first_step_hand_computed() -> None:
    s = DiLoCo(buffer_size=2)
    s.init(T(0.0))
    s.on_update(U(T(1.0), 0, "a"))
    s.on_update(U(T(3.0), 0, "b"))
    # g = -2; buf = g; step = g + 0.9 g = -3.8; theta = 0 - 0.7 * -3.8 = 2.66
    assert_close(s.model, T(2.66))


# --------------------------------------------------------------------------------------
# Bit-exact resume
# --------------------------------------------------------------------------------------

ALL_CONFIGS = [
    ("fedavg", {"num_workers": 3}),
    ("fedasync", {"num_workers": 4}),
    ("fedasync", {"function": "hinge", "alpha": 0.3}),
    ("fedbuff", {"buffer_size": 3, "momentum": 0.9, "nesterov": True, "ess": True}),
    ("fedbuff", {"num_workers": 4, "weight_by_samples": True}),
    ("fedstale", {"buffer_size": 3, "ess": True, "momentum": 0.5}),
    ("fedvarp", {"buffer_size": 3}),
    ("mifa", {"buffer_size": 3, "momentum": 0.9}),
    ("diloco", {"num_workers": 3}),
    ("diloco", {"buffer_size": 2, "ess": True, "staleness_exponent": 0.5}),
]


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _feed_sync_aware(s: Strategy, stream: list[tuple[str, int, torch.Tensor, int]], workers: int = 3) -> None:
    for i, (_w, lag, d, n) in enumerate(stream):
        w = f"w{i % workers}"
        base = s.version if s.synchronous and i % 5 else max(0, s.version - lag)
        s.on_update(U(d, base, w, n))


@pytest.mark.parametrize("name,opts", ALL_CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL_CONFIGS)])
@pytest.mark.parametrize("split", [1, 7, 20])
def test_state_dict_resume_is_bit_exact(name: str, opts: dict, split: int) -> None:
    stream = _random_stream(11 + split, 41)
    x0 = torch.randn(5, generator=torch.Generator().manual_seed(5))
    a = make_strategy(name, **opts)
    a.init(x0)
    _feed_sync_aware(a, stream[:split])
    state = a.state_dict()
    saved = _roundtrip(state)
    b = make_strategy(name, **opts)
    b.load_state_dict(saved)
    assert b.version == a.version and torch.equal(b.model, a.model)
    # continuing the original must not change the saved state (it holds copies)
    snapshot = _roundtrip(state)
    _feed_sync_aware(a, stream[split:])
    _feed_sync_aware(b, stream[split:])
    assert torch.equal(a.model, b.model), name
    assert a.version == b.version
    assert torch.equal(state["model"], snapshot["model"])
    # and the full state matches too
    sa, sb = _roundtrip(a.state_dict()), _roundtrip(b.state_dict())
    assert repr(sa) == repr(sb)


def test_load_state_dict_checks_name_and_options() -> None:
    a = FedBuff(buffer_size=3)
    a.init(T(0.0))
    state = a.state_dict()
    with pytest.raises(ValueError, match="fedbuff"):
        MIFA(buffer_size=3).load_state_dict(state)
    with pytest.raises(ValueError, match="options"):
        FedBuff(buffer_size=4).load_state_dict(state)
    b = FedBuff(buffer_size=4)
    b.load_state_dict(state, strict=False)
    assert torch.equal(b.model, a.model)


# --------------------------------------------------------------------------------------
# Registry and plug-ins
# --------------------------------------------------------------------------------------


def test_registry_names_and_default() -> None:
    assert available_strategies() == sorted(["fedavg", "fedasync", "fedbuff", "fedstale", "fedvarp", "mifa", "diloco"])
    assert DEFAULT_ASYNC_STRATEGY in BUILTIN_STRATEGIES
    assert not make_strategy(DEFAULT_ASYNC_STRATEGY, num_workers=4).synchronous
    assert isinstance(make_strategy(" FedBuff "), FedBuff)
    assert make_strategy("fedstale", beta=0.25).beta == 0.25
    assert make_strategy("fedvarp").name == "fedvarp"
    assert make_strategy("diloco", num_workers=8).buffer_size == 8


def test_registry_errors() -> None:
    with pytest.raises(ValueError) as exc:
        make_strategy("fedprox")
    msg = str(exc.value)
    for name in BUILTIN_STRATEGIES:
        assert name in msg
    assert "package.module:ClassName" in msg
    with pytest.raises(ValueError):
        make_strategy("")
    with pytest.raises(ValueError, match="cannot import"):
        make_strategy("no_such_module_xyz:Thing")
    with pytest.raises(ValueError, match="no attribute"):
        make_strategy("ftrain.aggregate.fedbuff:Nope")
    with pytest.raises(ValueError, match="import path"):
        make_strategy("ftrain.aggregate.fedbuff:")
    with pytest.raises(TypeError):
        make_strategy("fedbuff", no_such_option=1)
    with pytest.raises(TypeError, match="protocol"):
        make_strategy("collections:OrderedDict")


PLUGIN = textwrap.dedent(
    '''
    import torch
    from ftrain.aggregate.strategy import BaseStrategy

    class HalfStep(BaseStrategy):
        """Applies scale * delta of every update."""
        name = "halfstep"

        def __init__(self, scale: float = 0.5) -> None:
            super().__init__()
            self.scale = scale

        def config(self):
            return {"scale": self.scale}

        def _apply(self, update, tau):
            self.model.add_(update.delta, alpha=self.scale)
            return True

    def factory(**options):
        return HalfStep(**options)
    '''
)


def test_import_path_plugin(tmp_path, monkeypatch) -> None:
    (tmp_path / "ftrain_test_plugin_mod.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in ("ftrain_test_plugin_mod:HalfStep", "ftrain_test_plugin_mod:factory"):
        s = make_strategy(spec, scale=0.25)
        assert s.name == "halfstep" and not s.synchronous
        s.init(T(0.0, 4.0))
        assert isinstance(s, Strategy)
        assert s.on_update(U(T(4.0, 4.0), 0, "w"))
        assert torch.equal(s.model, T(1.0, 5.0))
        assert s.version == 1
        b = make_strategy(spec, scale=0.25)
        b.load_state_dict(s.state_dict())
        assert torch.equal(b.model, s.model)
