"""The DCP helper process: its priority, its errors, its bound and its cleanup (real processes).

The copy it writes is checked by tests/test_durable.py (loaded with torch.distributed.checkpoint)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ftrain.agent.dcp_export import DcpExporter, ExportFailed

pytestmark = pytest.mark.timeout(120)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_errors_come_back_as_messages_and_a_stuck_copy_is_killed_at_its_bound(tmp_path: Path) -> None:
    exporter = DcpExporter(nice=19)
    try:
        with pytest.raises(ExportFailed, match="FileNotFoundError.*no-such.blob"):
            exporter.export(str(tmp_path), [str(tmp_path / "no-such.blob")], timeout_s=60)
        pid = exporter.pid
        assert pid is not None  # the same helper answers the next request
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19
        assert os.getsid(pid) == os.getsid(0)  # the agent's session: it competes with this node's trainers only
        fifo = tmp_path / "stuck.blob"
        os.mkfifo(fifo)  # reading it blocks forever: a hung disk
        began = time.monotonic()
        with pytest.raises(ExportFailed, match="did not finish within 2 s; it was killed"):
            exporter.export(str(tmp_path), [str(fifo)], timeout_s=2)
        assert time.monotonic() - began < 30
        deadline = time.monotonic() + 10
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid)
        with pytest.raises(ExportFailed, match="FileNotFoundError"):  # a fresh helper takes over
            exporter.export(str(tmp_path), [str(tmp_path / "no-such.blob")], timeout_s=60)
        assert exporter.pid not in (None, pid)
    finally:
        last = exporter.pid
        exporter.close()
    assert last is None or _gone(last) or os.waitpid(last, os.WNOHANG) is not None
    with pytest.raises(ExportFailed, match="stopping"):
        exporter.export(str(tmp_path), [], timeout_s=5)
