"""DiLoCo: an outer Nesterov-SGD step on the averaged pseudo-gradient of a buffer of workers.

Role: local-SGD style training with an outer optimizer (Douillard et al., 2023), run over a
buffer so it also works asynchronously.  Each worker's pseudo-gradient is
``g_k = theta_start - theta_local = -delta_k``; after K arrivals

    g   = sum_k w_k g_k / sum_k w_k            (w_k = 1 by default; (1 + t_k)^-e with
                                               staleness_exponent e > 0, t_k as in FedBuff)
    buf = momentum * buf + g                   (buf = g on the first outer step)
    theta <- theta - lr * (g + momentum * buf) (Nesterov; exactly torch.optim.SGD's update)

Defaults: outer lr 0.7, momentum 0.9, Nesterov, K = num_workers (one "outer round" worth of
updates).  One of ``buffer_size`` / ``num_workers`` must be given: with momentum 0.9 a buffer
much smaller than the fleet makes the outer step unstable (benchmarks/aggregation.py: K = N/4
diverges at lr >= 0.35).  ESS lr scaling with ``ess=True``.  This is the default async rule
(``DEFAULT_ASYNC_STRATEGY``); see benchmarks/RESULTS_aggregation.md.
"""

from __future__ import annotations

from typing import ClassVar

from ftrain.aggregate.fedbuff import FedBuff

__all__ = ["DiLoCo"]


class DiLoCo(FedBuff):
    name: ClassVar[str] = "diloco"

    def __init__(
        self,
        buffer_size: int | None = None,
        lr: float = 0.7,
        momentum: float = 0.9,
        nesterov: bool = True,
        ess: bool = False,
        staleness_exponent: float = 0.0,
        weight_by_samples: bool = False,
        expected_staleness: float | None = None,
        staleness_ema: float = 0.01,
        num_workers: int | None = None,
    ) -> None:
        if buffer_size is None:
            if num_workers is None:
                raise ValueError("diloco needs buffer_size or num_workers (the default K is num_workers)")
            buffer_size = max(1, int(num_workers))
        super().__init__(
            buffer_size=buffer_size,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ess=ess,
            staleness_exponent=staleness_exponent,
            weight_by_samples=weight_by_samples,
            expected_staleness=expected_staleness,
            staleness_ema=staleness_ema,
            num_workers=num_workers,
        )
