"""Parameters of the scale simulator: every cost, its default, and where the default comes from.

Pure module (no I/O). A parameter's value is resolved with the precedence

    command-line flag  >  ``--costs-from FILE`` block  >  built-in default

and :class:`Resolved` remembers, per key, which of the three supplied it and whether the
figure is *measured* (named in the costs block's ``"measured"`` list), *published* (taken
from a public report) or *assumed*.

Units: seconds for every ``*_s`` key; rates are per 1000 node-days (or per day for the
whole-job planned interruptions). Work is measured in "job-seconds": one second of the full
job (all GPUs) training at its nominal speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

POLICIES = ("checkpoint-restart", "replica-heal", "ftrain")

#: Allowed string values for the non-numeric parameters.
CHOICES = {
    "ec_placement": ("rack-aware", "packed"),
    "ftrain_replacement": ("spare", "shrink"),
}


@dataclass(frozen=True)
class Spec:
    """One parameter: default, constraint, the flag that sets it, and the default's origin."""

    key: str
    default: Any  # None = derived from other parameters (see ``derived``)
    kind: str  # "float" | "int" | "choice"
    check: str  # "pos" (> 0), "nonneg" (>= 0), "ge1" (int >= 1), "gt1" (> 1), "choice"
    flag: str
    basis: str  # "assumed" | "published" | "derived"
    note: str
    derived: Callable[[Mapping[str, Any]], float] | None = None
    policies: tuple[str, ...] = POLICIES


def _straggler_detect(v: Mapping[str, Any]) -> float:
    # the straggler detector's defaults: compute-time window of 20 steps, flagged in 2 consecutive windows.
    return 2 * 20 * float(v["step_time_s"])


def _commit_latency(v: Mapping[str, Any]) -> float:
    # Conservative: step s is committed by the end of step s+1 (capture, encode, transfer
    # are pipelined behind the next step's compute).
    return float(v["step_time_s"])


