"""The DCP copy of a durable checkpoint, written by a low-priority helper process.

Writing the copy (ftrain.snapshot.dcp: reading the rank files back, rebuilding the state's tensors,
`torch.distributed.checkpoint.save`) costs about 2 s of CPU per 400 MiB. In the agent's own process
it held the GIL against the agent's shard data plane and heartbeats. So the agent hands the copy to
one long-lived helper (`python -m ftrain.agent.dcp_export`), started for the first copy this agent
writes (only the agent that finalizes a checkpoint writes one), at nice 19 (FTRAIN_SNAPSHOT_NICE):
it takes the node's CPU while the node's trainers wait (in a collective, for data) and yields it
when they run. It stays in the agent's session, so where the kernel shares CPU between sessions
(autogroup) it competes with this node's trainers only, and a kill of the node's process group
takes it too; it also dies with the agent (PR_SET_PDEATHSIG) and is killed by `close`. (SCHED_IDLE
in a session of its own was tried: on a node whose CPUs are all busy a checkpoint then almost never
completed.)

Requests and replies are one JSON line each over its stdin/stdout:
`{"dir": D, "blobs": [...]}` -> `{"name": "dcp"}` (or `""` for a layout with no copy) or
`{"error": "..."}`. A copy that takes longer than its bound kills the helper (the next checkpoint
starts a fresh one) and is reported as an error: the checkpoint itself still completes.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

log = logging.getLogger("ftrain.agent")
_PR_SET_PDEATHSIG = 1


class ExportFailed(Exception):
    """The helper could not write the DCP copy (its message says why)."""


class DcpExporter:
    """Thread-safe handle on the helper process; `export` blocks its caller (the agent's
    checkpoint writer thread) until the copy is written or its bound passes."""

    def __init__(self, nice: int | None = None) -> None:
        self.nice = int(os.environ.get("FTRAIN_SNAPSHOT_NICE", "19")) if nice is None else nice
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False

    def export(self, directory: str, blob_paths: list[str], timeout_s: float) -> str:
        """Writes `directory`/dcp from the rank blobs; returns its name ("" when the layout has
        no DCP copy). Raises ExportFailed."""
        with self._lock:
            if self._closed:
                raise ExportFailed("the agent is stopping")
            process = self._started()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(json.dumps({"dir": directory, "blobs": blob_paths}).encode() + b"\n")
                process.stdin.flush()
            except OSError as error:
                self._stop_locked()
                raise ExportFailed(f"the DCP helper (pid {process.pid}) is gone: {error}") from error
            line = _read_line(process.stdout, time.monotonic() + timeout_s)
            if line is None:
                code = process.poll()
                self._stop_locked()
                raise ExportFailed(f"the DCP helper (pid {process.pid}) "
                                   + (f"exited with code {code}" if code is not None
                                      else f"did not finish within {timeout_s:.0f} s; it was killed"))
            reply = json.loads(line)
            if "error" in reply:
                raise ExportFailed(str(reply["error"]))
            return str(reply["name"])

    @property
    def pid(self) -> int | None:
        """The helper's pid while it runs (started by the first `export`)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def close(self) -> None:
        """Kills the helper, also in the middle of a copy (whose `export` then fails)."""
        self._closed = True
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
        with self._lock:
            self._stop_locked()

    def _started(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ftrain.agent.dcp_export", str(os.getpid()), str(self.nice)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        log.info("checkpoint: DCP copies are written by helper process %d (nice %d)",
                 self._process.pid, self.nice)
        return self._process

    def _stop_locked(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def _read_line(stream: IO[bytes], deadline: float) -> bytes | None:
    """One line from the helper's stdout, or None at EOF or once `deadline` passes."""
    buffered = b""
    fd = stream.fileno()
    while not buffered.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return None
        buffered += chunk
    return buffered


# -- the helper process ------------------------------------------------------------------------
def lower_priority(nice: int) -> None:
    """This process yields the CPU to the node's trainers: nice `nice` (in the agent's session, so
    its autogroup, it competes with this node's trainers only, and gets the CPU while they wait)."""
    if nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        pass


def _die_with(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the agent died before the line above
        os._exit(1)


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Answers requests until stdin closes."""
    from ftrain.snapshot import dcp

    import torch.distributed.checkpoint  # noqa: F401  (the import, ahead of the first request)

    for line in requests:
        reply: dict[str, Any]
        try:
            request = json.loads(line)
            reply = {"name": dcp.write(request["dir"], list(request["blobs"]))}
        except Exception as error:  # reported to the agent, which warns and completes the checkpoint
            reply = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


def main(argv: list[str]) -> int:
    parent, nice = int(argv[0]), int(argv[1])
    _die_with(parent)
    lower_priority(nice)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever torch prints goes to stderr, not into the replies
    serve(sys.stdin.buffer, replies)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
