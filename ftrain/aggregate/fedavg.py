"""Synchronous FedAvg: the baseline every async rule is measured against.

Role: one global step per round.  The round for version v closes when every one of
``num_workers`` workers has sent an update made from version v; the model then moves by the
sample-weighted mean of those deltas (times a server lr, 1.0 = plain FedAvg):

    x <- x + lr * sum_k n_k d_k / sum_k n_k

Stale updates (``base_version < version``) are ignored (``on_update`` returns False).  A second
update from the same worker for the same round replaces its first one.  ``synchronous`` is
True: a runtime should hold a worker that has pushed for the current version until the
version moves (a barrier), instead of letting it recompute the same round.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from ftrain.aggregate.strategy import BaseStrategy, Update, check_finite_positive

__all__ = ["FedAvg"]


class FedAvg(BaseStrategy):
    name: ClassVar[str] = "fedavg"
    synchronous: ClassVar[bool] = True

    def __init__(self, num_workers: int, lr: float = 1.0, weight_by_samples: bool = True) -> None:
        super().__init__()
        if int(num_workers) < 1:
            raise ValueError(f"fedavg needs num_workers >= 1, got {num_workers}")
        self.num_workers = int(num_workers)
        self.lr = check_finite_positive("lr", lr)
        self.weight_by_samples = bool(weight_by_samples)
        self._round: dict[str, tuple[torch.Tensor, int]] = {}
        self.ignored_stale = 0

    def config(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "lr": self.lr, "weight_by_samples": self.weight_by_samples}

    def _reset(self) -> None:
        self._round = {}
        self.ignored_stale = 0

    @property
    def pending(self) -> list[str]:
        """Workers whose update for the current round has arrived."""
        return sorted(self._round)

    def _apply(self, update: Update, tau: int) -> bool:
        if tau > 0:
            self.ignored_stale += 1
            return False
        self._round[update.worker_id] = (update.delta.detach().clone(), int(update.num_samples))
        if len(self._round) < self.num_workers:
            return False
        ids = sorted(self._round)
        if self.weight_by_samples:
            total = float(sum(self._round[k][1] for k in ids))
        else:
            total = 0.0
        if total <= 0.0:  # equal weights (also when every worker reported 0 samples)
            weights = [1.0 / len(ids)] * len(ids)
        else:
            weights = [self._round[k][1] / total for k in ids]
        agg = torch.zeros_like(self.model)
        for k, w in zip(ids, weights):
            agg.add_(self._round[k][0], alpha=w)
        self.model.add_(agg, alpha=self.lr)
        self._round = {}
        return True

    def _extra_state(self) -> dict[str, Any]:
        return {
            "round": {k: (d, n) for k, (d, n) in self._round.items()},
            "ignored_stale": self.ignored_stale,
        }

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self._round = {k: (d, int(n)) for k, (d, n) in state["round"].items()}
        self.ignored_stale = int(state["ignored_stale"])
