"""Telling the user's own bugs from faults (pure logic: no I/O, no clock; the coordinator calls it).

A fault (a lost node, a failed collective) is worth recovering from; a deterministic bug in the
user's script is not: recovery replays the same step and the script raises the same exception
again. So the first exception a trainer's code raises is treated as a possible fault (the job
recovers), and the same exception (type and message) at the same step after a restart (in a later
generation) ends the job, naming rank, step and exception. A script that exits before it ever
reached ftrain (missing module, syntax error, or one that never calls ftrain.init) fails the job
at once: no restart can change that.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UserError:
    """One exception that escaped the user's script on one rank."""

    generation: int
    rank: int
    step: int
    error_type: str
    message: str

    @property
    def signature(self) -> tuple[int, str, str]:
        return self.step, self.error_type, self.message

    def describe(self) -> str:
        """`ValueError('bad batch')`, as repr() shows an exception."""
        return f"{self.error_type}({self.message!r})"


@dataclass(frozen=True)
class UserErrorDecision:
    print_traceback: bool  # the first report of this error in its generation prints the traceback
    fail_message: str      # non-empty: the job fails with this message


@dataclass
class BugDetector:
    """Remembers the user errors seen; decides when one is a bug (the same error after a restart)."""

    seen: dict[tuple[int, str, str], int] = field(default_factory=dict)  # signature -> first generation
    printed: set[tuple[int, tuple[int, str, str]]] = field(default_factory=set)  # (generation, signature)

    def report(self, error: UserError) -> UserErrorDecision:
        key = (error.generation, error.signature)
        print_traceback = key not in self.printed
        self.printed.add(key)
        first = self.seen.setdefault(error.signature, error.generation)
        if first < error.generation:
            return UserErrorDecision(print_traceback, bug_message(error))
        return UserErrorDecision(print_traceback, "")


def bug_message(error: UserError) -> str:
    return (f"rank {error.rank} raised {error.describe()} at step {error.step} twice (a bug in the script, "
            f"not a fault); traceback above")


def startup_failure(node_id: str, local_rank: int, exit_code: int, reached_ftrain: bool,
                    started_after_coordinator: bool) -> str:
    """The job-failed message for a trainer that exited before it ever reached ftrain.init, or ""
    when the exit may be a fault (killed by a signal, or it did reach ftrain, or it started
    before this coordinator did, which then cannot know whether it reached ftrain)."""
    if reached_ftrain or not started_after_coordinator or exit_code < 0:
        return ""
    who = f"trainer {node_id}/{local_rank}"
    if exit_code == 0:
        return (f"{who} exited (code 0) without calling ftrain.init: the script must train through "
                f"`session = ftrain.init(model, optimizer, ...)` and `for step, batch in session.steps(n)`")
    return (f"{who} exited with code {exit_code} before reaching ftrain.init: the script cannot start "
            f"(a missing module or file, a syntax error...); its error is printed above")


def unfired_faults(injected: list[str], fired: set[str]) -> list[str]:
    """The --inject specs that never fired, in the order they were given."""
    return [spec for spec in injected if spec not in fired]


def unfired_warning(spec: str, last_step: int) -> str:
    return (f"warning: fault {spec} never fired (the job ended"
            + (f" at step {last_step}" if last_step >= 0 else "") + "): check its step, rank or node")
