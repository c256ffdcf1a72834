"""Standby trainers (`--standby-trainers`): one process per local rank kept ready, with torch
imported, so a trainer that died is replaced without a cold start.

A standby is `python -m ftrain.train.standby` (see there). When its agent starts a trainer it hands
a live standby the trainer's command line and environment on its stdin instead of spawning a new
interpreter; the standby becomes the trainer (its pid is the trainer's), and a fresh standby is
started for the next failure. Only commands the standby can run as `__main__` qualify: this
interpreter with `script.py ...` or `-m module ...`; any other command starts cold.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Callable, Sequence


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
        self.warm = 0            # trainers started from a standby
        self.cold = 0            # trainers started as a new interpreter while standbys were on

    def fill(self, local_rank: int) -> None:
        """Starts a standby for `local_rank` unless one is ready (or none can run the command)."""
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
        for standby in self._ready.values():
            if standby.poll() is None:
                standby.kill()
            standby.wait()
        self._ready.clear()
