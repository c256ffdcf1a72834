"""What every `ftrain launch` backend shares: the embedded coordinator, the run loop (the job's end,
`--timeout`, a lost node replaced after `--replace-delay`), the agent's command line and teardown.

A backend (local processes, ssh, Ray) subclasses `Launcher` and says only how its agents start,
are watched and are stopped: `start_agent`, `watch_agents`, `drain_agents` and `stop_agents`.
Backends whose agents are local child processes (the agent itself, or its ssh client) share
`ProcessLauncher`: exit detection, fencing and killing by process group.
"""
from __future__ import annotations

import abc
import logging
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ftrain.config import JobSettings, agent_argv
from ftrain.coordinator.server import Coordinator

log = logging.getLogger("ftrain.launch")
DRAIN_S = 20.0  # how long agents get to leave on their own once the job ended


class Launcher(abc.ABC):
    """Runs one job: an embedded coordinator plus one agent per node, started by the backend."""

    def __init__(self, settings: JobSettings, nproc_per_node: int, command: list[str], *, replace: bool = True,
                 replace_delay_s: float = 1.0, metrics_port: int | None = None, coordinator_port: int = 0,
                 host: str = "127.0.0.1", token: str | None = None, timeout_s: float | None = None,
                 agent_metrics_port_base: int | None = None, spares: int = 0, log_level: str | None = None) -> None:
        settings.validate()
        if spares < 0:
            raise ValueError(f"--spares must be >= 0; got {spares}")
        if nproc_per_node < 1:
            raise ValueError(f"--nproc-per-node must be >= 1; got {nproc_per_node}")
        if not command:
            raise ValueError("ftrain launch needs the training script after `--`, e.g. -- examples/digits_mlp.py")
        self.settings = settings
        self.nproc = nproc_per_node
        self.command = command
        self.replace = replace
        self.replace_delay_s = replace_delay_s
        self.host = host
        self.token = token or secrets.token_urlsafe(24)
        self.timeout_s = timeout_s
        self.spares = spares  # hot spares: agents (and trainers) started up front that take a lost node's slot at once
        self.log_level = log_level or ""  # handed to every agent ("": the agent's default)
        # agent metrics: node i (start order, replacements continue the count) serves on base + i; with no
        # base but a coordinator --metrics-port, each agent takes a free port (listed by `ftrain status`)
        self.agent_metrics_port_base = agent_metrics_port_base
        self.agent_metrics = agent_metrics_port_base is not None or metrics_port is not None
        self.coordinator = Coordinator(settings, self.token, host=host, port=coordinator_port,
                                       metrics_port=metrics_port)
        self.started_agents = 0  # node ids are node0, node1, ... in start order
        self.replacements_due: list[float] = []

    # -- what a backend provides -------------------------------------------------------------------
    @abc.abstractmethod
    def start_agent(self) -> str:
        """Starts one more agent (a node); returns what to call it in the log."""

    @abc.abstractmethod
    def watch_agents(self, now: float) -> None:
        """Notices agents that ended while the job runs; `schedule_replacement` for a lost node."""

    @abc.abstractmethod
    def drain_agents(self, deadline: float) -> None:
        """The job ended: waits (until `deadline`) for the agents to leave on their own."""

    @abc.abstractmethod
    def stop_agents(self) -> None:
        """Kills every agent still running, with its trainers."""

    def prepare(self) -> None:
        """Runs before the coordinator starts (e.g. reserving the nodes' resources)."""

    # -- shared --------------------------------------------------------------------------------------
    def next_node(self) -> tuple[str, int]:
        """The id and index of the next agent to start."""
        index = self.started_agents
        self.started_agents += 1
        return f"node{index}", index

    def agent_metrics_port(self, index: int) -> int | None:
        """Node `index`'s agent serves /metrics on BASE+index, on a free port without a base, or not at all."""
        if not self.agent_metrics:
            return None
        return 0 if self.agent_metrics_port_base is None else self.agent_metrics_port_base + index

    def agent_args(self, node_id: str, index: int, host: str) -> list[str]:
        """`-m ftrain ... agent ...`: what the agent of node `node_id` runs (after a Python interpreter);
        it binds and advertises `host`. The job token is never in it."""
        return ["-m", "ftrain", *agent_argv(self.coordinator.address, self.nproc, self.settings.job_id, host,
                                            self.command, node_id=node_id, log_level=self.log_level,
                                            metrics_port=self.agent_metrics_port(index))]

    def schedule_replacement(self, now: float) -> None:
        """A lost node gets a new agent after `replace_delay_s` (unless replacement is off)."""
        if self.replace:
            self.replacements_due.append(now + self.replace_delay_s)

    def _start_due_replacements(self, now: float) -> None:
        for due in list(self.replacements_due):
            if now >= due:
                self.replacements_due.remove(due)
                log.warning("started replacement node %s", self.start_agent())

    def run(self, on_tick: Callable[["Launcher"], None] | None = None) -> int:
        """Runs the job to the end. Returns 0 only if it completed."""
        try:
            self.prepare()
            self.coordinator.start()
            deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
            for _ in range(self.settings.target_nodes + self.spares):
                self.start_agent()
            while True:
                state = self.coordinator.wait_done(timeout=0.2)
                if on_tick is not None:
                    on_tick(self)
                if state != "running":
                    break
                if deadline is not None and time.monotonic() > deadline:
                    self.coordinator.state.fail(f"launcher timeout of {self.timeout_s:.0f} s reached")
                    break
                now = time.monotonic()
                self.watch_agents(now)
                self._start_due_replacements(now)
            state = self.coordinator.state.job_state
            self.coordinator.wait_checkpoints()  # the last durable checkpoint first (agents stay for it)
            self.drain_agents(time.monotonic() + DRAIN_S)
            return 0 if state == "complete" else 1
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.stop_agents()
        self.coordinator.stop()


