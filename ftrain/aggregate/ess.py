"""Effective-sample-size (ESS) learning-rate scaling for buffered aggregation (VCPO-style).

Role: when a buffered rule combines its K updates with unequal weights ``w`` (staleness
discounts, 1/p participation corrections), the combination behaves like an average of fewer
than K independent updates, so its variance is larger.  ESS scaling shrinks the server step
accordingly:

    rho    = (sum w)^2 / (K * sum w^2)        in (0, 1]; 1 when all weights are equal
    lr_eff = lr * sqrt(min(1, rho))

Enable it on any buffered strategy with ``ess=True`` (``fedbuff``, ``fedstale``, ``fedvarp``,
``mifa``, ``diloco``).  Pure functions, no state.
"""

from __future__ import annotations

import math
from typing import Iterable

__all__ = ["ess_ratio", "ess_lr_scale", "ess_lr"]


def ess_ratio(weights: Iterable[float]) -> float:
    """``rho = (sum w)^2 / (K sum w^2)`` for non-negative weights; 1.0 for an empty or all-zero list."""
    ws = [float(w) for w in weights]
    if any(w < 0 or not math.isfinite(w) for w in ws):
        raise ValueError(f"ESS weights must be finite and >= 0, got {ws}")
    k = len(ws)
    sq = math.fsum(w * w for w in ws)
    if k == 0 or sq == 0.0:
        return 1.0
    s = math.fsum(ws)
    return (s * s) / (k * sq)


def ess_lr_scale(weights: Iterable[float]) -> float:
    """``sqrt(min(1, rho))``: the factor applied to the server learning rate."""
    return math.sqrt(min(1.0, ess_ratio(weights)))


def ess_lr(lr: float, weights: Iterable[float]) -> float:
    """``lr * sqrt(min(1, rho))``."""
    return float(lr) * ess_lr_scale(weights)
