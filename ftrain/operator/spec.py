"""FTrainJob -> Kubernetes objects, and the reconcile plan. Pure: no kopf, no API calls.

Everything the operator decides lives here so it can be tested without an API server:

- :class:`JobSpec` parses an FTrainJob ``spec`` (defaults applied the way the CRD does),
  :func:`validate` finds what the OpenAPI schema cannot express (cross-field rules);
- ``*_manifest`` functions build the token Secret, the coordinator Service and Pod, the worker Pods;
- :func:`plan` compares a job with the pods that exist and returns what to create, what to delete
  and the new ``status`` (phase, restarts, conditions, ...).

Naming: the coordinator Service is ``<job>-coordinator``; pods are ``<job>-coordinator-<attempt>``
and ``<job>-worker-<index>-<attempt>``; a replacement gets the next attempt number, so it has a new
name, and ``status.restarts`` is the sum of attempts over all roles.
"""
from __future__ import annotations

import datetime as _dt
import posixpath
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, overload

from ftrain.config import (ENV_COORDINATOR, ENV_JOB_ID, ENV_NODE_ID, ENV_TOKEN, RECOVERY_MODES, ConfigError,
                           agent_argv, snapshot_memory_bytes)

GROUP = "ftrain.dev"
VERSION = "v1alpha1"
PLURAL = "ftrainjobs"
KIND = "FTrainJob"
API_VERSION = f"{GROUP}/{VERSION}"

COORDINATOR_PORT = 29400
METRICS_PORT = 9400

# Labels on everything the operator creates.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "ftrain-operator"
LABEL_JOB = "ftrain.dev/job-name"
LABEL_ROLE = "ftrain.dev/role"
LABEL_INDEX = "ftrain.dev/replica-index"
LABEL_ATTEMPT = "ftrain.dev/attempt"
ROLE_COORDINATOR = "coordinator"
ROLE_WORKER = "worker"

TOKEN_KEY = "token"

# Environment given to the coordinator and the workers (the agent passes the FTRAIN_* trainer
# environment of docs/architecture.md, 'Fixed interfaces', on to each trainer). Job settings travel as CLI flags.
ENV_NODE_INDEX = "FTRAIN_NODE_INDEX"
ENV_POD_IP = "FTRAIN_POD_IP"
ENV_POD_NAME = "FTRAIN_POD_NAME"
# The coordinator and agents bind and advertise the pod IP (peers and trainers connect to it
# directly); Kubernetes expands $(VAR) in a container's command from its env.
POD_IP_REF = f"$({ENV_POD_IP})"

PHASE_PENDING = "Pending"
PHASE_RUNNING = "Running"
PHASE_RESTARTING = "Restarting"
PHASE_SUCCEEDED = "Succeeded"
PHASE_FAILED = "Failed"
PHASES = (PHASE_PENDING, PHASE_RUNNING, PHASE_RESTARTING, PHASE_SUCCEEDED, PHASE_FAILED)

COND_CREATED = "Created"
REASON_INVALID = "InvalidSpec"
REASON_BACKOFF = "BackoffLimitExceeded"

MODES = ("sync", "async")
RECOVERY_DEFAULT = "inprocess"  # spec.recovery (RECOVERY_MODES: inprocess | restart)
# The durable tier (spec.checkpoint): the CRD's defaults, and the pod volume a claimName becomes.
CHECKPOINT_EVERY_STEPS = 100
CHECKPOINT_EVERY_SECONDS = 0.0
CHECKPOINT_KEEP = 2
CHECKPOINT_DCP_EVERY = 1
CHECKPOINT_VOLUME = "checkpoint"
# A Service name is a DNS-1035 label (<= 63 chars); "<job>-coordinator" must fit.
MAX_JOB_NAME = 63 - len("-coordinator")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class SpecError(ValueError):
    """The FTrainJob spec is invalid; the message says which field and why."""


@overload
def _int(spec: Mapping[str, Any], key: str, default: int, where: str) -> int: ...


@overload
def _int(spec: Mapping[str, Any], key: str, default: None, where: str) -> int | None: ...


def _int(spec: Mapping[str, Any], key: str, default: int | None, where: str) -> int | None:
    value = spec.get(key)
    if value is None:  # absent or null (as `or {}` treats the objects above): the default
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}{key} must be an integer; got {value!r}")
    return value


def _number(spec: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = spec.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"{where}{key} must be a number; got {value!r}")
    return float(value)


def _str(spec: Mapping[str, Any], key: str, where: str) -> str:
    value = spec.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SpecError(f"{where}{key} must be a string; got {value!r}")
    return value


