"""`ftrain launch --backend ssh`: hosts-file validation, and real jobs over real sshd "hosts".

The fixture starts three OpenSSH servers on 127.0.0.1 (different ports, generated keys, own
sshd_config) and kills them by PID afterwards. A job with a `kill-node` over them must end
bit-identical to a failure-free run; the job token must never show on a command line.
Skipped when sshd/ssh are not installed, unless FTRAIN_REQUIRE_SSH=1.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch

from ftrain.cli import main as ftrain_main
from ftrain.config import ConfigError, JobSettings
from ftrain.launch.ssh import (BOOTSTRAP, SshLauncher, forwarded_env, load_hosts, parse_env_assignments,
                               parse_hosts)
from procs import REPO, SCRIPTS, job_pids, kill_job, new_job_id, run_ftrain, wait_until
from ssh.sshd import REQUIRE_ENV, SshdCluster, missing_tools

pytestmark = pytest.mark.timeout(180)
STEPS = 30
REMOTE_ENV = ["--remote-env", f"PYTHONPATH={REPO}"]  # works without an installed ftrain too


# -- hosts file ---------------------------------------------------------------------------------
def test_hosts_file_lines_parse() -> None:
    hosts = parse_hosts(
        "# cluster\n"
        "gpu-node-1\n"
        "\n"
        "ubuntu@10.0.0.5:2222 python=/opt/venv/bin/python identity=~/.ssh/id_ed25519  # trailing comment\n"
        "root@[::1]:22 cwd=/srv/job addr=192.168.1.7\n"
        "'me@host.example' python='/path with space/python3'\n",
        source="hosts.txt")
    assert [(h.user, h.host, h.port, h.line) for h in hosts] == [
        (None, "gpu-node-1", None, 2), ("ubuntu", "10.0.0.5", 2222, 4), ("root", "::1", 22, 5),
        ("me", "host.example", None, 6)]
    assert hosts[1].python == "/opt/venv/bin/python"
    assert hosts[1].identity == os.path.expanduser("~/.ssh/id_ed25519")
    assert hosts[2].cwd == "/srv/job" and hosts[2].advertise == "192.168.1.7" and hosts[0].advertise == "gpu-node-1"
    assert hosts[3].python == "/path with space/python3"
    assert hosts[1].label == "ubuntu@10.0.0.5:2222"


@pytest.mark.parametrize("text, message", [
    ("host-a\nhost-b:99999\n", r"hosts\.txt:2: port '99999' must be a number in 1\.\.65535"),
    ("host-a:ssh\n", r"hosts\.txt:1: port 'ssh'"),
    ("host-a pyhton=/usr/bin/python3\n", r"hosts\.txt:1: unknown key 'pyhton' \(keys: python, identity, cwd, addr\)"),
    ("\n\nhost-a python\n", r"hosts\.txt:3: 'python' should be key=value"),
    ("host-a python=\n", r"hosts\.txt:1: python= needs a value"),
    ("host-a python=a python=b\n", r"hosts\.txt:1: python= given twice"),
    ("bad host!\n", r"hosts\.txt:1: 'bad' is not a host|hosts\.txt:1: 'host!'"),
    ("-oProxyCommand=x\n", r"hosts\.txt:1: '-oProxyCommand=x' is not a host"),
    ("a@b@c\n", r"hosts\.txt:1: 'a@b@c' is not a host"),
    ("host 'unterminated\n", r"hosts\.txt:1: cannot parse"),
    ("# only comments\n\n", r"hosts\.txt: no hosts"),
])
def test_hosts_file_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_hosts(text, source="hosts.txt")


def test_hosts_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_hosts(tmp_path / "nope")


def test_remote_env_assignments() -> None:
    assert parse_env_assignments(["A=1", "B_2=x=y"]) == {"A": "1", "B_2": "x=y"}
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_env_assignments(["1A=2"])
    with pytest.raises(ConfigError, match="FTRAIN_TOKEN"):
        parse_env_assignments(["FTRAIN_TOKEN=x"])


def test_forwarded_environment_never_carries_the_token() -> None:
    env = forwarded_env({"FTRAIN_TOKEN": "secret", "FTRAIN_TLS_CA": "/ca.pem", "FTRAIN_LOCAL_STEPS": "4",
                         "GRPC_VERBOSITY": "ERROR", "HOME": "/root"})
    assert env == {"FTRAIN_TLS_CA": "/ca.pem", "FTRAIN_LOCAL_STEPS": "4", "GRPC_VERBOSITY": "ERROR"}


def test_cli_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert ftrain_main(["launch", "--backend", "ssh", "--", "train.py"]) == 2
    assert "--backend ssh needs --hosts FILE" in capsys.readouterr().err
    assert ftrain_main(["launch", "--hosts", str(tmp_path / "h"), "--", "train.py"]) == 2
    assert "--hosts is read by --backend ssh only" in capsys.readouterr().err
    bad = tmp_path / "hosts"
    bad.write_text("node-a\nnode-b:0\n")
    assert ftrain_main(["launch", "--backend", "ssh", "--hosts", str(bad), "--", "train.py"]) == 2
    assert f"{bad}:2: port '0'" in capsys.readouterr().err
    assert ftrain_main(["launch", "--backend", "nomad", "--", "train.py"]) == 2
    assert "--backend must be local, ssh or ray" in capsys.readouterr().err


def test_remote_command_carries_no_token() -> None:
    settings = JobSettings(job_id="cmdline", target_nodes=2, min_nodes=2).validate()
    hosts = parse_hosts("me@10.1.2.3:2200 python=~/venv/bin/python identity=/k\nnode-b\n")
    launcher = SshLauncher(settings, 2, ["train.py", "--lr", "0.1"], hosts, coordinator_host="127.0.0.1",
                           ssh_options=["StrictHostKeyChecking=accept-new"])
    try:
        argv = launcher.ssh_argv(hosts[0]) + [launcher.remote_command(hosts[0], "node0")]
        assert argv[:2] == ["ssh", "-T"] and "BatchMode=yes" in argv
        assert argv[argv.index("-p") + 1] == "2200" and argv[argv.index("-l") + 1] == "me"
        assert argv[argv.index("-i") + 1] == "/k" and "StrictHostKeyChecking=accept-new" in argv
        assert argv[-2] == "10.1.2.3"
        remote = argv[-1]
        assert remote.startswith("exec ~/venv/bin/python -u -c ")
        assert "--host 10.1.2.3" in remote and "--node-id node0" in remote and "-- train.py --lr 0.1" in remote
        assert launcher.token not in " ".join(argv)
        assert launcher.token.encode() in launcher.bootstrap_message(hosts[0])  # it travels on stdin only
        compile(BOOTSTRAP, "bootstrap", "exec")
    finally:
        launcher.shutdown()


# -- real sshd ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    missing = missing_tools()
    if missing:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but OpenSSH is missing: {', '.join(missing)}")
        pytest.skip(f"OpenSSH not installed ({', '.join(missing)}); set {REQUIRE_ENV}=1 to make this an error")
    cluster = SshdCluster(tmp_path_factory.mktemp("sshd"), count=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def write_hosts(sshd: SshdCluster, path: Path) -> Path:
    # host 0 names its key in the file, the others get it from --ssh-identity
    lines = [sshd.host_line(0, python=sys.executable, identity=str(sshd.client_key)),
             sshd.host_line(1, python=sys.executable), sshd.host_line(2, python=sys.executable)]
    path.write_text("# three sshd instances on 127.0.0.1\n" + "\n".join(lines) + "\n")
    return path


def ledger_command(out: Path, steps: int = STEPS) -> list[str]:
    return [str(SCRIPTS / "ledger_job.py"), "--steps", str(steps), "--out", str(out)]


def token_on_command_lines(token: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(entry)
            except OSError:
                pass
    return found


def test_kill_node_over_ssh_bit_identical(sshd: SshdCluster, tmp_path: Path) -> None:
    hosts_file = write_hosts(sshd, tmp_path / "hosts")
    hosts = load_hosts(hosts_file)

    # failure-free reference, in-process, checking every few ticks that the token is on no command line
    ref_job = new_job_id("sshref")
    stream = io.StringIO()
    launcher = SshLauncher(JobSettings(job_id=ref_job, target_nodes=3, min_nodes=3).validate(), 1,
                           ledger_command(tmp_path / "ref.pt"), hosts, identity=str(sshd.client_key),
                           ssh_options=sshd.ssh_options()[1::2], remote_env={"PYTHONPATH": str(REPO)},
                           log_stream=stream, log_level="INFO", timeout_s=150)
    seen: dict[str, list] = {"leaks": [], "agents": []}
    ticks = [0]

    def check(current: SshLauncher) -> None:
        ticks[0] += 1
        if ticks[0] % 5 == 0:
            seen["leaks"] += token_on_command_lines(current.token)
            seen["agents"].append(sum(1 for a in current.agents if getattr(a, "ready", False)))

    try:
        assert launcher.run(on_tick=check) == 0, stream.getvalue()[-6000:]
    finally:
        kill_job(ref_job)
    assert not seen["leaks"], f"job token visible on the command line of pids {seen['leaks']}"
    assert max(seen["agents"]) == 3
    assert {a.host.port for a in launcher.agents} == set(sshd.ports)
    assert all(a.remote_pid for a in launcher.agents)
    assert re.search(rf"^\[node\d {re.escape(sshd.user)}@127\.0\.0\.1:\d+\] ", stream.getvalue(), re.M)
    assert wait_until(lambda: not job_pids(ref_job), 15), "remote agents outlived the job"
    reference = torch.load(tmp_path / "ref.pt")
    assert reference["generation"] == 0

    # the same job through the CLI, node 2 killed at step 13 and re-launched on its host
    job = new_job_id("sshkill")
    result = run_ftrain(["--log-level", "INFO", "launch", "--backend", "ssh", "--hosts", str(hosts_file),
                         "--ssh-identity", str(sshd.client_key), *sshd.ssh_options(), *REMOTE_ENV,
                         "--job-id", job, "--inject", "kill-node:2@step=13", "--timeout", "150", "--",
                         *ledger_command(tmp_path / "killed.pt")], job, timeout=170)
    assert result.returncode == 0, result.stdout[-8000:]
    lost = re.search(r"node (node\d) lost", result.stdout)
    assert lost, result.stdout[-6000:]
    started = dict(re.findall(r"starting agent (node\d+) on (\S+?)(?:\.\.\.)?(?:\s|$)", result.stdout))
    assert len(started) == 4, started
    assert started["node3"] == started[lost.group(1)], "the replacement did not start on the lost node's host"
    assert f"[node3 {started['node3']}]" in result.stdout
    killed = torch.load(tmp_path / "killed.pt")
    assert killed["generation"] >= 1 and killed["world_size"] == 3
    for key in reference["params"]:
        assert torch.equal(reference["params"][key], killed["params"][key]), f"{key} differs from the failure-free run"


def test_bad_remote_python_is_a_clear_error(sshd: SshdCluster, tmp_path: Path) -> None:
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(f"# bad interpreter\n{sshd.host_line(1, python='/nonexistent/bin/python3')}\n")
    job = new_job_id("sshbad")
    result = run_ftrain(["launch", "--backend", "ssh", "--hosts", str(hosts_file), "--replace-delay", "0.2",
                         "--ssh-identity", str(sshd.client_key), *sshd.ssh_options(), "--job-id", job, "--",
                         "train.py"], job, timeout=90)
    assert result.returncode == 1
    assert re.search(rf"job failed: could not run an agent on \S+:{sshd.ports[1]} \({re.escape(str(hosts_file))}:2\): "
                     r"ssh exited with 127: .*/nonexistent/bin/python3: No such file", result.stdout), result.stdout


def test_unreachable_host_is_a_clear_error(tmp_path: Path) -> None:
    if not shutil.which("ssh"):
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but the ssh client is missing (apt-get install openssh-client)")
        pytest.skip("no ssh client (apt-get install openssh-client)")
    hosts_file = tmp_path / "hosts"
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hosts_file.write_text(f"127.0.0.1:{port}\n")
    job = new_job_id("sshdown")
    result = run_ftrain(["launch", "--backend", "ssh", "--hosts", str(hosts_file), "--replace-delay", "0.2",
                         "--job-id", job, "--", "train.py"], job, timeout=90)
    assert result.returncode == 1
    assert re.search(rf"job failed: could not run an agent on 127\.0\.0\.1:{port} \({re.escape(str(hosts_file))}:1\): "
                     r"ssh exited with 255: .*Connection refused", result.stdout), result.stdout
