"""`ftrain launch --backend local`: an embedded coordinator plus N agent processes on this machine.

Each agent is a simulated node in its own process group, so `kill-node` (SIGKILL to the group)
takes the agent, its trainers and the shards it held. Like a cluster manager replacing a pod,
the launcher starts a fresh agent after `replace_delay_s` unless replacement is off.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ftrain.agent.agent import die_with_parent
from ftrain.config import ENV_TOKEN, JobSettings, agent_argv
from ftrain.coordinator.server import Coordinator

log = logging.getLogger("ftrain.launch")


@dataclass
class AgentProcess:
    node_id: str
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)


class LocalLauncher:
    def __init__(self, settings: JobSettings, nproc_per_node: int, command: list[str], *, replace: bool = True,
                 replace_delay_s: float = 1.0, metrics_port: int | None = None, coordinator_port: int = 0,
                 host: str = "127.0.0.1", token: str | None = None, agent_output: Any = None,
                 extra_env: dict[str, str] | None = None, timeout_s: float | None = None,
                 agent_metrics_port_base: int | None = None, spares: int = 0) -> None:
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
        self.agent_output = agent_output  # a file for agents' and trainers' output (default: inherit)
        self.extra_env = dict(extra_env or {})
        self.timeout_s = timeout_s
        self.spares = spares  # hot spares: agents (and trainers) started up front that take a lost node's slot at once
        # agent metrics: node i (spawn order, replacements continue the count) serves on base + i; with no
        # base but a coordinator --metrics-port, each agent takes a free port (listed by `ftrain status`)
        self.agent_metrics_port_base = agent_metrics_port_base
        self.agent_metrics = agent_metrics_port_base is not None or metrics_port is not None
        self.coordinator = Coordinator(settings, self.token, host=host, port=coordinator_port,
                                       metrics_port=metrics_port)
        self.agents: list[AgentProcess] = []
        self._next_node = 0
        self._replacements: list[float] = []

    def agent_metrics_port(self, index: int) -> int | None:
        """Node `index`'s agent serves /metrics on BASE+index, on a free port without a base, or not at all."""
        if not self.agent_metrics:
            return None
        return 0 if self.agent_metrics_port_base is None else self.agent_metrics_port_base + index

    def _spawn_agent(self) -> AgentProcess:
        node_id = f"node{self._next_node}"
        self._next_node += 1
        env = dict(os.environ, **self.extra_env)
        env[ENV_TOKEN] = self.token  # through the environment, never the command line (visible in ps)
        cmd = [sys.executable, "-m", "ftrain", *agent_argv(
            self.coordinator.address, self.nproc, self.settings.job_id, self.host, self.command, node_id=node_id,
            metrics_port=self.agent_metrics_port(self._next_node - 1))]
        output = self.agent_output
        # own session (kill-node = SIGKILL to the group); dies with the launcher (no orphaned nodes)
        process = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=output, stderr=output,
                                   preexec_fn=die_with_parent)
        agent = AgentProcess(node_id, process)
        self.agents.append(agent)
        return agent

    def run(self, on_tick: Callable[["LocalLauncher"], None] | None = None) -> int:
        """Runs the job to the end. Returns 0 only if it completed."""
        self.coordinator.start()
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        try:
            for _ in range(self.settings.target_nodes + self.spares):
                self._spawn_agent()
            while True:
                state = self.coordinator.wait_done(timeout=0.2)
                if on_tick is not None:
                    on_tick(self)
                if state != "running":
                    break
                if deadline is not None and time.monotonic() > deadline:
                    self.coordinator.state.fail(f"launcher timeout of {self.timeout_s:.0f} s reached")
                    break
                self._watch_agents()
            return self._drain()
        finally:
            self.shutdown()

    def _fence_dead_nodes(self) -> None:
        """A node the coordinator declared dead whose agent process is still there (frozen, say:
        SIGSTOP, a hung machine) is fenced: its whole process group is killed, so it can never come
        back into an old generation, and it is replaced like any lost node."""
        with self.coordinator.state.cond:
            nodes = self.coordinator.state.machine.membership.nodes
            dead = {node_id for node_id, node in nodes.items() if not node.alive}
        for agent in self.agents:
            if agent.node_id in dead and agent.process.poll() is None and not getattr(agent, "fenced", False):
                agent.fenced = True  # type: ignore[attr-defined]
                log.warning("node %s was declared dead but its agent still runs: fencing it (SIGKILL to its "
                            "process group)", agent.node_id)
                try:
                    os.killpg(agent.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _watch_agents(self) -> None:
        self._fence_dead_nodes()
        now = time.monotonic()
        for agent in list(self.agents):
            code = agent.process.poll()
            if code is None or getattr(agent, "handled", False):
                continue
            agent.handled = True  # type: ignore[attr-defined]
            log.warning("agent %s exited with %s", agent.node_id, code)
            if self.replace:
                self._replacements.append(now + self.replace_delay_s)
        for due in list(self._replacements):
            if now >= due:
                self._replacements.remove(due)
                replacement = self._spawn_agent()
                log.warning("started replacement node %s", replacement.node_id)

    def _drain(self) -> int:
        state = self.coordinator.state.job_state
        self.coordinator.wait_checkpoints()  # the last durable checkpoint first (agents stay for it)
        deadline = time.monotonic() + 20.0
        for agent in self.agents:
            if agent.process.poll() is None:
                try:
                    agent.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        return 0 if state == "complete" else 1

    def kill_agents(self) -> None:
        """SIGKILLs the process group of every agent still running (agent + trainers) and reaps it."""
        for agent in self.agents:
            if agent.process.poll() is None:
                try:
                    os.killpg(agent.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                agent.process.wait()

    def shutdown(self) -> None:
        self.kill_agents()
        self.coordinator.stop()