def _bool(spec: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = spec.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise SpecError(f"{where}{key} must be a boolean; got {value!r}")
    return value


def default_erasure(replicas: int) -> tuple[int, int]:
    """Default RS(k, m) for a job of ``replicas`` nodes: shards go to the *other* nodes.

    1 node: no peers (snapshots stay in local memory, k=m=0); 2 nodes: k=1, m=0 (a full copy on the
    peer); 3-6 nodes: m=1; 7+ nodes: m=2; k = min(4, peers - m).
    """
    peers = replicas - 1
    if peers <= 0:
        return 0, 0
    m = 0 if peers == 1 else (1 if peers <= 5 else 2)
    return min(4, peers - m), m


@dataclass(frozen=True)
class JobSpec:
    image: str
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    replicas: int = 1
    min_replicas: int = 1
    nproc_per_node: int = 1
    resources: Mapping[str, Any] = field(default_factory=dict)
    mode: str = "sync"
    strategy: str = ""
    recovery: str = RECOVERY_DEFAULT  # spec.recovery: "restart" restarts every trainer at every failure
    standby_trainers: bool = False  # spec.standbyTrainers: agents keep a warm process per local rank
    snapshot_every: int = 1
    snapshot_memory: str = ""  # spec.snapshot.memory: each agent's snapshot memory limit ("" = the agent's 50%)
    data_shards: int = 0
    parity_shards: int = 0
    erasure_explicit: bool = False
    backoff_limit: int | None = None
    env: tuple[Mapping[str, Any], ...] = ()
    image_pull_policy: str | None = None
    image_pull_secrets: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    service_account_name: str | None = None
    # spec.checkpoint: "" = no durable tier; else the absolute path it is mounted at in every pod.
    checkpoint_dir: str = ""
    checkpoint_every: int = CHECKPOINT_EVERY_STEPS
    checkpoint_every_s: float = CHECKPOINT_EVERY_SECONDS
    checkpoint_keep: int = CHECKPOINT_KEEP
    checkpoint_dcp_every: int = CHECKPOINT_DCP_EVERY
    checkpoint_claim: str = ""  # a PersistentVolumeClaim mounted at checkpoint_dir ("" = the user mounts it)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None) -> "JobSpec":
        """Parse a spec with the CRD's defaults; raise :class:`SpecError` on a type error.

        The API server already enforces the schema; this re-checks the basics so the pure
        functions are safe on any input (e.g. a spec written before a CRD upgrade).
        """
        if not isinstance(spec, Mapping):
            raise SpecError("spec is missing")
        image = spec.get("image")
        if not isinstance(image, str) or not image:
            raise SpecError("spec.image is required: the container image with ftrain installed")
        command = spec.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command):
            raise SpecError("spec.command is required: a non-empty list of strings, e.g. [python, train.py]")
        args = spec.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise SpecError("spec.args must be a list of strings")
        nodes = spec.get("nodes") or {}
        if not isinstance(nodes, Mapping):
            raise SpecError("spec.nodes must be an object with replicas/minReplicas")
        replicas = _int(nodes, "replicas", 1, "spec.nodes.")
        min_replicas = _int(nodes, "minReplicas", None, "spec.nodes.")
        nproc = _int(spec, "nprocPerNode", 1, "spec.")
        snapshot = spec.get("snapshot") or {}
        if not isinstance(snapshot, Mapping):
            raise SpecError("spec.snapshot must be an object")
        every = _int(snapshot, "everySteps", 1, "spec.snapshot.")
        snapshot_memory = _str(snapshot, "memory", "spec.snapshot.")
        k = _int(snapshot, "dataShards", None, "spec.snapshot.")
        m = _int(snapshot, "parityShards", None, "spec.snapshot.")
        explicit = k is not None or m is not None
        dk, dm = default_erasure(replicas)
        if k is None:
            if m is None:
                k, m = dk, dm
            else:
                k = max(1, (replicas - 1) - m)
        elif m is None:
            m = max(0, min(dm, (replicas - 1) - k))
        run_policy = spec.get("runPolicy") or {}
        backoff = _int(run_policy, "backoffLimit", None, "spec.runPolicy.") if isinstance(run_policy, Mapping) else None
        env = spec.get("env") or []
        if not isinstance(env, list) or not all(isinstance(e, Mapping) and e.get("name") for e in env):
            raise SpecError("spec.env must be a list of {name, value|valueFrom}")
        resources = spec.get("resources") or {}
        if not isinstance(resources, Mapping):
            raise SpecError("spec.resources must be an object with requests/limits")
        mode = spec.get("mode") or "sync"
        strategy = spec.get("strategy") or ""
        if not isinstance(strategy, str):
            raise SpecError("spec.strategy must be a string")
        recovery = _str(spec, "recovery", "spec.") or RECOVERY_DEFAULT
        standby = _bool(spec, "standbyTrainers", False, "spec.")
        checkpoint = spec.get("checkpoint")  # absent or null: no durable tier (the CRD has no default)
        ckpt: dict[str, Any] = {}
        if checkpoint is not None:
            if not isinstance(checkpoint, Mapping):
                raise SpecError("spec.checkpoint must be an object with dir/everySteps/everySeconds/keep/dcpEvery/"
                                "claimName")
            where = "spec.checkpoint."
            ckpt = {
                "checkpoint_dir": _str(checkpoint, "dir", where),
                "checkpoint_every": _int(checkpoint, "everySteps", CHECKPOINT_EVERY_STEPS, where),
                "checkpoint_every_s": _number(checkpoint, "everySeconds", CHECKPOINT_EVERY_SECONDS, where),
                "checkpoint_keep": _int(checkpoint, "keep", CHECKPOINT_KEEP, where),
                "checkpoint_dcp_every": _int(checkpoint, "dcpEvery", CHECKPOINT_DCP_EVERY, where),
                "checkpoint_claim": _str(checkpoint, "claimName", where),
            }
            if not ckpt["checkpoint_dir"]:
                raise SpecError("spec.checkpoint.dir is required when spec.checkpoint is set: the absolute path "
                                "where the checkpoint volume is mounted in every pod, e.g. /ckpt")
        return cls(
            image=image,
            command=tuple(command),
            args=tuple(args),
            replicas=replicas,
            min_replicas=min_replicas if min_replicas is not None else replicas,
            nproc_per_node=nproc,
            resources=dict(resources),
            mode=mode,
            strategy=strategy,
            recovery=recovery,
            standby_trainers=standby,
            snapshot_every=every,
            snapshot_memory=snapshot_memory,
            data_shards=k,
            parity_shards=m,
            erasure_explicit=explicit,
            backoff_limit=backoff,
            env=tuple(dict(e) for e in env),
            image_pull_policy=spec.get("imagePullPolicy"),
            image_pull_secrets=tuple(spec.get("imagePullSecrets") or ()),
            node_selector=dict(spec.get("nodeSelector") or {}),
            tolerations=tuple(spec.get("tolerations") or ()),
            service_account_name=spec.get("serviceAccountName"),
            **ckpt,
        )

    @property
    def erasure(self) -> str:
        """``K+M`` as `ftrain launch --ec` takes it; empty when the job has a single node."""
        return f"{self.data_shards}+{self.parity_shards}" if self.data_shards > 0 else ""


