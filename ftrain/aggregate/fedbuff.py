"""FedBuff: buffered asynchronous aggregation with a staleness discount and a server optimizer.

Role: the default-style async rule (Nguyen et al., 2022).  Updates are accumulated in a buffer
as they arrive; after K of them the server takes one optimizer step with their weighted mean:

    w_k  = (1 + t_k)^-0.5,     t_k = tau_k / max(1, E[tau])     (staleness relative to the mean)
    D    = sum_k w_k d_k / sum_k w_k                              (optionally also x n_k)
    x   <- server-SGD step along D  (lr, optional momentum / Nesterov; ESS lr scaling with ess=True)

``E[tau]`` is the running mean of observed staleness (see ``StalenessTracker``), so an update
of average staleness gets the same discount whatever the concurrency.  Only the weighted sum
is buffered (one model-sized tensor), not the K deltas.  The version moves once per K updates.

Defaults (K = 5, or num_workers if smaller; server lr 1.0, no momentum) are the best of a
12-point grid (K x lr) in benchmarks/aggregation.py.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from ftrain.aggregate.strategy import BufferedStrategy, StalenessTracker, Update

__all__ = ["FedBuff", "fedbuff_weight"]


def fedbuff_weight(t: float, exponent: float = 0.5) -> float:
    """``(1 + t)^-exponent`` for normalised staleness t."""
    return float((1.0 + t) ** (-exponent))


class FedBuff(BufferedStrategy):
    name: ClassVar[str] = "fedbuff"

    def __init__(
        self,
        buffer_size: int | None = None,
        lr: float = 1.0,
        momentum: float = 0.0,
        nesterov: bool = False,
        ess: bool = False,
        staleness_exponent: float = 0.5,
        weight_by_samples: bool = False,
        expected_staleness: float | None = None,
        staleness_ema: float = 0.01,
        num_workers: int | None = None,
    ) -> None:
        if buffer_size is None:
            buffer_size = 5 if num_workers is None else max(1, min(5, int(num_workers)))
        super().__init__(buffer_size, lr, momentum, nesterov, ess)
        if staleness_exponent < 0:
            raise ValueError(f"staleness_exponent must be >= 0, got {staleness_exponent}")
        self.staleness_exponent = float(staleness_exponent)
        self.weight_by_samples = bool(weight_by_samples)
        self.expected_staleness = None if expected_staleness is None else float(expected_staleness)
        self.staleness_ema = float(staleness_ema)
        self.num_workers = None if num_workers is None else int(num_workers)
        self._acc: torch.Tensor | None = None
        self._weights: list[float] = []
        self.tracker = StalenessTracker(self.expected_staleness, self.staleness_ema)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(
            staleness_exponent=self.staleness_exponent,
            weight_by_samples=self.weight_by_samples,
            expected_staleness=self.expected_staleness,
            staleness_ema=self.staleness_ema,
            num_workers=self.num_workers,
        )
        return cfg

    def _reset(self) -> None:
        super()._reset()
        self._acc = None
        self._weights = []
        self.tracker = StalenessTracker(self.expected_staleness, self.staleness_ema)

    def weight(self, update: Update, tau: int) -> float:
        """The update's weight now, without recording its staleness."""
        t = float(tau) / max(1.0, self.tracker.expected)
        w = fedbuff_weight(t, self.staleness_exponent)
        if self.weight_by_samples:
            w *= float(update.num_samples)
        return w

    def _apply(self, update: Update, tau: int) -> bool:
        w = self.weight(update, tau)
        self.tracker.observe(tau)
        if self._acc is None:
            self._acc = torch.zeros_like(self.model)
        self._acc.add_(update.delta, alpha=w)
        self._weights.append(w)
        if len(self._weights) < self.buffer_size:
            return False
        total = sum(self._weights)
        direction = self._acc
        if total > 0.0:
            direction.div_(total)
        else:  # all weights zero (e.g. weight_by_samples with empty shards): no movement
            direction.zero_()
        self._server_step(direction, self._weights)
        self._acc = None
        self._weights = []
        return True

    def _extra_state(self) -> dict[str, Any]:
        st = super()._extra_state()
        st.update(acc=self._acc, weights=list(self._weights), tracker=self.tracker.state_dict())
        return st

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        super()._load_extra_state(state)
        self._acc = state["acc"]
        self._weights = [float(w) for w in state["weights"]]
        self.tracker.load_state_dict(state["tracker"])