SPECS: tuple[Spec, ...] = (
    # ---- the job -------------------------------------------------------------------------
    Spec("step_time_s", 10.0, "float", "pos", "--step-time", "assumed",
         "large dense LLM step (Llama 3 405B: 16M-token batch on 16k H100s is 6-10 s)"),
    # ---- failures ------------------------------------------------------------------------
    Spec("node_failures_per_1000_days", 3.8, "float", "nonneg", "--node-failures-per-1000-days",
         "published",
         "Llama 3 paper: 419 unexpected interruptions in 54 days on 16,384 GPUs = 2,048 nodes "
         "-> 419/(54*2048)*1000 = 3.79"),
    Spec("planned_per_day", 1.0, "float", "nonneg", "--planned-per-day", "assumed",
         "whole-job planned interruptions (maintenance, upgrades); Llama 3 had 47 in 54 days "
         "(0.87/day), rounded up; each costs a blocking checkpoint + a full restart"),
    Spec("domain_failures_per_1000_days", 0.0, "float", "nonneg",
         "--domain-failures-per-1000-days", "assumed",
         "correlated outages of a failure domain (rack/ToR switch) taking all its nodes at once; "
         "off by default (Llama 3's figure above already includes them)"),
    Spec("domain_nodes", 4, "int", "ge1", "--domain-nodes", "assumed",
         "nodes per failure domain (rack)"),
    # ---- slow nodes ----------------------------------------------------------------------
    Spec("slow_per_1000_node_days", 1.0, "float", "nonneg", "--slow-per-1000-days", "assumed",
         "fail-slow episodes (thermal throttling, bad NIC/link, noisy neighbour); no public "
         "per-node rate, chosen as ~1/4 of the hard-failure rate; a sensitivity knob"),
    Spec("slow_duration_s", 7200.0, "float", "pos", "--slow-duration", "assumed",
         "mean length of an episode nobody handles (exponential); ~2 h until a human notices"),
    Spec("slowdown", 1.5, "float", "gt1", "--slowdown", "assumed",
         "step-time factor of a slow node; in sync training the whole job runs at this pace"),
    Spec("straggler_detect_s", None, "float", "nonneg", "--straggler-detect-time", "derived",
         "ftrain only: 2 consecutive windows of 20 steps (the detector's default) = 40 x step time",
         derived=_straggler_detect, policies=("ftrain",)),
    # ---- checkpoint-restart --------------------------------------------------------------
    Spec("checkpoint_write_s", 60.0, "float", "nonneg", "--checkpoint-write", "assumed",
         "blocking checkpoint of ~6.5 TB (405B params + fp32 Adam) at ~100 GB/s aggregate; "
         "also the final checkpoint before a planned interruption (all policies)"),
    Spec("restart_time_s", 600.0, "float", "nonneg", "--restart-time", "assumed",
         "full job restart: reschedule, container start, NCCL init, checkpoint load (~10 min); "
         "all policies pay it after a planned interruption or a fallback to disk"),
    Spec("checkpoint_interval_s", None, "float", "pos", "--checkpoint-interval", "derived",
         "checkpoint-restart: Daly's higher-order optimum for C, R and the job MTBF",
         policies=("checkpoint-restart",)),
    # ---- replica-heal (TorchFT-like) ------------------------------------------------------
    Spec("replica_group_nodes", 16, "int", "ge1", "--replica-group-nodes", "assumed",
         "nodes per model replica (TP8 x PP16 = 128 GPUs, Llama 3 405B layout); replica-heal "
         "heals one such group, ftrain --ftrain-replacement shrink drops one",
         policies=("replica-heal", "ftrain")),
    Spec("heal_time_s", 120.0, "float", "nonneg", "--heal-time", "assumed",
         "replica-heal: replacement node + process restart + group PG init + live weight "
         "transfer from a healthy replica", policies=("replica-heal",)),
    Spec("detection_s", 10.0, "float", "nonneg", "--detection-time", "published",
         "heartbeat dead-after timeout (as TorchFT/NVRx); replica-heal "
         "stalls the whole job this long per failure", policies=("replica-heal", "ftrain")),
    Spec("async_checkpoint_stall_s", 5.0, "float", "nonneg", "--async-checkpoint-stall",
         "assumed",
         "replica-heal: training stall of one asynchronous disk checkpoint (GPU->host copy)",
         policies=("replica-heal",)),
    Spec("disk_checkpoint_interval_s", 3600.0, "float", "pos", "--disk-checkpoint-interval",
         "assumed",
         "replica-heal and ftrain: background disk checkpoint period (the fallback point)",
         policies=("replica-heal", "ftrain")),
    # ---- ftrain --------------------------------------------------------------------------
    Spec("snapshot_stall_s", 0.1, "float", "nonneg", "--snapshot-cost", "assumed",
         "per-node training stall of one in-memory snapshot, 1% of the step (~400 MB/GPU "
         "device->host at ~50 GB/s is ~8 ms; 0.1 s leaves room for contention); replace by "
         "the measured figure from benchmarks/snapshot.py", policies=("ftrain",)),
    Spec("snapshot_every", 1, "int", "ge1", "--snapshot-every", "assumed",
         "ftrain: steps between in-memory snapshots", policies=("ftrain",)),
    Spec("snapshot_commit_s", None, "float", "nonneg", "--snapshot-commit-time", "derived",
         "ftrain: capture-to-committed latency; default one step (pipelined)",
         derived=_commit_latency, policies=("ftrain",)),
    Spec("recovery_time_s", 45.0, "float", "nonneg", "--recovery-time", "assumed",
         "ftrain: detection 10 s + new generation / process-group init ~20 s + restore from "
         "peers' RAM ~15 s; replace by benchmarks/recovery.py", policies=("ftrain",)),
    Spec("ftrain_disk_stall_s", 0.0, "float", "nonneg", "--ftrain-disk-stall", "assumed",
         "ftrain: stall of a disk checkpoint; 0 because the agent drains the committed "
         "in-memory snapshot to disk in the background", policies=("ftrain",)),
    Spec("ec_k", 4, "int", "ge1", "--ec", "assumed", "RS data shards (default RS(4,2))",
         policies=("ftrain",)),
    Spec("ec_m", 2, "int", "ge1", "--ec", "assumed", "RS parity shards", policies=("ftrain",)),
    Spec("ec_placement", "rack-aware", "choice", "choice", "--ec-placement", "assumed",
         "rack-aware: an EC group's k+m+1 nodes lie in distinct failure domains; packed: "
         "consecutive nodes", policies=("ftrain",)),
    Spec("ftrain_replacement", "spare", "choice", "choice", "--ftrain-replacement", "assumed",
         "spare: a hot spare joins in the recovery; shrink: continue without the failed "
         "replica until a replacement arrives, then grow", policies=("ftrain",)),
    Spec("replacement_delay_s", 1800.0, "float", "nonneg", "--replacement-delay", "assumed",
         "ftrain shrink mode: time until a replacement node is provisioned",
         policies=("ftrain",)),
)