def validate(spec: JobSpec, name: str = "") -> list[str]:
    """Cross-field rules the CRD schema cannot express. Returns messages; empty means valid."""
    errors: list[str] = []
    if name:
        if len(name) > MAX_JOB_NAME:
            errors.append(f"metadata.name {name!r} is {len(name)} characters; at most {MAX_JOB_NAME} "
                          f"(the coordinator Service '<name>-coordinator' must be a 63-character DNS label)")
        elif not _DNS1035.match(name):
            errors.append(f"metadata.name {name!r} must be a DNS-1035 label (lowercase letters, digits, '-', "
                          f"starting with a letter) because it names the coordinator Service")
    if spec.replicas < 1:
        errors.append(f"spec.nodes.replicas must be >= 1; got {spec.replicas}")
    if spec.min_replicas < 1:
        errors.append(f"spec.nodes.minReplicas must be >= 1; got {spec.min_replicas}")
    if spec.min_replicas > spec.replicas:
        errors.append(f"spec.nodes.minReplicas ({spec.min_replicas}) must be <= spec.nodes.replicas ({spec.replicas})")
    if spec.nproc_per_node < 1:
        errors.append(f"spec.nprocPerNode must be >= 1; got {spec.nproc_per_node}")
    if spec.mode not in MODES:
        errors.append(f"spec.mode must be one of {', '.join(MODES)}; got {spec.mode!r}")
    if spec.recovery not in RECOVERY_MODES:
        errors.append(f"spec.recovery must be one of {', '.join(RECOVERY_MODES)}; got {spec.recovery!r}")
    elif spec.recovery == "restart" and spec.mode == "async":
        errors.append("spec.recovery restart is for spec.mode sync (async workers never share a process group); "
                      "use recovery: inprocess with mode: async")
    if spec.snapshot_every < 1:
        errors.append(f"spec.snapshot.everySteps must be >= 1; got {spec.snapshot_every}")
    if spec.snapshot_memory:
        try:  # the form only: a share ("50%") is of each agent's own pod / machine memory
            snapshot_memory_bytes(spec.snapshot_memory, 1 << 30)
        except ConfigError as e:
            msg = str(e)
            msg = (msg.replace("--snapshot-memory", "spec.snapshot.memory", 1) if msg.startswith("--snapshot-memory")
                   else f"spec.snapshot.memory: {msg}")
            if re.fullmatch(r"\s*\d+(\.\d+)?\s*[KMGTkmgt]i\s*", spec.snapshot_memory):
                msg += f" (for the Kubernetes quantity {spec.snapshot_memory.strip()}, write {spec.snapshot_memory.strip()}B)"
            errors.append(msg)
    k, m, n = spec.data_shards, spec.parity_shards, spec.replicas
    if spec.erasure_explicit:
        if m < 0:
            errors.append(f"spec.snapshot.parityShards must be >= 0; got {m}")
        if k < 1:
            errors.append(f"spec.snapshot.dataShards must be >= 1; got {k}")
        if m >= n:
            errors.append(
                f"spec.snapshot.parityShards ({m}) must be less than spec.nodes.replicas ({n}): "
                f"each shard of a snapshot lives on a different node, so {m} parity shards need more than {m} nodes"
            )
        elif k + m > n - 1:
            errors.append(
                f"spec.snapshot.dataShards + parityShards ({k}+{m}={k + m}) must be <= spec.nodes.replicas - 1 "
                f"({n - 1}): a node's snapshot shards are placed on the {n - 1} other nodes; "
                f"lower dataShards/parityShards or add nodes"
            )
    if spec.checkpoint_dir:
        if not posixpath.isabs(spec.checkpoint_dir):
            errors.append(f"spec.checkpoint.dir must be an absolute path (it is mounted at the same path in the "
                          f"coordinator and every worker pod); got {spec.checkpoint_dir!r}")
        if spec.checkpoint_every < 0:
            errors.append(f"spec.checkpoint.everySteps must be >= 0; got {spec.checkpoint_every}")
        if spec.checkpoint_every_s < 0:
            errors.append(f"spec.checkpoint.everySeconds must be >= 0; got {spec.checkpoint_every_s:g}")
        if spec.checkpoint_every == 0 and spec.checkpoint_every_s == 0:
            errors.append("spec.checkpoint.everySteps and spec.checkpoint.everySeconds must not both be 0: "
                          "set everySteps (steps between checkpoints) or everySeconds (time between them)")
        if spec.checkpoint_keep < 1:
            errors.append(f"spec.checkpoint.keep must be >= 1; got {spec.checkpoint_keep}")
        if spec.checkpoint_dcp_every < 0:
            errors.append(f"spec.checkpoint.dcpEvery must be >= 0 (0: no DCP copy); got {spec.checkpoint_dcp_every}")
    if spec.backoff_limit is not None and spec.backoff_limit < 0:
        errors.append(f"spec.runPolicy.backoffLimit must be >= 0; got {spec.backoff_limit}")
    reserved = {ENV_COORDINATOR, ENV_JOB_ID, ENV_NODE_ID, ENV_TOKEN} & {e.get("name") for e in spec.env}
    if reserved:
        errors.append(f"spec.env must not set {', '.join(sorted(reserved))}: the operator sets them")
    return errors


