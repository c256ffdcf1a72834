"""`ftrain launch --backend ray`: an embedded coordinator here, one agent per Ray actor.

Ray is an optional extra (`pip install 'ftrain[ray]'`): it is imported only when this backend
runs. Each node is one actor, placed by a placement group (one bundle per node: `CPU`, and
`GPU` when `--gpus-per-node` > 0; STRICT_SPREAD on a cluster with a Ray node per agent, PACK
otherwise or when asked). Actors are named `{job_id}-agent{i}` in the `ftrain` namespace, so
operators (and tests) can find them with `ray.get_actor(name, namespace="ftrain")`.

The actor does not run the agent in the Ray worker: it starts the same bootstrap as the ssh
backend (`ftrain.launch.ssh.BOOTSTRAP`), which reads the job token from a pipe and runs
`python -m ftrain agent` in its own process group. So

* `kill-node` (the trainer SIGKILLs its process group) kills the agent and its trainers but
  not the Ray worker; the actor sees its agent die by a signal, waits `--replace-delay` and
  exits its worker, and Ray restarts the actor (`max_restarts`) - a lost node is a lost actor;
* when the actor's worker dies (`ray.kill(actor, no_restart=False)`, a crashed raylet) the pipe
  closes and the bootstrap kills the agent's process group, so no agent outlives its actor;
* either way the restarted actor starts a fresh agent under a new node id, which joins as the
  replacement and restores from the coordinated in-memory snapshot.

With `--no-replace` actors are not restarted and the job shrinks to the survivors.
"""
from __future__ import annotations

import json
import logging
import math
import os
import secrets
import subprocess
import sys
import threading
import time
from typing import Any, Sequence

from ftrain.config import ConfigError, JobSettings, agent_argv
from ftrain.launch.base import Launcher
from ftrain.launch.ssh import BOOTSTRAP, forwarded_env, parse_env_assignments

log = logging.getLogger("ftrain.launch.ray")

RAY_NAMESPACE = "ftrain"
PLACEMENTS = {"pack": "PACK", "spread": "SPREAD", "strict-spread": "STRICT_SPREAD", "strict-pack": "STRICT_PACK"}
_NODE_LOST = 128  # the bootstrap exits with 128 + N when its agent died of signal N


def actor_name(job_id: str, index: int) -> str:
    return f"{job_id}-agent{index}"


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray, an optional extra: pip install 'ftrain[ray]' "
                          "(or pip install 'ray>=2.9')") from None
    return ray


class AgentActor:
    """One node of the job inside Ray: supervises a bootstrap + `ftrain agent` process group."""

    def __init__(self, index: int, coordinator: str, token: str, job_id: str, nproc: int, command: list[str],
                 env: dict[str, str], cwd: str | None, replace: bool, replace_delay_s: float, log_level: str,
                 agent_host: str | None = None, agent_args: Sequence[str] = ()) -> None:
        import ray

        self.index = index
        self.replace = replace
        self.replace_delay_s = replace_delay_s
        self.host = agent_host or ray.util.get_node_ip_address()
        self.node_id = f"ray{index}-{secrets.token_hex(3)}"  # a restarted actor joins as a new node
        argv = [sys.executable, "-u", "-c", BOOTSTRAP, sys.executable, "-m", "ftrain",
                *agent_argv(coordinator, nproc, job_id, self.host, command, node_id=self.node_id,
                            log_level=log_level, extra=agent_args)]
        # own session: kill-node's SIGKILL to the trainers' process group never reaches this worker
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
        assert self.process.stdin is not None  # stdin=PIPE
        self.process.stdin.write((json.dumps({"token": token, "env": env, "cwd": cwd}) + "\n").encode())
        self.process.stdin.flush()
        self.exit_code: int | None = None
        self._done = threading.Event()
        threading.Thread(target=self._monitor, name="ftrain-agent-monitor", daemon=True).start()

    def __repr__(self) -> str:  # Ray prefixes the actor's log lines with this
        return f"ftrain-agent {getattr(self, 'node_id', '?')}"

    def _monitor(self) -> None:
        code = self.process.wait()
        if code >= _NODE_LOST and self.replace:
            # the node was lost (kill-node): lose the actor too, so Ray restarts it as the replacement
            print(f"ftrain: agent {self.node_id} died (signal {code - _NODE_LOST}); restarting this actor in "
                  f"{self.replace_delay_s:.1f} s", file=sys.stderr, flush=True)
            time.sleep(self.replace_delay_s)
            os._exit(1)
        self.exit_code = code
        self._done.set()

    def wait(self, timeout: float | None = None) -> int | None:
        """The agent's exit status (0: job complete) once it ends; None on timeout."""
        self._done.wait(timeout)
        return self.exit_code

    def info(self) -> dict[str, Any]:
        return {"index": self.index, "node_id": self.node_id, "host": self.host, "pid": os.getpid(),
                "bootstrap_pid": self.process.pid, "exit_code": self.exit_code}

    def stop(self) -> None:
        assert self.process.stdin is not None  # stdin=PIPE
        try:
            self.process.stdin.close()  # the bootstrap kills the agent's process group
        except OSError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


