"""`ftrain launch --backend local`: an embedded coordinator plus N agent processes on this machine.

Each agent is a simulated node in its own process group, so `kill-node` (SIGKILL to the group)
takes the agent, its trainers and the shards it held. Like a cluster manager replacing a pod,
the launcher starts a fresh agent after `replace_delay_s` unless replacement is off.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from ftrain.agent.agent import die_with_parent
from ftrain.config import ENV_TOKEN, JobSettings
from ftrain.launch.base import AgentProcess, ProcessLauncher


class LocalLauncher(ProcessLauncher):
    """Agents as child processes of this one (`python -m ftrain agent`), one process group each."""

    def __init__(self, settings: JobSettings, nproc_per_node: int, command: list[str], *, agent_output: Any = None,
                 extra_env: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(settings, nproc_per_node, command, **kwargs)
        self.agent_output = agent_output  # a file for agents' and trainers' output (default: inherit)
        self.extra_env = dict(extra_env or {})

    def start_agent(self) -> str:
        node_id, index = self.next_node()
        env = dict(os.environ, **self.extra_env)
        env[ENV_TOKEN] = self.token  # through the environment, never the command line (visible in ps)
        output = self.agent_output
        # own session (kill-node = SIGKILL to the group); dies with the launcher (no orphaned nodes)
        process = subprocess.Popen([sys.executable, *self.agent_args(node_id, index, self.host)], env=env,
                                   start_new_session=True, stdout=output, stderr=output, preexec_fn=die_with_parent)
        self.agents.append(AgentProcess(node_id, process))
        return node_id