# --------------------------------------------------------------------------- names and labels

def service_name(job_name: str) -> str:
    return f"{job_name}-coordinator"


def secret_name(job_name: str) -> str:
    return f"{job_name}-token"


def coordinator_pod_name(job_name: str, attempt: int) -> str:
    return f"{job_name}-coordinator-{attempt}"


def worker_pod_name(job_name: str, index: int, attempt: int) -> str:
    return f"{job_name}-worker-{index}-{attempt}"


def coordinator_address(job_name: str, namespace: str) -> str:
    return f"{service_name(job_name)}.{namespace}.svc:{COORDINATOR_PORT}"


def job_labels(job_name: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_JOB: job_name}


def job_selector(job_name: str) -> str:
    """Label selector matching everything the operator created for one job."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_JOB}={job_name}"


def owner_reference(job: Mapping[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(job: Mapping[str, Any], name: str, extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    labels = job_labels(job["metadata"]["name"])
    labels.update(extra_labels or {})
    return {
        "name": name,
        "namespace": job["metadata"]["namespace"],
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }


# --------------------------------------------------------------------------- manifests

def new_token() -> str:
    return secrets.token_urlsafe(32)


def secret_manifest(job: Mapping[str, Any], token: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(job, secret_name(job["metadata"]["name"])),
        "type": "Opaque",
        "stringData": {TOKEN_KEY: token or new_token()},
    }


def service_manifest(job: Mapping[str, Any]) -> dict[str, Any]:
    name = job["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, service_name(name)),
        "spec": {
            "type": "ClusterIP",
            "selector": {**job_labels(name), LABEL_ROLE: ROLE_COORDINATOR},
            # Agents must reach the coordinator as soon as its process listens.
            "publishNotReadyAddresses": True,
            "ports": [
                {"name": "grpc", "port": COORDINATOR_PORT, "targetPort": COORDINATOR_PORT, "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT, "protocol": "TCP"},
            ],
        },
    }


def _common_env(job: Mapping[str, Any], spec: JobSpec) -> list[dict[str, Any]]:
    name = job["metadata"]["name"]
    return [
        {"name": ENV_JOB_ID, "value": name},
        {"name": ENV_COORDINATOR, "value": coordinator_address(name, job["metadata"]["namespace"])},
        {"name": ENV_TOKEN, "valueFrom": {"secretKeyRef": {"name": secret_name(name), "key": TOKEN_KEY}}},
        {"name": ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]


def _pod_spec(spec: JobSpec, container: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = {
        # The operator replaces failed pods itself (with a new name), so the kubelet never restarts.
        "restartPolicy": "Never",
        "containers": [container],
        # DataLoader workers hand batches to their trainer through shared memory: give /dev/shm real room
        # (the container default is 64 MiB).
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        "enableServiceLinks": False,
    }
    if spec.checkpoint_dir and spec.checkpoint_claim:
        # The durable tier: the coordinator scans it for --resume, the agents write to it.
        pod["volumes"].append({"name": CHECKPOINT_VOLUME,
                               "persistentVolumeClaim": {"claimName": spec.checkpoint_claim}})
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [dict(s) for s in spec.image_pull_secrets]
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    return pod


def _container(spec: JobSpec, name: str, command: list[str], env: list[dict[str, Any]],
               ports: list[dict[str, Any]], resources: Mapping[str, Any] | None) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "image": spec.image,
        "command": command,
        "env": env + [dict(e) for e in spec.env],
        "ports": ports,
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if spec.checkpoint_dir and spec.checkpoint_claim:
        c["volumeMounts"].append({"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint_dir})
    if spec.image_pull_policy:
        c["imagePullPolicy"] = spec.image_pull_policy
    if resources:
        c["resources"] = dict(resources)
    return c


def coordinator_command(job_name: str, spec: JobSpec) -> list[str]:
    """``ftrain coordinator --port 29400 --metrics-port 9400`` plus the job's settings."""
    cmd = ["ftrain", "coordinator", "--host", POD_IP_REF, "--port", str(COORDINATOR_PORT),
           "--metrics-port", str(METRICS_PORT), "--job-id", job_name,
           "--nodes", str(spec.replicas), "--min-nodes", str(spec.min_replicas), "--mode", spec.mode,
           "--snapshot-every", str(spec.snapshot_every)]
    if spec.strategy:
        cmd += ["--strategy", spec.strategy]
    if spec.erasure:
        cmd += ["--ec", spec.erasure]
    if spec.recovery != RECOVERY_DEFAULT:
        cmd += ["--recovery", spec.recovery]
    if spec.standby_trainers:
        cmd += ["--standby-trainers"]
    if spec.snapshot_memory:
        cmd += ["--snapshot-memory", spec.snapshot_memory]
    if spec.checkpoint_dir:
        # The durable tier, mounted at the same path in every pod (so the agents need no
        # --checkpoint-dir of their own). --resume --resume-if-any: a job (re-)created with this dir
        # starts from its newest complete checkpoint, or fresh when it holds none.
        cmd += ["--checkpoint-dir", spec.checkpoint_dir, "--checkpoint-every", str(spec.checkpoint_every),
                "--checkpoint-every-s", repr(spec.checkpoint_every_s), "--checkpoint-keep", str(spec.checkpoint_keep),
                "--checkpoint-dcp-every", str(spec.checkpoint_dcp_every),
                "--resume", spec.checkpoint_dir, "--resume-if-any"]
    return cmd


