"""MIFA: every server step uses the average of every client's latest update.

Role: memory-based aggregation for unreliable or slow participation (Gu et al., 2021).  The
server keeps each client's latest update ``h_k``; a round is a buffer of K arrivals (repeated
arrivals of one client in a buffer are averaged), after which

    h_k <- d_k  for the clients k in the round
    D    = sum_k a_k h_k        over every client seen so far
    x   <- server-SGD step along D   (lr, optional momentum / Nesterov, ESS with ess=True)

``a_k`` is the client's share of samples among known clients (``weight_by_samples=True``,
default) or uniform ``1 / max(#known, num_workers)`` (clients not heard from yet count as a
zero update, as in the paper).  With ``ess=True`` the ESS weights are all the ``a_k``.
Memory: one model-sized tensor per client.

Defaults (K = num_workers / 2, 5 when not given; server lr 0.5) are the best of a 12-point
grid in benchmarks/aggregation.py at N = 20 workers.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ftrain.aggregate.fedstale import ClientMemoryStrategy

__all__ = ["MIFA"]


class MIFA(ClientMemoryStrategy):
    name: ClassVar[str] = "mifa"
    default_buffer_fraction: ClassVar[float] = 0.5
    default_buffer_size: ClassVar[int] = 5

    def __init__(
        self,
        buffer_size: int | None = None,
        lr: float = 0.5,
        momentum: float = 0.0,
        nesterov: bool = False,
        ess: bool = False,
        weight_by_samples: bool = True,
        num_workers: int | None = None,
    ) -> None:
        super().__init__(buffer_size, lr, momentum, nesterov, ess, weight_by_samples, num_workers)

    def _direction(self, fresh: dict[str, torch.Tensor], a: dict[str, float]) -> tuple[torch.Tensor, list[float]]:
        out = torch.zeros_like(self.model)
        weights: list[float] = []
        for k in sorted(a):
            h = fresh.get(k)
            if h is None:
                h = self.memory[k]
            out.add_(h, alpha=a[k])
            weights.append(a[k])
        return out, weights
