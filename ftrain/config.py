"""Validated job configuration: `--ec`, `--inject` fault specs, and the trainer environment.

Pure parsing: every bad value raises `ConfigError` naming the field, what was wrong, and the fix.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

ENV_COORDINATOR = "FTRAIN_COORDINATOR"
ENV_JOB_ID = "FTRAIN_JOB_ID"
ENV_NODE_ID = "FTRAIN_NODE_ID"
ENV_LOCAL_RANK = "FTRAIN_LOCAL_RANK"
ENV_TOKEN = "FTRAIN_TOKEN"
TOKEN_METADATA_KEY = "x-ftrain-token"
PROTOCOL_VERSION = 2  # 2: statuses are enums (ftrain.v1 JobState, AssignmentStatus, ...), not strings
DEFAULT_HANG_TIMEOUT_S = 300.0  # a live rank may pause this long (an evaluation); frozen ones are caught by pulses


def agent_argv(coordinator: str, nproc: int, job_id: str, host: str, command: Sequence[str], *, node_id: str = "",
               metrics_port: int | str | None = None, log_level: str = "", extra: Sequence[str] = ()) -> list[str]:
    """The arguments after `ftrain` (or `python -m ftrain`) that every launcher and the operator
    start an agent with. The job token is never among them (it goes by environment or stdin)."""
    argv = ["--log-level", log_level] if log_level else []
    argv += ["agent", "--coordinator", coordinator, "--nproc-per-node", str(nproc)]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    argv += ["--host", host, "--job-id", job_id]
    if node_id:
        argv += ["--node-id", node_id]
    return argv + [*extra, "--", *command]

FAULT_KINDS = ("kill-rank", "kill-node", "hang-rank", "slow-rank", "corrupt-shard")
MODES = ("sync", "async")
RECOVERY_MODES = ("inprocess", "restart")
STRAGGLER_POLICIES = ("report", "rebalance", "evict")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


@dataclass(frozen=True)
class ErasureSpec:
    """`--ec K+M`: K data shards and M parity shards per snapshot blob."""

    k: int
    m: int

    def __str__(self) -> str:
        return f"{self.k}+{self.m}"


def parse_ec(spec: str) -> ErasureSpec:
    match = re.fullmatch(r"\s*(\d+)\s*\+\s*(\d+)\s*", spec or "")
    if not match:
        raise ConfigError(f"--ec: expected K+M with whole numbers, e.g. 4+2; got {spec!r}")
    k, m = int(match.group(1)), int(match.group(2))
    if k < 1:
        raise ConfigError(f"--ec: K (data shards) must be >= 1; got {spec!r}. Use e.g. 4+2")
    if k + m > 255:
        raise ConfigError(f"--ec: K+M must be <= 255 (GF(2^8) Reed-Solomon); got {spec!r}")
    return ErasureSpec(k, m)


@dataclass(frozen=True)
class FaultSpec:
    """One `--inject` fault: what, on which rank/node, and when (step) or how much (factor)."""

    kind: str
    target: int
    step: int | None = None
    factor: float | None = None
    raw: str = ""
    generation: int | None = None  # `@gen=G`: fires as the rank enters generation G, before it restores


_FAULT_RE = re.compile(
    r"^(?P<kind>[a-z-]+):(?P<target>\d+)(?:@step=(?P<step>\d+)|@gen=(?P<gen>\d+)|x(?P<factor>[0-9]*\.?[0-9]+))?$")


def parse_fault(spec: str) -> FaultSpec:
    text = (spec or "").strip()
    match = _FAULT_RE.match(text)
    if not match:
        raise ConfigError(
            f"--inject: cannot parse {spec!r}; expected KIND:TARGET@step=S (e.g. kill-node:1@step=20), "
            f"KIND:TARGET@gen=G (during the recovery into generation G, e.g. kill-rank:2@gen=1) "
            f"or slow-rank:RxF (e.g. slow-rank:1x3.0); kinds: {', '.join(FAULT_KINDS)}"
        )
    kind = match.group("kind")
    if kind not in FAULT_KINDS:
        raise ConfigError(f"--inject: unknown fault kind {kind!r} in {spec!r}; use one of {', '.join(FAULT_KINDS)}")
    target = int(match.group("target"))
    step = int(match.group("step")) if match.group("step") is not None else None
    factor = float(match.group("factor")) if match.group("factor") is not None else None
    generation = int(match.group("gen")) if match.group("gen") is not None else None
    if generation is not None:
        if kind not in ("kill-rank", "kill-node", "hang-rank"):
            raise ConfigError(f"--inject: @gen=G is for kill-rank, kill-node and hang-rank; got {spec!r}")
        if generation < 1:
            raise ConfigError(f"--inject: @gen=G needs G >= 1 (a recovery into generation G); got {spec!r}")
        return FaultSpec(kind=kind, target=target, generation=generation, raw=text)
    if kind == "slow-rank":
        if factor is None:
            raise ConfigError(f"--inject: slow-rank needs a factor, e.g. slow-rank:{target}x3.0; got {spec!r}")
        if factor < 1.0:
            raise ConfigError(f"--inject: slow-rank factor must be >= 1.0 (a slowdown); got {factor} in {spec!r}")
    else:
        if step is None:
            raise ConfigError(f"--inject: {kind} needs a step, e.g. {kind}:{target}@step=20; got {spec!r}")
        if factor is not None:
            raise ConfigError(f"--inject: only slow-rank takes a factor; use {kind}:{target}@step=S")
    return FaultSpec(kind=kind, target=target, step=step, factor=factor, raw=text)


DEFAULT_SNAPSHOT_MEMORY = "50%"
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
          "g": 1000**3, "gb": 1000**3, "gib": 1 << 30, "t": 1000**4, "tb": 1000**4, "tib": 1 << 40}


def snapshot_memory_bytes(spec: str, machine_bytes: int) -> int:
    """`--snapshot-memory`: the bytes an agent may hold for snapshots, from a size ("8GiB",
    "512MB", "1.5G", bytes) or a share of its machine's memory ("50%"; "" is the default, 50%)."""
    text = (spec or DEFAULT_SNAPSHOT_MEMORY).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%|[a-z]*)", text)
    if match is None or (match.group(2) != "%" and match.group(2) not in _UNITS):
        raise ConfigError(f"--snapshot-memory must be a size (8GiB, 512MB, bytes) or a share of the machine's "
                          f"memory (50%); got {spec!r}")
    value = float(match.group(1))
    if match.group(2) == "%":
        if not 0 < value <= 100:
            raise ConfigError(f"--snapshot-memory must be a share between 0% and 100%; got {spec!r}")
        return int(machine_bytes * value / 100)
    if value <= 0:
        raise ConfigError(f"--snapshot-memory must be above 0; got {spec!r}")
    return int(value * _UNITS[match.group(2)])


