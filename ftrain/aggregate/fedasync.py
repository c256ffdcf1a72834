"""FedAsync: apply every update as it arrives, mixed in with a staleness-discounted weight.

Role: the simplest fully asynchronous rule (Xie et al., 2019).  For each arriving update

    x <- (1 - a s(tau)) x + a s(tau) x_new

with ``s`` one of

    constant     s = 1
    polynomial   s = (t + 1)^-p                                     (default, p = 0.5)
    hinge        s = 1 if t <= b else 1 / (hinge_a (t - b) + 1)

where ``t = tau / max(1, E[tau])`` is the staleness normalised by the expected staleness:
the running mean of observed staleness (starting from ``num_workers - 1`` when given: with one
version per arrival that is the mean staleness by Little's law), or a fixed
``expected_staleness``.
Without the normalisation a hinge with a fixed small ``b`` zeroes out almost every update once
more than ``b`` workers run concurrently.

Updates are deltas, so the worker's model is re-based onto the current global model,
``x_new = x + delta``, and the rule reads ``x <- x + a s(tau) delta`` (the server does not keep
the old versions workers started from).  Every update changes the model (version += 1).

Defaults (alpha 0.4, polynomial, p 0.5) are the best of a 12-point grid (alpha x function) in
benchmarks/aggregation.py (see benchmarks/RESULTS_aggregation.md).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from ftrain.aggregate.strategy import BaseStrategy, StalenessTracker, Update, check_finite_positive

__all__ = ["FedAsync", "staleness_weight"]

_FUNCTIONS = ("constant", "polynomial", "hinge")


def staleness_weight(t: float, function: str = "polynomial", p: float = 0.5, a: float = 1.0, b: float = 1.0) -> float:
    """``s(t)`` for normalised staleness ``t >= 0``."""
    if function == "constant":
        return 1.0
    if function == "polynomial":
        return float((t + 1.0) ** (-p))
    if function == "hinge":
        return 1.0 if t <= b else 1.0 / (a * (t - b) + 1.0)
    raise ValueError(f"unknown staleness function {function!r}; use one of {', '.join(_FUNCTIONS)}")


class FedAsync(BaseStrategy):
    name: ClassVar[str] = "fedasync"

    def __init__(
        self,
        alpha: float = 0.4,
        function: str = "polynomial",
        p: float = 0.5,
        hinge_a: float = 1.0,
        hinge_b: float = 1.0,
        expected_staleness: float | None = None,
        staleness_ema: float = 0.01,
        num_workers: int | None = None,
    ) -> None:
        super().__init__()
        if function not in _FUNCTIONS:
            raise ValueError(f"unknown staleness function {function!r}; use one of {', '.join(_FUNCTIONS)}")
        self.alpha = check_finite_positive("alpha", alpha)
        if self.alpha > 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.function = function
        self.p = float(p)
        self.hinge_a = float(hinge_a)
        self.hinge_b = float(hinge_b)
        self.expected_staleness = None if expected_staleness is None else float(expected_staleness)
        self.staleness_ema = float(staleness_ema)
        self.num_workers = None if num_workers is None else int(num_workers)
        self.tracker = self._new_tracker()
        self.last_weight = 0.0

    def _new_tracker(self) -> StalenessTracker:
        prior = 0.0 if self.num_workers is None else float(max(0, self.num_workers - 1))
        return StalenessTracker(self.expected_staleness, self.staleness_ema, prior=prior)

    def config(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "function": self.function,
            "p": self.p,
            "hinge_a": self.hinge_a,
            "hinge_b": self.hinge_b,
            "expected_staleness": self.expected_staleness,
            "staleness_ema": self.staleness_ema,
            "num_workers": self.num_workers,
        }

    def _reset(self) -> None:
        self.tracker = self._new_tracker()
        self.last_weight = 0.0

    def mixing_weight(self, tau: int) -> float:
        """``a * s(t)`` for staleness tau, without recording it."""
        t = float(tau) / max(1.0, self.tracker.expected)
        return self.alpha * staleness_weight(t, self.function, self.p, self.hinge_a, self.hinge_b)

    def _apply(self, update: Update, tau: int) -> bool:
        w = self.mixing_weight(tau)
        self.tracker.observe(tau)
        self.last_weight = w
        self.model.add_(update.delta, alpha=w)
        return True

    def _extra_state(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "last_weight": self.last_weight}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.last_weight = float(state["last_weight"])