class RayLauncher(Launcher):
    """Agents as Ray actors in a placement group; Ray restarts a lost node's actor (no replacement
    schedule here)."""

    def __init__(self, settings: JobSettings, nproc_per_node: int, command: list[str], *,
                 ray_address: str | None = None, placement: str = "auto", cpus_per_node: float = 1.0,
                 gpus_per_node: float = 0, coordinator_host: str | None = None, agent_host: str | None = None,
                 remote_env: dict[str, str] | None = None, log_level: str | None = None,
                 ready_timeout_s: float = 120.0, **kwargs: Any) -> None:
        ray = require_ray()
        if placement not in ("auto", *PLACEMENTS):
            raise ConfigError(f"--ray-placement must be auto, {', '.join(PLACEMENTS)}; got {placement!r}")
        if cpus_per_node < 0 or gpus_per_node < 0 or cpus_per_node + gpus_per_node <= 0:
            raise ConfigError("--ray-cpus-per-node / --gpus-per-node: each agent actor must reserve some CPU or GPU")
        self.ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if ray_address:
                ray.init(address=ray_address, log_to_driver=True)
            else:  # a local Ray instance on loopback, big enough for the placement group
                cpus = max(os.cpu_count() or 1, math.ceil(settings.target_nodes * cpus_per_node))
                ray.init(num_cpus=cpus, num_gpus=None, _node_ip_address="127.0.0.1", include_dashboard=False,
                         log_to_driver=True)
            self._owns_ray = True
        try:
            # Ray maps 127.0.0.1 to the machine's routable address; when the whole cluster is this one
            # machine, the coordinator and the agents stay on loopback instead
            here = ray.util.get_node_ip_address()
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            self.single_machine = len(nodes) == 1 and nodes[0].get("NodeManagerAddress") == here
            if coordinator_host is None:
                coordinator_host = "127.0.0.1" if self.single_machine else here
            if agent_host is None and self.single_machine:
                agent_host = "127.0.0.1"
            super().__init__(settings, nproc_per_node, command, host=coordinator_host,
                             log_level=log_level or logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                             **kwargs)
        except BaseException:
            if self._owns_ray:
                ray.shutdown()
            raise
        self.placement = placement
        self.cpus_per_node = cpus_per_node
        self.gpus_per_node = gpus_per_node
        self.agent_host = agent_host
        self.ready_timeout_s = ready_timeout_s
        self.remote_env = forwarded_env()
        self.remote_env.setdefault("PYTHONUNBUFFERED", "1")
        self.remote_env.update(remote_env or {})
        self.placement_group: Any = None
        self.strategy = ""
        self.actors: list[Any] = []  # actor handles, index = node slot at launch
        self._waits: dict[int, Any] = {}
        self._reported: set[int] = set()

    # -- placement ---------------------------------------------------------------------------------
    def _choose_strategy(self) -> str:
        if self.placement != "auto":
            return PLACEMENTS[self.placement]
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        if self.settings.target_nodes > 1 and len(alive) >= self.settings.target_nodes:
            return "STRICT_SPREAD"  # one agent per machine: a lost machine loses one node
        return "PACK"

    def _bundle(self) -> dict[str, float]:
        bundle = {}
        if self.cpus_per_node > 0:
            bundle["CPU"] = self.cpus_per_node
        if self.gpus_per_node > 0:
            bundle["GPU"] = self.gpus_per_node
        return bundle

    def _create_placement_group(self) -> None:
        from ray.util.placement_group import placement_group

        self.strategy = self._choose_strategy()
        bundles = [self._bundle() for _ in range(self.settings.target_nodes)]
        self.placement_group = placement_group(bundles, strategy=self.strategy, name=f"{self.settings.job_id}-nodes")
        log.info("placement group: %d x %s, %s", len(bundles), bundles[0], self.strategy)
        try:
            self.ray.get(self.placement_group.ready(), timeout=self.ready_timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            raise ConfigError(
                f"Ray could not place {len(bundles)} agents of {bundles[0]} with {self.strategy} within "
                f"{self.ready_timeout_s:.0f} s; cluster resources: {self.ray.cluster_resources()} "
                "(lower --ray-cpus-per-node / --gpus-per-node, or --ray-placement pack)") from None

    # -- agents ------------------------------------------------------------------------------------
    def start_agent(self) -> str:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        index = len(self.actors)
        port = self.agent_metrics_port(index)
        agent_args = [] if port is None else ["--metrics-port", str(port)]
        remote = self.ray.remote(AgentActor).options(
            name=actor_name(self.settings.job_id, index), namespace=RAY_NAMESPACE,
            max_restarts=-1 if self.replace else 0, max_task_retries=-1 if self.replace else 0,
            max_concurrency=4, num_cpus=self.cpus_per_node, num_gpus=self.gpus_per_node,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.placement_group, placement_group_bundle_index=index),
        )
        actor = remote.remote(index, self.coordinator.address, self.token, self.settings.job_id, self.nproc,
                              self.command, self.remote_env, os.getcwd(), self.replace, self.replace_delay_s,
                              self.log_level, self.agent_host, agent_args)
        self.actors.append(actor)
        self._waits[index] = actor.wait.remote(None)
        return f"actor {actor_name(self.settings.job_id, index)}"

    def watch_agents(self, now: float) -> None:
        pending = [ref for i, ref in self._waits.items() if i not in self._reported]
        if not pending:
            return
        done, _ = self.ray.wait(pending, num_returns=len(pending), timeout=0)
        for index, ref in self._waits.items():
            if index in self._reported or ref not in done:
                continue
            self._reported.add(index)
            try:
                code = self.ray.get(ref)
                log.warning("agent actor %d: its agent exited with %s while the job runs", index, code)
            except self.ray.exceptions.RayActorError as error:
                log.warning("agent actor %d is gone for good: %s", index, str(error).splitlines()[0])

    def drain_agents(self, deadline: float) -> None:
        refs = [ref for i, ref in self._waits.items() if i not in self._reported]
        if refs:
            self.ray.wait(refs, num_returns=len(refs), timeout=max(0.1, deadline - time.monotonic()))

    def prepare(self) -> None:
        self._create_placement_group()

    def stop_agents(self) -> None:
        ray = self.ray
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)  # its worker dies; the bootstrap then kills the agent group
            except Exception as error:  # already gone
                log.debug("kill actor: %s", error)
        if self.placement_group is not None:
            try:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self.placement_group)
            except Exception as error:
                log.debug("remove placement group: %s", error)
            self.placement_group = None

    def shutdown(self) -> None:
        super().shutdown()
        if self._owns_ray:
            self.ray.shutdown()


def launcher_from_args(args: Any, settings: JobSettings, command: list[str], **common: Any) -> RayLauncher:
    """Builds the launcher from `ftrain launch --backend ray` arguments (`common`: Launcher's keywords)."""
    return RayLauncher(settings, args.nproc_per_node, command, ray_address=args.ray_address,
                       placement=args.ray_placement, cpus_per_node=args.ray_cpus_per_node,
                       gpus_per_node=args.gpus_per_node, coordinator_host=args.coordinator_host,
                       remote_env=parse_env_assignments(args.remote_env), log_level=args.log_level, **common)