@dataclass
class JobSettings:
    """Everything the coordinator needs to run one job (validated)."""

    job_id: str = "ftrain-job"
    target_nodes: int = 1
    min_nodes: int = 1
    snapshot_every: int = 1
    ec: ErasureSpec = field(default_factory=lambda: ErasureSpec(4, 2))
    mode: str = "sync"
    strategy: str = ""
    inject: tuple[FaultSpec, ...] = ()
    replace_timeout_s: float = 60.0
    collective_timeout_s: float | None = None  # None: derived from the hang timeout (effective_collective_timeout_s)
    heartbeat_dead_after_s: float = 10.0
    compress: str = "none"
    hang_timeout_s: float = DEFAULT_HANG_TIMEOUT_S
    straggler_policy: str = "rebalance"
    pulse_silent_after_s: float = 6.0  # a trainer whose pulses stop this long is frozen (killed at once)
    recovery: str = "inprocess"        # "restart": every failure restarts every trainer (torchrun-style scripts)
    checkpoint_dir: str = ""           # the durable tier: agents write committed snapshots here ("" = off)
    checkpoint_every: int = 100        # steps between durable checkpoints (0: by time only)
    checkpoint_every_s: float = 0.0    # seconds between durable checkpoints (0: by steps only)
    checkpoint_keep: int = 2           # complete checkpoints kept
    checkpoint_dcp_every: int = 1      # every n-th checkpoint (and the last) also gets a DCP copy (0: none)
    resume_dir: str = ""               # start from the newest complete checkpoint here ("" = a fresh job)
    resume_optional: bool = False      # no checkpoint in resume_dir: start fresh instead of failing
    snapshot_memory: str = ""          # each agent's snapshot memory limit (snapshot_memory_bytes; "" = 50%)
    standby_trainers: bool = False     # agents keep a standby process per local rank (ftrain.agent.standby)

    def effective_collective_timeout_s(self, hang_timeout_s: float | None = None) -> float:
        """The collective timeout handed to a generation: the one set, else the hang timeout (as the
        watchdog applies it) plus the heartbeat dead time, so the watchdog always fires first."""
        if self.collective_timeout_s is not None:
            return self.collective_timeout_s
        return (hang_timeout_s or self.hang_timeout_s) + self.heartbeat_dead_after_s

    def validate(self) -> "JobSettings":
        if self.target_nodes < 1:
            raise ConfigError(f"--nodes must be >= 1; got {self.target_nodes}")
        if not 1 <= self.min_nodes <= self.target_nodes:
            raise ConfigError(f"--min-nodes must be between 1 and --nodes ({self.target_nodes}); got {self.min_nodes}")
        if self.snapshot_every < 1:
            raise ConfigError(f"--snapshot-every must be >= 1; got {self.snapshot_every}")
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.recovery not in RECOVERY_MODES:
            raise ConfigError(f"--recovery must be one of {', '.join(RECOVERY_MODES)}; got {self.recovery!r}")
        if self.recovery == "restart" and self.mode == "async":
            raise ConfigError("--recovery restart is for --mode sync (async workers never share a process group)")
        if self.compress not in ("none", "zstd"):
            raise ConfigError(f"--compress must be 'none' or 'zstd'; got {self.compress!r}")
        if self.heartbeat_dead_after_s < 2.0:
            raise ConfigError(f"--heartbeat-timeout must be >= 2 s (agents heartbeat every second); "
                              f"got {self.heartbeat_dead_after_s}")
        if self.hang_timeout_s <= 0:
            raise ConfigError(f"--hang-timeout must be > 0 s; got {self.hang_timeout_s}")
        if self.straggler_policy not in STRAGGLER_POLICIES:
            raise ConfigError(f"--straggler-policy must be one of {', '.join(STRAGGLER_POLICIES)}; "
                              f"got {self.straggler_policy!r}")
        if self.collective_timeout_s is not None and self.collective_timeout_s <= 0:
            raise ConfigError(f"collective timeout must be > 0 s; got {self.collective_timeout_s}")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.job_id):
            raise ConfigError(f"job id must be lowercase letters, digits and '-', 1-63 characters; got {self.job_id!r}")
        if self.checkpoint_dir:
            if self.checkpoint_every < 0 or self.checkpoint_every_s < 0:
                raise ConfigError("--checkpoint-every and --checkpoint-every-s must be >= 0")
            if self.checkpoint_every == 0 and self.checkpoint_every_s == 0:
                raise ConfigError("--checkpoint-dir needs --checkpoint-every N (steps) or --checkpoint-every-s T "
                                  "(seconds) above 0")
            if self.checkpoint_dcp_every < 0:
                raise ConfigError(f"--checkpoint-dcp-every must be >= 0 (0: no DCP copy); got "
                                  f"{self.checkpoint_dcp_every}")
            if self.checkpoint_keep < 1:
                raise ConfigError(f"--checkpoint-keep must be >= 1; got {self.checkpoint_keep}")
            if not os.path.isabs(self.checkpoint_dir):
                raise ConfigError(f"--checkpoint-dir must be an absolute path (agents may run elsewhere); "
                                  f"got {self.checkpoint_dir!r}")
        snapshot_memory_bytes(self.snapshot_memory, 1 << 30)  # the form only: the share is each agent's machine's
        if self.resume_dir and not os.path.isabs(self.resume_dir):
            raise ConfigError(f"--resume must be an absolute path; got {self.resume_dir!r}")
        for fault in self.inject:
            if fault.kind in ("kill-node", "corrupt-shard") and fault.target >= self.target_nodes:
                raise ConfigError(
                    f"--inject {fault.raw}: node index {fault.target} does not exist (nodes are 0..{self.target_nodes - 1})"
                )
        return self


