"""Metrics: a real job scraped by a real Prometheus server, promtool on every endpoint, deploy files.

The Prometheus tests need the `prometheus` package from apt (Prometheus 2.42 + promtool). They
skip with a reason when the binaries are missing, unless FTRAIN_REQUIRE_PROMETHEUS=1 (CI), in
which case they fail.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from ftrain import metrics as metrics_mod
from ftrain.coordinator.machine import LostSteps
from ftrain.proto.ftrain.v1 import agent_pb2
from procs import REPO, kill_job, new_job_id

DEPLOY = REPO / "deploy"
KILL_STEP, SNAPSHOT_EVERY, STEPS = 50, 4, 130
AGENT_PORTS = 6  # 3 nodes + replacements


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` not found: `apt-get install prometheus` (Prometheus 2.42 + promtool)"
        if os.environ.get("FTRAIN_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message + " (FTRAIN_REQUIRE_PROMETHEUS=1)")
        pytest.skip(message)
    return path


def _free_ports(count: int) -> int:
    """First of `count` consecutive free ports on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count >= 65000:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no run of free ports found")


def _get(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.read().decode()


def _sample(text: str, name: str, labels: str = "") -> float | None:
    """Value of one sample in an exposition text (`labels` like 'kind="node"')."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.group(1))
    return None


# -- pure parts --------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_lost_steps_counts_each_redone_step_once() -> None:
    lost = LostSteps()
    assert lost.generation_formed(None, 0, -1) == 0           # fresh start
    lost.progress(0, 4)
    lost.progress(0, 8)
    assert lost.generation_formed(0, 1, 8) == 0               # everything done was committed
    lost.progress(1, 12)
    assert lost.generation_formed(1, 2, 8) == 4               # steps 9..12 are redone
    assert lost.progress(1, 14) == 2                          # a survivor's late report: 2 more
    assert lost.progress(1, 13) == 0                          # never counted twice
    assert lost.progress(2, 30) == 0                          # progress of the running generation
    assert lost.total == 6


@pytest.mark.timeout(30)
def test_trainer_reports_become_agent_metrics() -> None:
    node = metrics_mod.Metrics()
    sent: list[agent_pb2.TrainerMetrics] = []

    def deliver(message: agent_pb2.TrainerMetrics) -> None:
        sent.append(message)
        node.record_trainer_report(message)

    reporter = metrics_mod.TrainerReporter("", "secret-token", "job-a", 1, interval_s=60.0, send=deliver)
    reporter.state(rank=3, generation=2, world_size=4, step=7, committed_step=6)
    for _ in range(metrics_mod.TrainerReporter.MAX_VALUES + 5):
        reporter.step_done(0.02)
    reporter.stall(0.003)
    reporter.snapshot_stored(0.04, 1000, 1200)
    reporter.close()
    assert len(sent) == 2  # more values than one message takes: split, nothing lost
    text = generate_latest(node.registry).decode()
    assert _sample(text, "ftrain_step_duration_seconds_count") == metrics_mod.TrainerReporter.MAX_VALUES + 5
    assert _sample(text, "ftrain_snapshot_stall_seconds_count") == 1
    assert _sample(text, "ftrain_snapshot_duration_seconds_count") == 1
    assert _sample(text, "ftrain_snapshot_bytes_total") == 1000
    assert _sample(text, "ftrain_erasure_encode_bytes_total") == 1200
    assert (_sample(text, "ftrain_generation"), _sample(text, "ftrain_world_size"), _sample(text, "ftrain_step")) == (2, 4, 6)
    assert _sample(text, "ftrain_trainer_step", 'local_rank="1"') == 7
    assert "secret-token" not in text
    def unreachable(message: agent_pb2.TrainerMetrics) -> None:
        raise OSError("agent gone")

    failing = metrics_mod.TrainerReporter("", "t", "job-a", 0, interval_s=60.0, send=unreachable)
    failing.step_done(0.1)
    assert failing.flush() is False  # an unreachable agent drops figures, never raises into training
    failing.close()


@pytest.mark.timeout(60)
def test_deploy_files_are_valid() -> None:
    promtool = _binary("promtool")
    check = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    k8s = DEPLOY / "prometheus" / "prometheus-kubernetes.yml"
    check = subprocess.run([promtool, "check", "config", str(k8s)], capture_output=True, text=True)
    if "kubernetes_sd_configs not found" in check.stdout + check.stderr:
        # Debian builds Prometheus without Kubernetes discovery: check everything else (relabel rules)
        text = re.sub(r"kubernetes_sd_configs:\n(\s+)- role: pod\n",
                      lambda m: f"static_configs:\n{m.group(1)}- targets: ['127.0.0.1:9400']\n", k8s.read_text())
        assert "kubernetes_sd_configs" not in text
        copy = Path(os.environ.get("TMPDIR", "/tmp")) / f"ftrain-k8s-{os.getpid()}.yml"
        copy.write_text(text)
        try:
            check = subprocess.run([promtool, "check", "config", str(copy)], capture_output=True, text=True)
        finally:
            copy.unlink()
    assert check.returncode == 0, check.stdout + check.stderr
    dashboard = json.loads((DEPLOY / "grafana" / "ftrain-dashboard.json").read_text())
    known = {m.name for m in metrics_mod.Metrics().registry.collect()}
    used = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in re.findall(r"\b(ftrain_[a-z_]+)(?=[{\[])", target["expr"]):
                used.add(name)
                base = re.sub(r"_(total|bucket|count|sum)$", "", name)
                assert base in known, f"dashboard panel {panel['title']!r} uses unknown metric {name}"
    for required in ("ftrain_step_duration_seconds_count", "ftrain_snapshot_stall_seconds_bucket",
                     "ftrain_recoveries_total", "ftrain_straggler_score", "ftrain_update_staleness_bucket"):
        assert required in used, f"the dashboard lacks {required}"


# -- a real job under a real Prometheus --------------------------------------------------------------
JOB_SCRIPT = textwrap.dedent("""
    import argparse, time
    import torch
    from torch import nn
    import ftrain

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--sleep", type=float, default=0.02)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x = torch.randn(256, 8)
    y = (x.sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    session = ftrain.init(model, optimizer, dataset=torch.utils.data.TensorDataset(x, y), batch_size=16, seed=1)
    for step, (features, labels) in session.steps(args.steps):
        time.sleep(args.sleep)  # a steady step time, so the 1 s scrapes see every phase of the job
        nn.functional.cross_entropy(session.model(features), labels).backward()
        session.optimizer.step()
        session.optimizer.zero_grad()
    session.finish()
""")


@pytest.fixture
def prometheus(tmp_path: Path):
    """A Prometheus server on 127.0.0.1 scraping the coordinator and agent ports every second."""
    binary = _binary("prometheus")
    _binary("promtool")
    web, coordinator = _free_ports(1), _free_ports(1)
    agents = _free_ports(AGENT_PORTS)
    config = tmp_path / "prometheus.yml"
    config.write_text(textwrap.dedent(f"""
        global:
          scrape_interval: 1s
          scrape_timeout: 1s
          evaluation_interval: 1s
        scrape_configs:
          - job_name: ftrain-coordinator
            static_configs: [{{targets: ["127.0.0.1:{coordinator}"]}}]
          - job_name: ftrain-agent
            static_configs: [{{targets: [{", ".join(f'"127.0.0.1:{p}"' for p in range(agents, agents + AGENT_PORTS))}]}}]
    """))
    log = open(tmp_path / "prometheus.log", "w")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web}", "--storage.tsdb.retention.time=1h", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{web}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if "Ready" in _get(url + "/-/ready"):
                    break
            except (urllib.error.URLError, OSError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("Prometheus did not start:\n" + (tmp_path / "prometheus.log").read_text()[-3000:])
            time.sleep(0.2)
        yield {"url": url, "coordinator": coordinator, "agents": agents}
    finally:
        process.kill()  # by PID (its own session), even when the test failed
        process.wait(timeout=10)
        log.close()


def _query(prom: dict, expr: str, at: float) -> list[dict]:
    body = _get(f"{prom['url']}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"}))
    reply = json.loads(body)
    assert reply["status"] == "success", (expr, reply)
    return reply["data"]["result"]


def _scalar(prom: dict, expr: str, at: float) -> float:
    result = _query(prom, expr, at)
    assert result, f"no data for {expr}"
    return float(result[0]["value"][1])


def _series(prom: dict, expr: str, start: float, end: float) -> list[float]:
    body = _get(f"{prom['url']}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"}))
    reply = json.loads(body)
    assert reply["status"] == "success", reply
    assert len(reply["data"]["result"]) == 1, reply["data"]["result"]
    return [float(v) for _, v in reply["data"]["result"][0]["values"]]


@pytest.mark.prometheus
@pytest.mark.timeout(300)
def test_prometheus_sees_failure_recovery_stall_and_stragglers(prometheus: dict, tmp_path: Path) -> None:
    script = tmp_path / "steady_job.py"
    script.write_text(JOB_SCRIPT)
    job = new_job_id("prom")
    coordinator_url = f"http://127.0.0.1:{prometheus['coordinator']}/metrics"
    agent_url = f"http://127.0.0.1:{prometheus['agents']}/metrics"  # node0
    args = [sys.executable, "-m", "ftrain", "launch", "--nodes", "3", "--job-id", job,
            "--metrics-port", str(prometheus["coordinator"]),
            "--agent-metrics-port-base", str(prometheus["agents"]),
            "--snapshot-every", str(SNAPSHOT_EVERY), "--replace-delay", "3", "--timeout", "200",
            "--inject", f"kill-node:1@step={KILL_STEP}", "--inject", "slow-rank:2x3.0",
            "--", str(script), "--steps", str(STEPS), "--sleep", "0.02"]
    env = dict(os.environ, FTRAIN_JOB_ID=job, FTRAIN_TOKEN="metrics-test-token-5f1e")
    started = time.time()
    process = subprocess.Popen(args, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    expositions: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            if len(expositions) < 2:  # both endpoints once they show a running job
                try:
                    coordinator_text, agent_text = _get(coordinator_url), _get(agent_url)
                    if ((_sample(coordinator_text, "ftrain_step") or 0) > 0
                            and (_sample(agent_text, "ftrain_snapshot_stall_seconds_count") or 0) > 0):
                        expositions = {"coordinator": coordinator_text, "agent": agent_text}
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.3)
        if process.poll() is None:
            raise AssertionError("the job did not finish in time")
        output = process.stdout.read()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kill_job(job)
    ended = time.time()
    assert process.returncode == 0, output[-6000:]
    assert "metrics-test-token-5f1e" not in output

    # promtool lints both endpoint kinds' real output
    assert set(expositions) == {"coordinator", "agent"}, "never saw both endpoints with data"
    for name, text in expositions.items():
        assert "metrics-test-token-5f1e" not in text
        lint = subprocess.run([shutil.which("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0, f"promtool check metrics on the {name}: {lint.stdout}{lint.stderr}"

    time.sleep(2)  # the last scrapes land
    prom, at, window = prometheus, ended, f"[{int(ended - started) + 30}s]"
    coord = 'job="ftrain-coordinator"'
    agents = 'job="ftrain-agent"'
    # world size: 3, a dip to 2 when node1 died, 3 again once the replacement joined
    sizes = [v for v in _series(prom, f"ftrain_world_size{{{coord}}}", started, ended) if v > 0]
    assert 3 in sizes, sizes
    first_full = sizes.index(3)
    assert 2 in sizes[first_full:], f"no dip visible: {sizes}"
    dip = sizes.index(2, first_full)
    assert 3 in sizes[dip:], f"world size did not come back: {sizes}"
    # failures and recoveries rose from 0
    for expr in (f'ftrain_failures_total{{{coord},kind="node"}}', f"ftrain_recoveries_total{{{coord}}}"):
        assert _scalar(prom, f"min_over_time({expr}{window})", at) == 0, expr
        assert _scalar(prom, f"max_over_time({expr}{window})", at) >= 1, expr
    assert _scalar(prom, f"max_over_time(ftrain_recovery_duration_seconds_count{{{coord}}}{window})", at) >= 1
    assert _scalar(prom, f"max_over_time(ftrain_generation{{{coord}}}{window})", at) >= 1
    # lost steps: the survivors were at KILL_STEP; the restore step is a snapshot step (a multiple of 4)
    lost = _scalar(prom, f"max_over_time(ftrain_lost_steps_total{{{coord}}}{window})", at)
    assert lost > 0 and lost % SNAPSHOT_EVERY == KILL_STEP % SNAPSHOT_EVERY, lost
    # snapshot stall has samples: the job view and every node's own endpoint
    assert _scalar(prom, f"max_over_time(ftrain_snapshot_stall_seconds_count{{{coord}}}{window})", at) > 0
    per_node = _query(prom, f"max_over_time(ftrain_snapshot_stall_seconds_count{{{agents}}}{window}) > 0", at)
    assert len(per_node) >= 3, per_node  # node0, node2 and the replacement (node1's may be lost with it)
    per_node = _query(prom, f"max_over_time(ftrain_step_duration_seconds_count{{{agents}}}{window}) > 0", at)
    assert len(per_node) >= 3, per_node
    assert _query(prom, f"max_over_time(ftrain_erasure_encode_bytes_total{{{agents}}}{window}) > 0", at)
    assert _scalar(prom, f"max_over_time(ftrain_step{{{coord}}}{window})", at) > KILL_STEP
    assert _query(prom, f'max_over_time(ftrain_heartbeat_age_seconds{{{coord},node="node0"}}{window})', at)
    print(f"world sizes {sizes}; lost steps {lost}; job {ended - started:.1f} s")
    # the slow rank (3x compute) is flagged and scored
    assert _scalar(prom, f"max_over_time(ftrain_stragglers_total{{{coord}}}{window})", at) >= 1
    assert _scalar(prom, f'max_over_time(ftrain_straggler_score{{{coord},rank="2"}}{window})', at) > 1.5
    # every dashboard query is valid PromQL against this data; the main panels have data
    dashboard = json.loads((DEPLOY / "grafana" / "ftrain-dashboard.json").read_text())
    midpoint = started + (ended - started) * 0.6
    empty = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$ftrain_job", ".*")
            if not _query(prom, expr, midpoint):
                empty.append(panel["title"])
    score = _scalar(prom, 'max_over_time(ftrain_straggler_score{rank="2"}' + window + ")", at)
    print(f"straggler score of rank 2: {score:.2f}; dashboard panels without data: {empty}")
    for title in ("Step rate", "Snapshot stall (time the training loop waited)", "World size", "Recoveries"):
        assert title not in empty, f"dashboard panel {title!r} shows no data"
