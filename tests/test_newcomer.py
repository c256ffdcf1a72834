"""The newcomer's path: `make demo` on an externally managed python3, ISA-L from a plain pip
install, the effective erasure code and consistent steps in `ftrain status`, `--events-file`
written live, and readable error lines."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ftrain.config import ErasureSpec, JobSettings
from ftrain.coordinator.machine import CoordinatorMachine
from ftrain.snapshot.erasure import default_backend
from ftrain.status import format_status
from ftrain.textfmt import LineFormatter, fit, short_reason
from procs import REPO, SCRIPTS, coordinator_status, free_port, kill_job, new_job_id

TOKEN = "newcomer-test-token-5c1d"


# -- status: the code in use, consistent steps; --events-file written live -----------------------------
@pytest.mark.timeout(180)
def test_status_shows_the_effective_code_and_a_killed_launcher_leaves_its_events(tmp_path: Path) -> None:
    script = SCRIPTS / "steady_job.py"
    events_file = tmp_path / "events.jsonl"
    job_id = new_job_id("newcomer")
    port = free_port()
    env = dict(os.environ, FTRAIN_JOB_ID=job_id, FTRAIN_TOKEN=TOKEN)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "ftrain", "launch", "--nodes", "3", "--ec", "4+2", "--job-id", job_id,
         "--coordinator-port", str(port), "--events-file", str(events_file), "--timeout", "150", "--",
         str(script), "--samples", "96", "--steps", "5000"], env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline:
            status = coordinator_status(address, TOKEN)
            if status and status["last_committed_step"] >= 5:
                break
            assert launcher.poll() is None, launcher.stderr.read() if launcher.stderr else ""
            time.sleep(0.3)
        assert status and status["last_committed_step"] >= 5, status
        # 3 nodes: the requested 4+2 runs as 1+1 (a data shard and a parity shard on the two other
        # nodes), read from the committed blobs; with shards never on their producer it survives 2 losses
        assert status["ec"] == "4+2"
        assert status["ec_effective"] == {"k": 1, "m": 1, "nodes": 3, "survives_node_losses": 2,
                                          "of": "snapshots", "source": "committed"}, status["ec_effective"]
        assert status["codec_backends"] == {default_backend(): 3}
        committed = status["last_committed_step"]
        assert all(m["step"] is not None and m["step"] >= committed for m in status["members"]), \
            (committed, [m["step"] for m in status["members"]])
        text = format_status(status)
        assert "EC 1+1 on 3 nodes (requested 4+2): survives 2 node losses at once" in text, text
        assert f"codec {default_backend()}" in text
        rows = [line.split() for line in text.splitlines() if line.startswith("node")]
        assert len(rows) == 3 and all(int(row[3]) >= committed for row in rows), text

        # the launcher SIGKILLed mid-run: the events so far are in the file, one JSON line each
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)
        lines = events_file.read_text().splitlines()
        events = [json.loads(line) for line in lines]  # every line whole
        kinds = [e["kind"] for e in events]
        assert kinds.count("node-joined") == 3 and "generation" in kinds, kinds
        formed = next(e for e in events if e["kind"] == "generation")
        assert formed["generation"] == 0 and formed["message"].endswith("starts from scratch"), formed
        assert "job-complete" not in kinds and "job-failed" not in kinds
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        launcher.wait()
        kill_job(job_id)


def test_six_nodes_asking_4_2_say_they_run_4_1() -> None:
    settings = JobSettings(job_id="six", target_nodes=6, min_nodes=6, ec=ErasureSpec(4, 2)).validate()
    status = CoordinatorMachine(settings, "127.0.0.1:1", 0.0).status(0.0)
    assert status["ec_effective"] == {"k": 4, "m": 1, "nodes": 6, "survives_node_losses": 2, "of": "snapshots",
                                      "source": "planned"}
    assert "EC 4+1 on 6 nodes (requested 4+2): survives 2 node losses at once" in format_status(status)


# -- error lines -----------------------------------------------------------------------------------
GLOO_REASON = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by "
               "peer [127.0.0.1]:41234. Check the network. Exception raised from recvBytes at "
               "/pytorch/torch/csrc/distributed/c10d/Utils.hpp:670 (most recent call first):\nframe #0: ...")


def test_a_reason_keeps_its_first_sentence_whole_without_source_paths() -> None:
    assert short_reason(GLOO_REASON) == "Connection closed by peer [127.0.0.1]:41234."
    line = fit("word " * 40, 100)
    assert len(line) <= 100 and line.endswith("word...")
    record = logging.LogRecord("ftrain.session", logging.WARNING, __file__, 1,
                               "rank 1: step 7 failed (%s); recovering", (GLOO_REASON,), None)
    text = LineFormatter("node1/0").format(record)
    assert len(text) <= 100 and "/__w/" not in text and "pair.cc" not in text, text
    assert re.fullmatch(r"\d\d:\d\d:\d\d node1/0: rank 1: step 7 failed \(Connection closed by peer "
                        r"\[127\.0\.0\.1\]:41234\.\); recovering", text), text
    # a long warning is kept whole (its end says what went wrong); info lines are cut to the width
    long = logging.LogRecord("ftrain.session", logging.WARNING, __file__, 1, "blob %s rebuilt around bad shards: %s",
                             ("s14-g0-r2", "shard 0 on node3: shard s14-g0-r2#0 failed its checksum"), None)
    assert LineFormatter("node4/0").format(long).endswith("failed its checksum")
    info = logging.LogRecord("ftrain.launch", logging.INFO, __file__, 1, "word " * 40, None, None)
    assert len(LineFormatter().format(info)) <= 100


# -- ISA-L from a plain pip install ------------------------------------------------------------------
def _hide_system_isal() -> list[str]:
    """A command prefix that runs without the system's libisal.so.2 (a private mount namespace with
    an empty file over it), [] when the system has none; skips when it has one and cannot hide it."""
    probe = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.CDLL('libisal.so.2')"], capture_output=True)
    if probe.returncode != 0:
        return []
    found = subprocess.run(["bash", "-c", "ldconfig -p | awk '/libisal\\.so\\.2 /{print $NF}'"], capture_output=True,
                           text=True).stdout.split()
    if os.geteuid() != 0 or not shutil.which("unshare") or not found:
        pytest.skip("the system has libisal.so.2 and this user cannot hide it (needs root and unshare)")
    targets = " ".join(sorted({os.path.realpath(p) for p in found}))
    return ["unshare", "-m", "--propagation", "private", "bash", "-c",
            f"e=$(mktemp); for f in {targets}; do mount --bind \"$e\" \"$f\"; done; exec \"$@\"", "hide-isal"]


@pytest.mark.timeout(300)
def test_pip_install_in_a_fresh_venv_without_libisal2_runs_isal(tmp_path: Path) -> None:
    hide = _hide_system_isal()
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "ftrain", source / "ftrain", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "venv"
    # the base interpreter's site-packages stay visible so torch is reused, not downloaded again
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--progress-bar", "off", str(source)],
                             capture_output=True, text=True, timeout=240)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    check = subprocess.run(hide + [python, "-c", textwrap.dedent("""
        import ctypes, importlib.metadata as md
        try:
            ctypes.CDLL("libisal.so.2"); print("system-isal-visible")
        except OSError:
            print("system-isal-hidden")
        from ftrain.snapshot.erasure import ReedSolomon, isal_library_path
        print(ReedSolomon(4, 2).backend, isal_library_path())
        print([r for r in md.requires("ftrain") if r.startswith("pyeclib")])
    """)], capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert check.returncode == 0, check.stderr[-3000:]
    visible, backend, requires = check.stdout.splitlines()
    assert visible == "system-isal-hidden"
    assert backend.split()[0] == "isal" and "pyeclib.libs/libisal" in backend, backend
    assert "pyeclib" in requires


# -- `make demo` in a fresh clone, on an externally managed python3 ---------------------------------
def _externally_managed_python() -> str | None:
    """The system python3 when it is externally managed (PEP 668) and can make virtual environments."""
    for candidate in ("/usr/bin/python3",):
        if not os.path.exists(candidate):
            continue
        stdlib = subprocess.run([candidate, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                                capture_output=True, text=True).stdout.strip()
        if stdlib and os.path.exists(os.path.join(stdlib, "EXTERNALLY-MANAGED")) and \
                subprocess.run([candidate, "-c", "import ensurepip, venv"], capture_output=True).returncode == 0:
            return candidate
    return None


@pytest.mark.slow  # a fresh venv gets torch installed (~40 s from a local wheel) and the demo runs: ~2 min
@pytest.mark.timeout(600)
def test_make_demo_in_a_fresh_clone_with_an_externally_managed_python(tmp_path: Path) -> None:
    system_python = _externally_managed_python()
    if system_python is None:
        pytest.skip("no externally managed system python3 with venv support here (/usr/bin/python3)")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    for name in ("Makefile", "pyproject.toml", "scripts/setup.sh", ".gitignore"):  # this checkout's, committed or not
        shutil.copy(REPO / name, clone / name)
    bin_dir = tmp_path / "bin"  # python3 on PATH is the system's, nothing else of this environment
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(system_python)
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": f"{bin_dir}:/usr/bin:/bin", "LANG": "C.UTF-8"}
    refused = subprocess.run([str(bin_dir / "python3"), "-m", "pip", "install", "--dry-run", "ftrain"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stdout + refused.stderr
    demo_args = "DEMO_ARGS=--steps 12 --kill-step 6"
    first = subprocess.run(["make", "demo", demo_args], cwd=str(clone), env=env, capture_output=True, text=True,
                           timeout=540)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-6000:]
    assert "setup: virtual environment .venv" in output and "summary" in output, output[-4000:]
    assert "bit-identical to the failure-free run" in output
    assert (clone / ".venv" / "bin" / "python").exists()

    # a second run skips every install step and starts the demo within seconds
    started = time.monotonic()
    second = subprocess.Popen(["make", "demo", demo_args], cwd=str(clone), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        assert second.stdout is not None
        for line in second.stdout:
            lines.append(line)
            if line.startswith("ftrain demo:"):
                break
        waited = time.monotonic() - started
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait()
    text = "".join(lines)
    assert "ftrain demo:" in text, text
    for what in ("virtual environment .venv", "torch", "pip install -e .[examples]"):
        assert re.search(rf"setup: {re.escape(what)} +skipped", text), text
    assert waited < 10, f"the demo started {waited:.1f} s after make demo"
    log = (clone / ".setup" / "setup.log").read_text()
    assert "pip install -e .[examples]: skipped" in log
