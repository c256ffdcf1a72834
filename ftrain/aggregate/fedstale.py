"""FedStale (and FedVARP): buffered aggregation that mixes in every client's last update.

Role: keep slow or rarely-participating clients represented between their arrivals
(Rodio & Neglia, 2024).  The server remembers each client's latest update ``h_k``.  A round is
a buffer of K arrivals; ``S`` is the set of clients in it (several arrivals of one client in
one buffer are averaged into one ``d_k``).  Then

    D   = beta * sum_k a_k h_k  +  sum_{k in S} (a_k / p_k) (d_k - beta h_k)
    h_k <- d_k  for k in S
    x   <- server-SGD step along D   (lr, optional momentum / Nesterov, ESS with ess=True)

``a_k`` is client k's weight (its share of samples among known clients, or uniform), ``p_k``
its participation probability per round, estimated online as (rounds it took part in) /
(rounds so far), floored at ``p_min``.  ``beta = 0`` is FedAvg with 1/p (inverse-propensity)
weights, ``beta = 1`` is FedVARP, the default 0.5 sits between the two (less variance than
beta = 0, less bias from stale memories than beta = 1).  ``FedVARP`` is FedStale with beta 1.

With ``ess=True`` the ESS weights are the coefficients ``a_k / p_k`` of the clients in S.
Memory: one model-sized tensor per client.

Defaults are the best of a 12-point grid (K in {N/4, N/2, N} x server lr) in
benchmarks/aggregation.py at N = 20 workers: FedStale K = N, lr 1.0; FedVARP K = N/2, lr 0.25
(K is kept as a fraction of ``num_workers``; 10 / 5 when ``num_workers`` is not given).
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from ftrain.aggregate.strategy import BufferedStrategy, Update

__all__ = ["ClientMemoryStrategy", "FedStale", "FedVARP"]


class ClientMemoryStrategy(BufferedStrategy):
    """Shared mechanics for rules that keep every client's latest update (FedStale, MIFA).

    Buffers K arrivals (averaging repeated arrivals of one client), tracks each client's
    sample count, participation count and the number of rounds, and keeps the memories.
    Subclasses implement :meth:`_direction`.
    """

    def __init__(
        self,
        buffer_size: int | None = None,
        lr: float = 1.0,
        momentum: float = 0.0,
        nesterov: bool = False,
        ess: bool = False,
        weight_by_samples: bool = True,
        num_workers: int | None = None,
    ) -> None:
        if buffer_size is None:
            buffer_size = self._default_buffer_size(num_workers)
        super().__init__(buffer_size, lr, momentum, nesterov, ess)
        self.weight_by_samples = bool(weight_by_samples)
        self.num_workers = None if num_workers is None else int(num_workers)
        self._init_memory_state()

    #: default K as a fraction of num_workers (and the K used when num_workers is unknown)
    default_buffer_fraction: ClassVar[float] = 1.0
    default_buffer_size: ClassVar[int] = 10

    @classmethod
    def _default_buffer_size(cls, num_workers: int | None) -> int:
        if num_workers is None:
            return cls.default_buffer_size
        return max(1, int(round(cls.default_buffer_fraction * int(num_workers))))

    def _init_memory_state(self) -> None:
        self.memory: dict[str, torch.Tensor] = {}
        self.samples: dict[str, int] = {}
        self.participations: dict[str, int] = {}
        self.rounds = 0
        self._buf: dict[str, list[Any]] = {}  # worker -> [sum of deltas, count]
        self._arrivals = 0

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(weight_by_samples=self.weight_by_samples, num_workers=self.num_workers)
        return cfg

    def _reset(self) -> None:
        super()._reset()
        self._init_memory_state()

    def client_weights(self, ids: list[str]) -> dict[str, float]:
        """``a_k`` over the known clients ``ids`` (sums to 1 over them, or to #known/N uniform)."""
        if self.weight_by_samples:
            total = float(sum(self.samples[k] for k in ids))
            if total > 0.0:
                return {k: self.samples[k] / total for k in ids}
        n = max(len(ids), self.num_workers or 0)
        return {k: 1.0 / n for k in ids}

    def _apply(self, update: Update, tau: int) -> bool:
        entry = self._buf.get(update.worker_id)
        if entry is None:
            self._buf[update.worker_id] = [update.delta.detach().clone(), 1]
        else:
            entry[0].add_(update.delta)
            entry[1] += 1
        self.samples[update.worker_id] = int(update.num_samples)
        self._arrivals += 1
        if self._arrivals < self.buffer_size:
            return False
        in_round = sorted(self._buf)
        fresh: dict[str, torch.Tensor] = {}
        for k in in_round:
            total, count = self._buf[k]
            if count > 1:
                total.div_(count)
            fresh[k] = total
        self.rounds += 1
        for k in in_round:
            self.participations[k] = self.participations.get(k, 0) + 1
        known = sorted(set(self.memory) | set(in_round))
        a = self.client_weights(known)
        direction, weights = self._direction(fresh, a)
        self._server_step(direction, weights)
        for k in in_round:
            self.memory[k] = fresh[k]
        self._buf = {}
        self._arrivals = 0
        return True

    def _direction(self, fresh: dict[str, torch.Tensor], a: dict[str, float]) -> tuple[torch.Tensor, list[float]]:
        raise NotImplementedError  # pragma: no cover

    def _extra_state(self) -> dict[str, Any]:
        st = super()._extra_state()
        st.update(
            memory=dict(self.memory),
            samples=dict(self.samples),
            participations=dict(self.participations),
            rounds=self.rounds,
            buf={k: [v[0], v[1]] for k, v in self._buf.items()},
            arrivals=self._arrivals,
        )
        return st

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        super()._load_extra_state(state)
        self.memory = dict(state["memory"])
        self.samples = {k: int(v) for k, v in state["samples"].items()}
        self.participations = {k: int(v) for k, v in state["participations"].items()}
        self.rounds = int(state["rounds"])
        self._buf = {k: [v[0], int(v[1])] for k, v in state["buf"].items()}
        self._arrivals = int(state["arrivals"])


class FedStale(ClientMemoryStrategy):
    name: ClassVar[str] = "fedstale"

    def __init__(
        self,
        beta: float = 0.5,
        buffer_size: int | None = None,
        lr: float = 1.0,
        momentum: float = 0.0,
        nesterov: bool = False,
        ess: bool = False,
        weight_by_samples: bool = True,
        p_min: float = 0.0,
        num_workers: int | None = None,
    ) -> None:
        super().__init__(buffer_size, lr, momentum, nesterov, ess, weight_by_samples, num_workers)
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        if not 0.0 <= float(p_min) <= 1.0:
            raise ValueError(f"p_min must be in [0, 1], got {p_min}")
        self.beta = float(beta)
        self.p_min = float(p_min)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(beta=self.beta, p_min=self.p_min)
        return cfg

    def participation(self, worker_id: str) -> float:
        """Online estimate of p_k: rounds with k / rounds so far (floored at p_min)."""
        if self.rounds == 0:
            return 1.0
        return max(self.p_min, self.participations.get(worker_id, 0) / self.rounds)

    def _direction(self, fresh: dict[str, torch.Tensor], a: dict[str, float]) -> tuple[torch.Tensor, list[float]]:
        beta = self.beta
        out = torch.zeros_like(self.model)
        if beta != 0.0:
            for k in sorted(self.memory):
                out.add_(self.memory[k], alpha=beta * a[k])
        weights: list[float] = []
        for k in sorted(fresh):
            coeff = a[k] / self.participation(k)
            weights.append(coeff)
            out.add_(fresh[k], alpha=coeff)
            h = self.memory.get(k)
            if beta != 0.0 and h is not None:
                out.add_(h, alpha=-beta * coeff)
        return out, weights


class FedVARP(FedStale):
    """FedStale with beta = 1 (Jhunjhunwala et al., 2022)."""

    name: ClassVar[str] = "fedvarp"
    default_buffer_fraction: ClassVar[float] = 0.5
    default_buffer_size: ClassVar[int] = 5

    def __init__(
        self,
        buffer_size: int | None = None,
        lr: float = 0.25,
        momentum: float = 0.0,
        nesterov: bool = False,
        ess: bool = False,
        weight_by_samples: bool = True,
        p_min: float = 0.0,
        num_workers: int | None = None,
    ) -> None:
        super().__init__(1.0, buffer_size, lr, momentum, nesterov, ess, weight_by_samples, p_min, num_workers)