@dataclass(frozen=True)
class TrainerEnv:
    """The environment the agent gives each trainer (docs/architecture.md, "Fixed interfaces")."""

    coordinator: str
    job_id: str
    node_id: str
    local_rank: int
    token: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "TrainerEnv | None":
        env = os.environ if environ is None else environ
        if not env.get(ENV_COORDINATOR):
            return None
        missing = [k for k in (ENV_JOB_ID, ENV_NODE_ID, ENV_LOCAL_RANK, ENV_TOKEN) if not env.get(k)]
        if missing:
            raise ConfigError(
                f"{ENV_COORDINATOR} is set but {', '.join(missing)} missing: start trainers through "
                f"`ftrain agent` / `ftrain launch`, or unset {ENV_COORDINATOR} to run as a single process"
            )
        try:
            local_rank = int(env[ENV_LOCAL_RANK])
        except ValueError:
            raise ConfigError(f"{ENV_LOCAL_RANK} must be a whole number; got {env[ENV_LOCAL_RANK]!r}") from None
        return cls(env[ENV_COORDINATOR], env[ENV_JOB_ID], env[ENV_NODE_ID], local_rank, env[ENV_TOKEN])


def parse_host_port(value: str, what: str = "--coordinator") -> tuple[str, int]:
    host, sep, port = (value or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: expected HOST:PORT (e.g. 127.0.0.1:29400); got {value!r}")
    return host, int(port)