def worker_command(job_name: str, namespace: str, spec: JobSpec, pod_name: str = "") -> list[str]:
    """``ftrain agent --coordinator <svc>:29400 --nproc-per-node P ... -- <command> <args>``."""
    return ["ftrain", *agent_argv(coordinator_address(job_name, namespace), spec.nproc_per_node, job_name,
                                  POD_IP_REF, [*spec.command, *spec.args], node_id=pod_name,
                                  metrics_port=METRICS_PORT)]


def _prometheus_annotations() -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}


def coordinator_pod_manifest(job: Mapping[str, Any], spec: JobSpec, attempt: int) -> dict[str, Any]:
    name = job["metadata"]["name"]
    meta = _meta(job, coordinator_pod_name(name, attempt),
                 {LABEL_ROLE: ROLE_COORDINATOR, LABEL_ATTEMPT: str(attempt)})
    meta["annotations"] = _prometheus_annotations()
    container = _container(
        spec, "coordinator", coordinator_command(name, spec), _common_env(job, spec),
        [{"name": "grpc", "containerPort": COORDINATOR_PORT}, {"name": "metrics", "containerPort": METRICS_PORT}],
        None,
    )
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": _pod_spec(spec, container)}


def worker_pod_manifest(job: Mapping[str, Any], spec: JobSpec, index: int, attempt: int) -> dict[str, Any]:
    name = job["metadata"]["name"]
    namespace = job["metadata"]["namespace"]
    pod_name = worker_pod_name(name, index, attempt)
    meta = _meta(job, pod_name, {LABEL_ROLE: ROLE_WORKER, LABEL_INDEX: str(index), LABEL_ATTEMPT: str(attempt)})
    meta["annotations"] = _prometheus_annotations()
    env = _common_env(job, spec) + [
        {"name": ENV_NODE_ID, "value": pod_name},
        {"name": ENV_NODE_INDEX, "value": str(index)},
    ]
    container = _container(spec, "worker", worker_command(name, namespace, spec, pod_name), env,
                           [{"name": "metrics", "containerPort": METRICS_PORT}], spec.resources)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": _pod_spec(spec, container)}