@dataclass
class AgentProcess:
    """An agent this machine started as a child process (the agent itself, or the ssh client that
    runs it remotely) in its own process group."""
    node_id: str
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    fenced: bool = False  # killed because the coordinator declared its node dead
    handled: bool = False  # its exit was dealt with


class ProcessLauncher(Launcher):
    """A launcher whose agents are local child processes, each in its own process group."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.agents: list[AgentProcess] = []

    def agent_exited(self, agent: AgentProcess, now: float) -> None:
        """Agent `agent`'s process ended while the job runs: by default the node is lost, and replaced."""
        log.warning("agent %s exited with %s", agent.node_id, agent.process.returncode)
        self.schedule_replacement(now)

    def watch_agents(self, now: float) -> None:
        self._fence_dead_nodes()
        for agent in self.agents:
            if not agent.handled and agent.process.poll() is not None:
                agent.handled = True
                self.agent_exited(agent, now)

    def _fence_dead_nodes(self) -> None:
        """A node the coordinator declared dead whose agent process is still there (frozen, say:
        SIGSTOP, a hung machine) is fenced: its whole process group is killed, so it can never come
        back into an old generation, and it is replaced like any lost node."""
        dead = self.coordinator.state.dead_nodes()
        for agent in self.agents:
            if agent.node_id in dead and not agent.fenced and agent.process.poll() is None:
                agent.fenced = True
                log.warning("node %s was declared dead but its agent still runs: fencing it (SIGKILL to its "
                            "process group)", agent.node_id)
                kill_group(agent.process)

    def drain_agents(self, deadline: float) -> None:
        for agent in self.agents:
            if agent.process.poll() is None:
                try:
                    agent.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass

    def stop_agents(self) -> None:
        self.kill_agents()

    def kill_agents(self) -> None:
        """SIGKILLs the process group of every agent still running (agent + trainers) and reaps it."""
        for agent in self.agents:
            if agent.process.poll() is None:
                kill_group(agent.process)
                agent.process.wait()


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the process group `process` leads (it was started in its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
