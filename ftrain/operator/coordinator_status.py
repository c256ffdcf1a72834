"""Best-effort read of a running coordinator's status (generation, world size, last committed step).

The operator asks the coordinator what ``ftrain status --coordinator HOST:PORT --json`` prints:
in-process through :func:`ftrain.status.fetch_status` when it is importable, else by running the
command. Any failure (coordinator not up yet, DNS not resolvable from where the operator runs,
wrong token, bad JSON, timeout) gives ``None`` and the operator keeps the previous values.
Tests inject their own reader instead of this one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from typing import Any, Callable, Mapping, Optional

log = logging.getLogger(__name__)

StatusReader = Callable[[str, Optional[str]], Optional[Mapping[str, Any]]]
"""(coordinator "host:port", job token or None) -> status dict with at least ``generation``,
``world_size``, ``last_committed_step``; or None when unknown."""

_KEYS = ("generation", "world_size", "last_committed_step")


def _command(address: str) -> list[str]:
    exe = shutil.which("ftrain")
    if exe:
        return [exe, "status", "--coordinator", address, "--json"]
    # Same interpreter, no console script on PATH (e.g. a source checkout).
    code = ("import sys; sys.argv = ['ftrain'] + sys.argv[1:]; from ftrain.cli import main; "
            "r = main(); sys.exit(r if isinstance(r, int) else 0)")
    return [sys.executable, "-c", code, "status", "--coordinator", address, "--json"]


def parse_status_json(text: str) -> Mapping[str, Any] | None:
    """Pick the status object out of `ftrain status --json` output (tolerates log lines before it)."""
    text = text.strip()
    candidates = [text] + [line for line in reversed(text.splitlines()) if line.strip().startswith("{")]
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except (ValueError, TypeError):
            continue
        if isinstance(data, dict) and any(k in data for k in _KEYS):
            return data
    return None


def read_coordinator_status(address: str, token: str | None = None, timeout: float = 5.0) -> Mapping[str, Any] | None:
    """The coordinator's status dict, or None on any failure."""
    try:
        from ftrain.status import fetch_status
    except Exception:  # not importable here (e.g. an operator-only install): use the CLI
        return read_coordinator_status_cli(address, token, timeout)
    try:
        data = fetch_status(address, token or "", timeout_s=timeout)
    except Exception as e:
        log.debug("coordinator status %s: %s", address, e)
        return None
    return data if isinstance(data, Mapping) and any(k in data for k in _KEYS) else None


def read_coordinator_status_cli(address: str, token: str | None = None,
                                timeout: float = 5.0) -> Mapping[str, Any] | None:
    """Run ``ftrain status --coordinator ADDRESS --json`` (token in FTRAIN_TOKEN); None on failure."""
    env = dict(os.environ)
    if token:
        env["FTRAIN_TOKEN"] = token
    try:
        proc = subprocess.run(_command(address), capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("coordinator status %s: %s", address, e)
        return None
    if proc.returncode != 0:
        log.debug("coordinator status %s: exit %s: %s", address, proc.returncode, proc.stderr.strip()[-500:])
        return None
    return parse_status_json(proc.stdout)