# --------------------------------------------------------------------------- pods -> plan

def _pod_phase(pod: Mapping[str, Any]) -> str:
    return ((pod.get("status") or {}).get("phase")) or "Pending"


def _labels(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("labels") or {}


def _attempt(pod: Mapping[str, Any]) -> int:
    try:
        return int(_labels(pod).get(LABEL_ATTEMPT, "0"))
    except ValueError:
        return 0


def _is_live(pod: Mapping[str, Any]) -> bool:
    """A pod that is (or may become) a working member: not finished, not being deleted."""
    return _pod_phase(pod) not in ("Succeeded", "Failed") and not (pod.get("metadata") or {}).get("deletionTimestamp")


def coordinator_running(pods: Iterable[Mapping[str, Any]]) -> bool:
    """Is a live coordinator pod in phase Running (so its status is worth asking for)?"""
    return any(role_key(p) == ROLE_COORDINATOR and _pod_phase(p) == "Running" and _is_live(p) for p in pods)


def role_key(pod: Mapping[str, Any]) -> str | None:
    """"coordinator" or the worker's replica index as a string; None for foreign pods."""
    labels = _labels(pod)
    role = labels.get(LABEL_ROLE)
    if role == ROLE_COORDINATOR:
        return ROLE_COORDINATOR
    if role == ROLE_WORKER and labels.get(LABEL_INDEX, "").isdigit():
        return labels[LABEL_INDEX]
    return None


@dataclass
class Plan:
    """What one reconcile pass should do; :func:`plan` fills it, the reconciler executes it."""

    create: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    need_children: bool = False  # create Secret + Service if missing
    coordinator_running: bool = False
    valid: bool = True


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict[str, Any]], ctype: str, status: bool, reason: str, message: str,
                  now: str) -> list[dict[str, Any]]:
    """Return conditions with ``ctype`` set; lastTransitionTime changes only when status flips."""
    value = "True" if status else "False"
    out = [dict(c) for c in conditions]
    for c in out:
        if c.get("type") == ctype:
            if (c.get("status"), c.get("reason"), c.get("message")) == (value, reason, message):
                return out  # unchanged: no timestamp churn, no needless status patch
            if c.get("status") != value:
                c["lastTransitionTime"] = now
            c.update(status=value, reason=reason, message=message, lastUpdateTime=now)
            return out
    out.append({"type": ctype, "status": value, "reason": reason, "message": message,
                "lastUpdateTime": now, "lastTransitionTime": now})
    return out


def _phase_conditions(conditions: list[dict[str, Any]], phase: str, reason: str, message: str,
                      now: str) -> list[dict[str, Any]]:
    """Exactly one of Running/Restarting/Succeeded/Failed is True (none while Pending)."""
    for ctype in (PHASE_RUNNING, PHASE_RESTARTING, PHASE_SUCCEEDED, PHASE_FAILED):
        if ctype == phase:
            conditions = set_condition(conditions, ctype, True, reason, message, now)
        elif any(c.get("type") == ctype and c.get("status") == "True" for c in conditions):
            conditions = set_condition(conditions, ctype, False, reason, f"job is {phase}", now)
    return conditions


