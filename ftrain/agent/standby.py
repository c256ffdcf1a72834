"""Standby trainers (`--standby-trainers`): one process per local rank kept ready, with torch
imported, so a trainer that died is replaced without a cold start.

A standby is `python -m ftrain.train.standby` (see there). When its agent starts a trainer it hands
a live standby the trainer's command line and environment on its stdin instead of spawning a new
interpreter; the standby becomes the trainer (its pid is the trainer's), and a fresh standby is
started for the next failure once the new trainer is under way (its step moved twice in its
metrics reports, or REFILL_DELAY_S passed): a standby's own imports would otherwise compete for the
CPU with the trainers it is meant to speed up, just when they start (and at the job's start).
Only commands the standby can run as `__main__` qualify: this interpreter with `script.py ...` or
`-m module ...`; any other command starts cold.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

REFILL_DELAY_S = 30.0  # at most, after a trainer starts, before a standby for its local rank is started


def runnable(command: Sequence[str]) -> list[str] | None:
    """The part of a trainer command after the interpreter when a standby can run it, else None."""
    if len(command) < 2 or os.path.realpath(command[0]) != os.path.realpath(sys.executable):
        return None
    if command[1].endswith(".py") or (command[1] == "-m" and len(command) > 2):
        return list(command[1:])
    return None


class Standbys:
    """This agent's standby processes, by local rank."""

    def __init__(self, command: Sequence[str], env: Callable[[int], dict[str, str]],
                 preexec: Callable[[], None] | None = None) -> None:
        self.argv = runnable(command)
        self._env = env          # the environment a standby for a local rank starts with
        self._preexec = preexec
        self._ready: dict[int, subprocess.Popen] = {}
        self._due: dict[int, float] = {}  # local rank -> when its next standby is started (time.monotonic)
        self._moves: dict[int, int] = {}  # local rank -> step changes its trainer reported since it started
        self._lock = threading.Lock()     # progress() comes from the agent's RPC threads
        self.warm = 0            # trainers started from a standby
        self.cold = 0            # trainers started as a new interpreter while standbys were on

    def schedule(self, local_rank: int, delay_s: float = REFILL_DELAY_S) -> None:
        """A standby for `local_rank` is to be started once its new trainer is under way (`progress`),
        at the latest `delay_s` from now (see `refill`)."""
        if self.argv is not None:
            with self._lock:
                self._due[local_rank], self._moves[local_rank] = time.monotonic() + delay_s, 0

    def progress(self, local_rank: int) -> None:
        """The trainer of `local_rank` reported a new step: the second time, its standby is due."""
        with self._lock:
            if local_rank in self._due:
                self._moves[local_rank] = self._moves.get(local_rank, 0) + 1
                if self._moves[local_rank] >= 2:
                    self._due[local_rank] = 0.0

    def refill(self) -> None:
        """Starts the standbys that are due (the agent's watch loop, on its main thread, calls it)."""
        now = time.monotonic()
        with self._lock:
            due = [r for r, when in self._due.items() if when <= now]
            for local_rank in due:
                del self._due[local_rank]
        for local_rank in due:
            self.fill(local_rank)

    def fill(self, local_rank: int) -> None:
        """Starts a standby for `local_rank` now unless one is ready (or none can run the command)."""
        if self.argv is None:
            return
        current = self._ready.get(local_rank)
        if current is not None and current.poll() is None:
            return
        self._ready[local_rank] = subprocess.Popen(
            [sys.executable, "-m", "ftrain.train.standby"], env=self._env(local_rank), stdin=subprocess.PIPE,
            preexec_fn=self._preexec)

    def take(self, local_rank: int, env: dict[str, str]) -> subprocess.Popen | None:
        """A ready standby turned into the trainer with environment `env`, or None (start it cold)."""
        standby = self._ready.pop(local_rank, None)
        if standby is None or self.argv is None or standby.poll() is not None or standby.stdin is None:
            self.cold += 1
            return None
        try:
            standby.stdin.write((json.dumps({"argv": self.argv, "env": env}) + "\n").encode())
            standby.stdin.close()
        except OSError:  # it died meanwhile
            standby.kill()
            self.cold += 1
            return None
        self.warm += 1
        return standby

    def stop(self) -> None:
        with self._lock:
            self._due.clear()
        for standby in self._ready.values():
            if standby.poll() is None:
                standby.kill()
            standby.wait()
        self._ready.clear()
