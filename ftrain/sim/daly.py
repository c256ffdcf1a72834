"""Closed-form checkpoint/restart results (Young 1974, Daly 2006). Pure functions.

Notation: ``C`` checkpoint (dump) time, ``R`` restart time, ``M`` mean time between failures
of the whole job, ``tau`` useful work between checkpoints; all in seconds.

Daly's model ("A higher order estimate of the optimum checkpoint interval for restart dumps",
FGCS 22(3), 2006): failures are exponential, may strike while computing, while writing a
checkpoint (the segment is lost) and while restarting (the restart begins again). The
expected wall time of one segment of ``tau`` useful seconds is then exactly

    E = M * exp(R/M) * (exp((tau + C)/M) - 1)

and the long-run goodput is ``tau / E``. The simulator's checkpoint-restart policy follows
the same rules, so without planned interruptions and slow nodes it must agree with
:func:`goodput` (tests/test_sim.py checks 1%).
"""

from __future__ import annotations

import math


def young_interval(C: float, M: float) -> float:
    """Young's first-order optimum sqrt(2 C M)."""
    return math.sqrt(2.0 * C * M)


def daly_interval(C: float, M: float) -> float:
    """Daly's higher-order optimum checkpoint interval (useful work between checkpoints).

    tau_opt = sqrt(2CM) [1 + (1/3) sqrt(C/2M) + (1/9) (C/2M)] - C   for C < 2M, else M.
    """
    if M <= 0 or not math.isfinite(M):
        return math.inf if M == math.inf else 0.0
    if C <= 0:
        return 0.0
    if C >= 2.0 * M:
        return M
    x = C / (2.0 * M)
    return math.sqrt(2.0 * C * M) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - C


def expected_segment_time(tau: float, C: float, R: float, M: float) -> float:
    """Expected wall time to complete ``tau`` of work plus its checkpoint (Daly, exact)."""
    if M == math.inf:
        return tau + C
    return M * math.exp(R / M) * math.expm1((tau + C) / M)


def goodput(tau: float, C: float, R: float, M: float) -> float:
    """Long-run useful fraction of wall time with interval ``tau`` (Daly's exact model)."""
    if tau <= 0:
        return 0.0
    return tau / expected_segment_time(tau, C, R, M)
