"""When a job ends: every rank of the generation leaves `session.steps()` at the same step.

A rank reports the step at which it finished (the last step, or the step of a `break`). The job
is complete once every rank has finished at one step. A rank that finished while another has
gone past that step, or is blocked in (or failed out of) a collective of a later step (waiting
for the finished rank, or left by it), or finished at another step, is a bug in the user's loop (a `break` on some ranks
only): the job fails with one message that says so. Pure logic, no I/O.
"""
from __future__ import annotations

from typing import Mapping


def finish_verdict(world_size: int, finished: Mapping[int, int], progress: Mapping[int, int],
                   waiting_at: Mapping[int, int]) -> tuple[str, str]:
    """("complete" | "wait" | "mismatch", message) for the ranks' finish reports so far.

    `finished`: rank -> step it finished at; `progress`: rank -> its newest reported step;
    `waiting_at`: rank -> the steps it had done when its newest pulse found it blocked in one of
    ftrain's collectives, or when such a collective failed (ranks neither blocked nor failed are
    absent)."""
    if not finished:
        return "wait", ""
    steps = sorted(set(finished.values()))
    if len(steps) > 1:
        detail = ", ".join(f"rank {r} at step {s}" for r, s in sorted(finished.items()))
        return "mismatch", (f"ranks left session.steps() at different steps ({detail}); every rank must leave "
                            "the loop at the same step (decide a break on all ranks together, e.g. with "
                            "dist.all_reduce on a stop flag)")
    step = steps[0]
    for rank in range(world_size):
        if rank in finished:
            continue
        ahead = progress.get(rank, -1) > step
        if ahead or waiting_at.get(rank, -1) >= step:
            first = min(finished)
            return "mismatch", (f"rank {first} left session.steps() at step {step} (a break or return) while rank "
                                f"{rank} went on to step {progress[rank] if ahead else step + 1}; every rank must leave the loop at the same step "
                                "(decide a break on all ranks together, e.g. with dist.all_reduce on a stop flag)")
    if len(finished) == world_size:
        return "complete", f"all {world_size} ranks finished at step {step}"
    return "wait", ""