SPEC_BY_KEY: dict[str, Spec] = {s.key: s for s in SPECS}
NUMERIC_KEYS = tuple(s.key for s in SPECS if s.kind != "choice")


class ParamError(ValueError):
    """A parameter value is invalid; the message names the key and its flag."""


def check_value(key: str, value: Any, where: str = "") -> Any:
    """Validate one value for ``key``; return it normalised (int/float/str).

    ``where`` prefixes the message (e.g. the costs file and line).
    """
    spec = SPEC_BY_KEY.get(key)
    prefix = f"{where}: " if where else ""
    if spec is None:
        raise ParamError(f"{prefix}unknown key {key!r}; valid keys: {', '.join(sorted(SPEC_BY_KEY))}")
    name = f"{key!r} ({spec.flag})"
    if spec.kind == "choice":
        if value not in CHOICES[key]:
            raise ParamError(f"{prefix}{name} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError(f"{prefix}{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ParamError(f"{prefix}{name} must be finite, got {value!r}")
    if spec.kind == "int":
        if float(value) != int(value):
            raise ParamError(f"{prefix}{name} must be an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    if spec.check == "pos" and not value > 0:
        raise ParamError(f"{prefix}{name} must be > 0, got {value!r}")
    if spec.check == "nonneg" and not value >= 0:
        raise ParamError(f"{prefix}{name} must be >= 0, got {value!r}")
    if spec.check == "ge1" and not value >= 1:
        raise ParamError(f"{prefix}{name} must be >= 1, got {value!r}")
    if spec.check == "gt1" and not value > 1:
        raise ParamError(f"{prefix}{name} must be > 1, got {value!r}")
    return value


@dataclass(frozen=True)
class Provenance:
    source: str  # "default" | "flag" | "file:PATH"
    basis: str  # "measured" | "published" | "assumed" | "derived" | "flag"
    note: str


@dataclass(frozen=True)
class Resolved:
    """Fully resolved parameters (every derived default filled in) plus provenance."""

    values: Mapping[str, Any]
    provenance: Mapping[str, Provenance]
    explicit: Mapping[str, Any] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    measured: frozenset[str] = frozenset()

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def with_values(self, **updates: Any) -> "Resolved":
        """A copy with some values set as if by flags (derived defaults are recomputed)."""
        explicit = dict(self.explicit)
        sources = dict(self.sources)
        for k, v in updates.items():
            if k not in SPEC_BY_KEY:
                raise ParamError(f"unknown key {k!r}")
            explicit[k] = v
            sources[k] = "flag"
        return resolve(explicit, sources, self.measured)


def resolve(
    explicit: Mapping[str, Any],
    sources: Mapping[str, str] | None = None,
    measured: tuple[str, ...] | list[str] | set[str] | frozenset[str] = (),
) -> Resolved:
    """Fill defaults (and derived defaults) around ``explicit`` values.

    ``sources`` maps a key to "flag" (the default for explicit keys) or "file:PATH"; keys in
    ``measured`` that came from a file are labelled measured, other file keys "assumed".
    """
    sources = dict(sources or {})
    measured = frozenset(measured)
    vals: dict[str, Any] = {}
    prov: dict[str, Provenance] = {}
    kept: dict[str, Any] = {}
    for spec in SPECS:
        v = explicit.get(spec.key)
        if v is not None:
            vals[spec.key] = kept[spec.key] = check_value(spec.key, v)
            src = sources.get(spec.key, "flag")
            if src.startswith("file:"):
                basis = "measured" if spec.key in measured else "assumed"
            else:
                basis = "flag"
            prov[spec.key] = Provenance(src, basis, spec.note)
        else:
            vals[spec.key] = spec.default
            prov[spec.key] = Provenance("default", spec.basis, spec.note)
    for spec in SPECS:
        if vals[spec.key] is None and spec.derived is not None:
            vals[spec.key] = float(spec.derived(vals))
    return Resolved(vals, prov, kept, {k: sources.get(k, "flag") for k in kept}, measured)


def defaults() -> Resolved:
    return resolve({})