def plan(job: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], *,
         coordinator_info: Mapping[str, Any] | None = None, now: str | None = None) -> Plan:
    """Decide one reconcile pass for ``job`` given the pods that exist for it.

    ``coordinator_info`` is the coordinator's own report (keys ``generation``, ``world_size``,
    ``last_committed_step``), or None when it is not reachable: then those status fields keep
    their previous values.
    """
    now = now or _now()
    meta = job["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    prior: Mapping[str, Any] = job.get("status") or {}
    conditions = list(prior.get("conditions") or [])
    out = Plan()
    status: dict[str, Any] = {
        "observedGeneration": meta.get("generation", 0),
        "coordinatorAddress": coordinator_address(name, namespace),
        "generation": int(prior.get("generation", 0) or 0),
        "worldSize": int(prior.get("worldSize", 0) or 0),
        "lastCommittedStep": int(prior.get("lastCommittedStep", 0) or 0),
    }

    try:
        spec = JobSpec.from_dict(job.get("spec"))
        errors = validate(spec, name)
    except SpecError as e:
        spec, errors = None, [str(e)]
    if errors:
        message = "invalid FTrainJob spec: " + "; ".join(errors)
        status.update(phase=PHASE_FAILED, restarts=int(prior.get("restarts", 0) or 0),
                      conditions=_phase_conditions(conditions, PHASE_FAILED, REASON_INVALID, message, now))
        out.valid = False
        out.status = status
        if not (prior.get("phase") == PHASE_FAILED and _has_reason(conditions, PHASE_FAILED, REASON_INVALID, message)):
            out.events.append(("Warning", REASON_INVALID, message))
        return out
    assert spec is not None

    pods = [p for p in pods if role_key(p) is not None]
    by_role: dict[str, list[Mapping[str, Any]]] = {}
    for p in pods:
        by_role.setdefault(role_key(p), []).append(p)  # type: ignore[arg-type]

    # Attempt counters: the larger of what status remembers and what the pods' labels say.
    attempts: dict[str, int] = {str(k): int(v) for k, v in (prior.get("attempts") or {}).items()}
    for key, group in by_role.items():
        attempts[key] = max(attempts.get(key, 0), max(_attempt(p) for p in group))

    terminal = prior.get("phase") == PHASE_SUCCEEDED or (
        prior.get("phase") == PHASE_FAILED and _has_reason(conditions, PHASE_FAILED, REASON_BACKOFF))
    out.need_children = not terminal
    restarts = sum(attempts.values())
    replaced: list[str] = []
    backoff_hit = False

    def ensure(key: str, make) -> None:
        nonlocal restarts, backoff_hit
        group = by_role.get(key, [])
        if any(_is_live(p) for p in group) or any(_pod_phase(p) == "Succeeded" for p in group) or terminal:
            return
        if key in attempts or group:
            # A replacement: its predecessor failed or was deleted.
            if spec.backoff_limit is not None and restarts + 1 > spec.backoff_limit:
                backoff_hit = True
                return
            attempt = attempts.get(key, 0) + 1
            restarts += 1
            previous = sorted(group, key=_attempt)[-1] if group else None
            why = (f"{previous['metadata']['name']} {_pod_phase(previous)}"
                   + (f" ({_failure_reason(previous)})" if _failure_reason(previous) else "")
                   if previous else "its pod was deleted")
            pod = make(attempt)
            replaced.append(pod["metadata"]["name"])
            out.events.append(("Warning", "PodReplaced",
                               f"{'coordinator' if key == ROLE_COORDINATOR else 'worker ' + key}: {why}; "
                               f"created {pod['metadata']['name']}"))
        else:
            attempt = 0
            pod = make(attempt)
        attempts[key] = attempt
        out.create.append(pod)

    ensure(ROLE_COORDINATOR, lambda a: coordinator_pod_manifest(job, spec, a))
    for i in range(spec.replicas):
        ensure(str(i), lambda a, i=i: worker_pod_manifest(job, spec, i, a))

    # Housekeeping: keep only the newest failed pod of each role (for `kubectl logs`), drop
    # workers beyond spec.nodes.replicas (scale-down).
    for key, group in by_role.items():
        if key != ROLE_COORDINATOR and int(key) >= spec.replicas:
            out.delete_pods += [p["metadata"]["name"] for p in group if not (p["metadata"].get("deletionTimestamp"))]
            continue
        failed = sorted((p for p in group if _pod_phase(p) == "Failed"), key=_attempt)
        out.delete_pods += [p["metadata"]["name"] for p in failed[:-1] if not p["metadata"].get("deletionTimestamp")]
    restarts = sum(attempts.values())

    # Counts per role, Kubeflow-style.
    def counts(group: list[Mapping[str, Any]]) -> dict[str, int]:
        return {
            "active": sum(1 for p in group if _is_live(p)),
            "succeeded": sum(1 for p in group if _pod_phase(p) == "Succeeded"),
            "failed": sum(1 for p in group if _pod_phase(p) == "Failed"),
        }
    workers = [p for k, g in by_role.items() if k != ROLE_COORDINATOR and int(k) < spec.replicas for p in g]
    status["replicaStatuses"] = {"Coordinator": counts(by_role.get(ROLE_COORDINATOR, [])), "Worker": counts(workers)}
    status["attempts"] = attempts
    status["restarts"] = restarts

    coord_running = any(_pod_phase(p) == "Running" and _is_live(p) for p in by_role.get(ROLE_COORDINATOR, []))
    out.coordinator_running = coord_running
    running_workers = sum(
        1 for i in range(spec.replicas)
        if any(_pod_phase(p) == "Running" and _is_live(p) for p in by_role.get(str(i), [])))
    done_workers = sum(
        1 for i in range(spec.replicas)
        if any(_pod_phase(p) == "Succeeded" for p in by_role.get(str(i), [])))
    replacement_pending = bool(replaced) or any(
        _attempt(p) > 0 and _is_live(p) and _pod_phase(p) != "Running" for g in by_role.values() for p in g)

    if coordinator_info:
        for src, dst in (("generation", "generation"), ("world_size", "worldSize"),
                         ("last_committed_step", "lastCommittedStep")):
            value = coordinator_info.get(src)
            if isinstance(value, int) and not isinstance(value, bool):
                status[dst] = value

    if not any(c.get("type") == COND_CREATED for c in conditions):
        conditions = set_condition(conditions, COND_CREATED, True, "JobCreated",
                                   f"FTrainJob {name}: coordinator and {spec.replicas} worker pod(s) created", now)

    if terminal:
        phase = prior.get("phase")
        status["phase"] = phase
        status["conditions"] = conditions
        out.status = status
        return out
    if backoff_hit:
        phase, reason = PHASE_FAILED, REASON_BACKOFF
        message = (f"pod replacements exceeded spec.runPolicy.backoffLimit ({spec.backoff_limit}); "
                   f"restarts so far: {restarts}")
        out.events.append(("Warning", REASON_BACKOFF, message))
    elif done_workers == spec.replicas:
        phase, reason, message = PHASE_SUCCEEDED, "JobSucceeded", f"all {spec.replicas} worker(s) completed"
    elif replacement_pending and (prior.get("phase") in (PHASE_RUNNING, PHASE_RESTARTING) or restarts > 0):
        phase, reason = PHASE_RESTARTING, "PodReplaced"
        message = (f"{restarts} restart(s); replacement(s) starting; "
                   f"{running_workers}/{spec.replicas} worker(s) running (min {spec.min_replicas})")
    elif coord_running and running_workers >= spec.min_replicas:
        phase, reason = PHASE_RUNNING, "JobRunning"
        message = f"{running_workers}/{spec.replicas} worker(s) running (min {spec.min_replicas})"
    else:
        phase, reason = PHASE_PENDING, "PodsPending"
        message = (f"waiting for pods: coordinator {'running' if coord_running else 'not running'}, "
                   f"{running_workers}/{spec.replicas} worker(s) running (min {spec.min_replicas})")
    if phase == PHASE_PENDING:
        for ctype in (PHASE_RUNNING, PHASE_RESTARTING, PHASE_FAILED):
            if any(c.get("type") == ctype and c.get("status") == "True" for c in conditions):
                conditions = set_condition(conditions, ctype, False, reason, message, now)
    else:
        conditions = _phase_conditions(conditions, phase, reason, message, now)
    status["phase"] = phase
    status["conditions"] = conditions
    out.status = status
    return out


def _has_reason(conditions: Iterable[Mapping[str, Any]], ctype: str, reason: str, message: str | None = None) -> bool:
    return any(c.get("type") == ctype and c.get("status") == "True" and c.get("reason") == reason
               and (message is None or c.get("message") == message) for c in conditions)


def _failure_reason(pod: Mapping[str, Any] | None) -> str:
    if not pod:
        return ""
    st = pod.get("status") or {}
    parts = [st.get("reason") or "", st.get("message") or ""]
    for cs in st.get("containerStatuses") or []:
        term = ((cs.get("state") or {}).get("terminated") or {})
        if term:
            parts.append(f"exit code {term.get('exitCode')}" + (f" {term['reason']}" if term.get("reason") else ""))
    return ", ".join(p for p in parts if p)
