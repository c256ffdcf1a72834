"""The operator's pure part (ftrain.operator.spec, coordinator_status): no API server needed.

These run in the default test suite (no `k8s` marker).
"""
from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import pytest

from ftrain.operator import spec as S
from ftrain.operator.coordinator_status import parse_status_json, read_coordinator_status, read_coordinator_status_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "k8s" / "examples").glob("*.yaml"))
NOW = "2025-01-01T00:00:00Z"


def job(name: str = "j", ns: str = "ns", status: dict | None = None, **spec) -> dict:
    body = {"image": "img", "command": ["python", "train.py"], "nodes": {"replicas": 2}}
    body.update(spec)
    out = {"apiVersion": S.API_VERSION, "kind": S.KIND,
           "metadata": {"name": name, "namespace": ns, "uid": "uid-1", "generation": 1}, "spec": body}
    if status is not None:
        out["status"] = status
    return out


def pod(manifest: dict, phase: str = "Pending", **status) -> dict:
    p = {"metadata": dict(manifest["metadata"]), "spec": manifest["spec"], "status": {"phase": phase, **status}}
    return p


def names(pods) -> list[str]:
    return sorted(p["metadata"]["name"] for p in pods)


# --------------------------------------------------------------------------- spec + validation

@pytest.mark.parametrize("replicas, expected", [(1, (0, 0)), (2, (1, 0)), (3, (1, 1)), (4, (2, 1)),
                                                (6, (4, 1)), (7, (4, 2)), (64, (4, 2))])
def test_default_erasure_fits_on_the_other_nodes(replicas, expected):
    k, m = S.default_erasure(replicas)
    assert (k, m) == expected
    assert k + m <= replicas - 1


def test_spec_defaults_match_the_crd():
    spec = S.JobSpec.from_dict({"image": "i", "command": ["c"]})
    assert (spec.replicas, spec.min_replicas, spec.nproc_per_node, spec.mode, spec.snapshot_every) == (1, 1, 1, "sync", 1)
    assert spec.erasure == "" and S.validate(spec) == []
    spec = S.JobSpec.from_dict({"image": "i", "command": ["c"], "nodes": {"replicas": 5}})
    assert spec.min_replicas == 5 and spec.erasure == "3+1"


@pytest.mark.parametrize("spec, message", [
    ({"nodes": {"replicas": 3}, "snapshot": {"dataShards": 1, "parityShards": 3}},
     "spec.snapshot.parityShards (3) must be less than spec.nodes.replicas (3)"),
    ({"nodes": {"replicas": 3}, "snapshot": {"dataShards": 2, "parityShards": 1}},
     "dataShards + parityShards (2+1=3) must be <= spec.nodes.replicas - 1 (2)"),
    ({"nodes": {"replicas": 1}, "snapshot": {"dataShards": 1, "parityShards": 0}},
     "dataShards + parityShards (1+0=1) must be <= spec.nodes.replicas - 1 (0)"),
    ({"nodes": {"replicas": 2, "minReplicas": 3}}, "spec.nodes.minReplicas (3) must be <= spec.nodes.replicas (2)"),
    ({"mode": "bogus"}, "spec.mode must be one of sync, async; got 'bogus'"),
    ({"env": [{"name": "FTRAIN_TOKEN", "value": "x"}]}, "spec.env must not set FTRAIN_TOKEN"),
    ({"checkpoint": {"dir": "ckpt"}}, "spec.checkpoint.dir must be an absolute path"),
    ({"checkpoint": {"dir": "/ckpt", "everySteps": 0}},
     "spec.checkpoint.everySteps and spec.checkpoint.everySeconds must not both be 0"),
    ({"checkpoint": {"dir": "/ckpt", "keep": 0}}, "spec.checkpoint.keep must be >= 1; got 0"),
    ({"recovery": "restart", "mode": "async"}, "spec.recovery restart is for spec.mode sync"),
    ({"recovery": "bogus"}, "spec.recovery must be one of inprocess, restart; got 'bogus'"),
    ({"snapshot": {"memory": "lots"}}, "spec.snapshot.memory must be a size (8GiB, 512MB, bytes)"),
    ({"snapshot": {"memory": "150%"}}, "spec.snapshot.memory must be a share between 0% and 100%; got '150%'"),
    ({"snapshot": {"memory": "0"}}, "spec.snapshot.memory must be above 0"),
    ({"snapshot": {"memory": "8Gi"}}, "for the Kubernetes quantity 8Gi, write 8GiB"),
])
def test_validate_catches_what_the_schema_cannot(spec, message):
    errors = S.validate(S.JobSpec.from_dict(job(**spec)["spec"]), "j")
    assert any(message in e for e in errors), errors


def test_validate_job_name_must_fit_the_service_name():
    spec = S.JobSpec.from_dict(job()["spec"])
    assert S.validate(spec, "a" * S.MAX_JOB_NAME) == []
    assert "at most 51" in S.validate(spec, "a" * 52)[0]
    assert "DNS-1035" in S.validate(spec, "my.job")[0]


def test_from_dict_rejects_malformed_input():
    with pytest.raises(S.SpecError, match="spec.image is required"):
        S.JobSpec.from_dict({"command": ["x"]})
    with pytest.raises(S.SpecError, match="spec.command is required"):
        S.JobSpec.from_dict({"image": "x", "command": []})
    with pytest.raises(S.SpecError, match="spec.nodes.replicas must be an integer"):
        S.JobSpec.from_dict({"image": "x", "command": ["x"], "nodes": {"replicas": "2"}})


@pytest.mark.parametrize("checkpoint, message", [
    ("/ckpt", "spec.checkpoint must be an object"),
    ({}, "spec.checkpoint.dir is required when spec.checkpoint is set"),
    ({"dir": 7}, "spec.checkpoint.dir must be a string; got 7"),
    ({"dir": "/c", "everySteps": "100"}, "spec.checkpoint.everySteps must be an integer; got '100'"),
    ({"dir": "/c", "everySteps": 1.5}, "spec.checkpoint.everySteps must be an integer"),
    ({"dir": "/c", "everySeconds": "30"}, "spec.checkpoint.everySeconds must be a number; got '30'"),
    ({"dir": "/c", "everySeconds": True}, "spec.checkpoint.everySeconds must be a number"),
    ({"dir": "/c", "keep": False}, "spec.checkpoint.keep must be an integer"),
    ({"dir": "/c", "claimName": ["pvc"]}, "spec.checkpoint.claimName must be a string"),
])
def test_from_dict_rejects_malformed_checkpoint(checkpoint, message):
    with pytest.raises(S.SpecError, match=re.escape(message)):
        S.JobSpec.from_dict(job(checkpoint=checkpoint)["spec"])


def test_checkpoint_defaults_match_the_crd():
    off = S.JobSpec.from_dict(job()["spec"])
    assert off.checkpoint_dir == "" and S.validate(off, "j") == []
    assert off == S.JobSpec.from_dict(job(checkpoint=None)["spec"])
    spec = S.JobSpec.from_dict(job(checkpoint={"dir": "/ckpt"})["spec"])
    assert (spec.checkpoint_dir, spec.checkpoint_every, spec.checkpoint_every_s, spec.checkpoint_keep,
            spec.checkpoint_claim) == ("/ckpt", 100, 0.0, 2, "")
    assert S.validate(spec, "j") == []
    props = _crd_schema()["properties"]["spec"]["properties"]["checkpoint"]
    assert props["required"] == ["dir"] and "default" not in props  # absent: no durable tier
    defaults = {k: v["default"] for k, v in props["properties"].items() if "default" in v}
    assert defaults == {"everySteps": spec.checkpoint_every, "everySeconds": spec.checkpoint_every_s,
                        "keep": spec.checkpoint_keep, "dcpEvery": spec.checkpoint_dcp_every}
    # By time only is valid; an int everySeconds is a number.
    timed = S.JobSpec.from_dict(job(checkpoint={"dir": "/c", "everySteps": 0, "everySeconds": 30})["spec"])
    assert timed.checkpoint_every_s == 30.0 and S.validate(timed, "j") == []


def test_recovery_standby_and_snapshot_memory_defaults_match_the_crd():
    spec = S.JobSpec.from_dict(job()["spec"])
    assert (spec.recovery, spec.standby_trainers, spec.snapshot_memory) == ("inprocess", False, "")
    assert S.validate(spec, "j") == []
    props = _crd_schema()["properties"]["spec"]["properties"]
    assert props["recovery"]["enum"] == list(S.RECOVERY_MODES) and props["recovery"]["default"] == spec.recovery
    assert (props["standbyTrainers"]["type"], props["standbyTrainers"]["default"]) == ("boolean", spec.standby_trainers)
    memory = props["snapshot"]["properties"]["memory"]
    assert memory["type"] == "string" and "default" not in memory  # omitted: each agent's own default (50%)
    set_ = S.JobSpec.from_dict(job(recovery="restart", standbyTrainers=True,
                                   snapshot={"everySteps": 5, "memory": "8GiB"})["spec"])
    assert (set_.recovery, set_.standby_trainers, set_.snapshot_memory, set_.snapshot_every) == (
        "restart", True, "8GiB", 5)
    assert S.validate(set_, "j") == []
    for memory_value in ("512MB", "50%", "1.5G", "1000000"):
        assert S.validate(S.JobSpec.from_dict(job(snapshot={"memory": memory_value})["spec"]), "j") == []
    # restart is fine with sync (the default mode), inprocess with async.
    assert S.validate(S.JobSpec.from_dict(job(recovery="inprocess", mode="async")["spec"]), "j") == []


@pytest.mark.parametrize("patch, message", [
    ({"recovery": 1}, "spec.recovery must be a string; got 1"),
    ({"standbyTrainers": "true"}, "spec.standbyTrainers must be a boolean; got 'true'"),
    ({"standbyTrainers": 1}, "spec.standbyTrainers must be a boolean; got 1"),
    ({"snapshot": {"memory": 8}}, "spec.snapshot.memory must be a string; got 8"),
])
def test_from_dict_rejects_malformed_recovery_settings(patch, message):
    with pytest.raises(S.SpecError, match=re.escape(message)):
        S.JobSpec.from_dict(job(**patch)["spec"])


# --------------------------------------------------------------------------- manifests

def test_worker_and_coordinator_manifests():
    j = job(nprocPerNode=4, args=["--steps", "9"], resources={"limits": {"nvidia.com/gpu": 4}},
            env=[{"name": "A", "value": "b"}], nodeSelector={"gpu": "h100"})
    spec = S.JobSpec.from_dict(j["spec"])
    w = S.worker_pod_manifest(j, spec, 1, 2)
    assert w["metadata"]["name"] == "j-worker-1-2"
    assert w["metadata"]["labels"][S.LABEL_INDEX] == "1" and w["metadata"]["labels"][S.LABEL_ATTEMPT] == "2"
    assert w["metadata"]["ownerReferences"] == [{"apiVersion": "ftrain.dev/v1alpha1", "kind": "FTrainJob", "name": "j",
                                                 "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
    c = w["spec"]["containers"][0]
    assert c["command"] == ["ftrain", "agent", "--coordinator", "j-coordinator.ns.svc:29400", "--nproc-per-node", "4",
                            "--metrics-port", "9400", "--host", "$(FTRAIN_POD_IP)", "--job-id", "j",
                            "--node-id", "j-worker-1-2", "--", "python", "train.py", "--steps", "9"]
    env = {e["name"]: e for e in c["env"]}
    assert env["FTRAIN_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "j-token", "key": "token"}}
    assert env["FTRAIN_COORDINATOR"]["value"] == "j-coordinator.ns.svc:29400"
    assert env["FTRAIN_NODE_ID"]["value"] == "j-worker-1-2" and env["FTRAIN_JOB_ID"]["value"] == "j"
    assert env["FTRAIN_POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["A"]["value"] == "b"
    assert c["resources"] == {"limits": {"nvidia.com/gpu": 4}}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert w["spec"]["restartPolicy"] == "Never" and w["spec"]["nodeSelector"] == {"gpu": "h100"}

    co = S.coordinator_pod_manifest(j, spec, 0)
    assert co["spec"]["containers"][0]["command"] == [
        "ftrain", "coordinator", "--host", "$(FTRAIN_POD_IP)", "--port", "29400", "--metrics-port", "9400",
        "--job-id", "j", "--nodes", "2", "--min-nodes", "2", "--mode", "sync", "--snapshot-every", "1", "--ec", "1+0"]
    async_spec = S.JobSpec.from_dict(job(nodes={"replicas": 1}, mode="async", strategy="fedbuff")["spec"])
    cmd = S.coordinator_command("j", async_spec)
    assert cmd[cmd.index("--strategy") + 1] == "fedbuff" and "--ec" not in cmd
    assert "resources" not in co["spec"]["containers"][0]  # GPUs only for workers
    svc = S.service_manifest(j)
    assert "--checkpoint-dir" not in co["spec"]["containers"][0]["command"]  # no spec.checkpoint: no durable tier
    assert svc["metadata"]["name"] == "j-coordinator"
    assert svc["spec"]["selector"][S.LABEL_ROLE] == "coordinator"
    sec = S.secret_manifest(j)
    assert len(sec["stringData"]["token"]) >= 40 and sec["stringData"]["token"] != S.secret_manifest(j)["stringData"]["token"]


def test_coordinator_command_carries_the_checkpoint_flags():
    spec = S.JobSpec.from_dict(job(checkpoint={"dir": "/ckpt", "everySteps": 50, "everySeconds": 2.5,
                                               "keep": 3, "dcpEvery": 5})["spec"])
    cmd = S.coordinator_command("j", spec)
    i = cmd.index("--checkpoint-dir")
    assert cmd[i:] == ["--checkpoint-dir", "/ckpt", "--checkpoint-every", "50", "--checkpoint-every-s", "2.5",
                       "--checkpoint-keep", "3", "--checkpoint-dcp-every", "5", "--resume", "/ckpt", "--resume-if-any"]
    defaults = S.coordinator_command("j", S.JobSpec.from_dict(job(checkpoint={"dir": "/ckpt"})["spec"]))
    assert defaults[defaults.index("--checkpoint-dir"):] == [
        "--checkpoint-dir", "/ckpt", "--checkpoint-every", "100", "--checkpoint-every-s", "0.0",
        "--checkpoint-keep", "2", "--checkpoint-dcp-every", "1", "--resume", "/ckpt", "--resume-if-any"]
    # Agents find the directory at the same path: no --checkpoint-dir of their own.
    assert "--checkpoint-dir" not in S.worker_command("j", "ns", spec, "j-worker-0-0")


def test_coordinator_command_carries_recovery_standby_and_snapshot_memory_only_when_set():
    base = S.coordinator_command("j", S.JobSpec.from_dict(job()["spec"]))
    for flag in ("--recovery", "--standby-trainers", "--snapshot-memory"):
        assert flag not in base
    explicit_defaults = S.JobSpec.from_dict(job(recovery="inprocess", standbyTrainers=False)["spec"])
    assert S.coordinator_command("j", explicit_defaults) == base
    for patch, extra in (({"recovery": "restart"}, ["--recovery", "restart"]),
                         ({"standbyTrainers": True}, ["--standby-trainers"]),
                         ({"snapshot": {"memory": "512MB"}}, ["--snapshot-memory", "512MB"])):
        cmd = S.coordinator_command("j", S.JobSpec.from_dict(job(**patch)["spec"]))
        assert cmd == base + extra, patch
    # Agents get them from the coordinator: nothing of the kind on their command line.
    spec = S.JobSpec.from_dict(job(recovery="restart", standbyTrainers=True, snapshot={"memory": "50%"})["spec"])
    worker = S.worker_command("j", "ns", spec, "j-worker-0-0")
    assert not {"--recovery", "--standby-trainers", "--snapshot-memory"} & set(worker)


@pytest.mark.parametrize("patch, expected", [
    ({}, ("inprocess", False, "")),
    ({"recovery": "restart", "standbyTrainers": True, "snapshot": {"memory": "8GiB"}}, ("restart", True, "8GiB")),
    ({"standbyTrainers": True, "snapshot": {"memory": "25%"}}, ("inprocess", True, "25%")),
])
def test_coordinator_recovery_flags_parse_as_the_cli_does(patch, expected):
    """`ftrain coordinator` takes these flags and its JobSettings pass validate()."""
    from ftrain import cli
    spec = S.JobSpec.from_dict(job(**patch)["spec"])
    args = cli.build_parser().parse_args(S.coordinator_command("j", spec)[1:])
    assert args.func is cli.cmd_coordinator
    settings = cli._settings(args, args.replace_timeout)
    assert (settings.recovery, settings.standby_trainers, settings.snapshot_memory) == expected


@pytest.mark.parametrize("checkpoint", [{"dir": "/ckpt"}, {"dir": "/ckpt", "everySteps": 0, "everySeconds": 30}])
def test_coordinator_checkpoint_flags_parse_as_the_cli_does(checkpoint):
    """The command the operator writes is one `ftrain coordinator` takes, and its settings pass
    JobSettings.validate (the contract with ftrain/cli.py)."""
    from ftrain import cli
    spec = S.JobSpec.from_dict(job(checkpoint=checkpoint)["spec"])
    cmd = S.coordinator_command("j", spec)
    assert cmd[0] == "ftrain"
    args = cli.build_parser().parse_args(cmd[1:])
    assert args.func is cli.cmd_coordinator
    settings = cli._settings(args, args.replace_timeout)
    assert (settings.checkpoint_dir, settings.checkpoint_every, settings.checkpoint_every_s, settings.checkpoint_keep,
            settings.resume_dir, settings.resume_optional) == (
        "/ckpt", spec.checkpoint_every, spec.checkpoint_every_s, spec.checkpoint_keep, "/ckpt", True)


def _volumes(pod: dict) -> tuple[list[dict], list[dict]]:
    return pod["spec"]["volumes"], pod["spec"]["containers"][0]["volumeMounts"]


def test_checkpoint_claim_is_mounted_in_every_pod():
    dshm = ({"name": "dshm", "emptyDir": {"medium": "Memory"}}, {"name": "dshm", "mountPath": "/dev/shm"})
    pvc = ({"name": "checkpoint", "persistentVolumeClaim": {"claimName": "my-pvc"}},
           {"name": "checkpoint", "mountPath": "/ckpt"})
    for body, want in (({}, [dshm]),
                       ({"checkpoint": {"dir": "/ckpt"}}, [dshm]),  # no claimName: the user mounts it
                       ({"checkpoint": {"dir": "/ckpt", "claimName": "my-pvc"}}, [dshm, pvc])):
        j = job(**body)
        spec = S.JobSpec.from_dict(j["spec"])
        pods = [S.coordinator_pod_manifest(j, spec, 0)] + [S.worker_pod_manifest(j, spec, i, 0) for i in range(2)]
        for p in pods:
            assert _volumes(p) == ([v for v, _ in want], [m for _, m in want]), (body, p["metadata"]["name"])
    # What plan() creates carries them too.
    created = S.plan(job(checkpoint={"dir": "/ckpt", "claimName": "my-pvc"}), [], now=NOW).create
    assert len(created) == 3 and all(pvc[0] in _volumes(p)[0] and pvc[1] in _volumes(p)[1] for p in created)


# --------------------------------------------------------------------------- plan

def test_plan_new_job_creates_coordinator_and_workers():
    p = S.plan(job(nodes={"replicas": 3}), [], now=NOW)
    assert names(p.create) == ["j-coordinator-0", "j-worker-0-0", "j-worker-1-0", "j-worker-2-0"]
    assert p.need_children and p.valid and not p.delete_pods and not p.events
    assert p.status["phase"] == "Pending" and p.status["restarts"] == 0
    assert p.status["attempts"] == {"coordinator": 0, "0": 0, "1": 0, "2": 0}
    assert [c["type"] for c in p.status["conditions"]] == ["Created"]


def _running_job(replicas: int = 2, **spec):
    j = job(nodes={"replicas": replicas}, **spec)
    first = S.plan(j, [], now=NOW)
    pods = [pod(m, "Running") for m in first.create]
    j["status"] = first.status
    second = S.plan(j, pods, coordinator_info={"generation": 1, "world_size": replicas, "last_committed_step": 10}, now=NOW)
    j["status"] = second.status
    return j, pods


def test_plan_running_with_coordinator_numbers():
    j, pods = _running_job()
    st = j["status"]
    assert st["phase"] == "Running" and (st["generation"], st["worldSize"], st["lastCommittedStep"]) == (1, 2, 10)
    # Unreachable coordinator: numbers kept. Garbage from it: ignored.
    p = S.plan(j, pods, coordinator_info={"generation": "x", "world_size": None}, now=NOW)
    assert (p.status["generation"], p.status["worldSize"], p.status["lastCommittedStep"]) == (1, 2, 10)
    assert p.status == S.plan(j, pods, now=NOW).status == st  # steady state: no status churn


def test_plan_replaces_failed_worker_and_counts_restart():
    j, pods = _running_job()
    pods[2]["status"] = {"phase": "Failed", "reason": "OOMKilled"}  # j-worker-1-0
    p = S.plan(j, pods, now=NOW)
    assert names(p.create) == ["j-worker-1-1"]
    assert p.status["restarts"] == 1 and p.status["attempts"]["1"] == 1
    assert p.status["phase"] == "Restarting"
    assert p.events[0][1] == "PodReplaced" and "j-worker-1-0 Failed (OOMKilled)" in p.events[0][2]
    assert p.delete_pods == []  # the newest failed pod stays for `kubectl logs`

    # Next pass, replacement exists: nothing more to do; once it runs, Running again.
    j["status"] = p.status
    pods.append(pod(p.create[0], "Pending"))
    p2 = S.plan(j, pods, now=NOW)
    assert p2.create == [] and p2.status["phase"] == "Restarting" and p2.status["restarts"] == 1
    pods[-1]["status"]["phase"] = "Running"
    p3 = S.plan(j, pods, now=NOW)
    assert p3.status["phase"] == "Running" and p3.status["restarts"] == 1


def test_plan_replaces_deleted_pod_from_status_attempts():
    j, pods = _running_job()
    pods = [q for q in pods if q["metadata"]["name"] != "j-worker-0-0"]
    p = S.plan(j, pods, now=NOW)
    assert names(p.create) == ["j-worker-0-1"] and "its pod was deleted" in p.events[0][2]


def test_plan_keeps_only_newest_failed_pod_per_slot():
    j, pods = _running_job()
    m1 = S.worker_pod_manifest(j, S.JobSpec.from_dict(j["spec"]), 0, 1)
    pods[1]["status"]["phase"] = "Failed"
    pods.append(pod(m1, "Failed"))
    j["status"]["attempts"]["0"] = 1
    p = S.plan(j, pods, now=NOW)
    assert p.delete_pods == ["j-worker-0-0"] and names(p.create) == ["j-worker-0-2"]
    assert p.status["restarts"] == 2


def test_plan_backoff_limit():
    j, pods = _running_job(replicas=1, runPolicy={"backoffLimit": 0})
    pods[1]["status"]["phase"] = "Failed"
    p = S.plan(j, pods, now=NOW)
    assert p.create == [] and p.status["phase"] == "Failed"
    assert any(c["type"] == "Failed" and c["reason"] == "BackoffLimitExceeded" for c in p.status["conditions"])
    j["status"] = p.status
    p2 = S.plan(j, pods, now=NOW)
    assert p2.create == [] and p2.status["phase"] == "Failed" and p2.events == []


def test_plan_success_and_scale_down():
    j, pods = _running_job(replicas=3)
    j["spec"]["nodes"]["replicas"] = 2
    p = S.plan(j, pods, now=NOW)
    assert p.delete_pods == ["j-worker-2-0"] and p.create == []
    for q in pods:
        if q["metadata"]["labels"][S.LABEL_ROLE] == "worker":
            q["status"]["phase"] = "Succeeded"
    p = S.plan(j, pods, now=NOW)
    assert p.status["phase"] == "Succeeded" and p.create == []


def test_plan_invalid_spec_creates_nothing():
    j = job(nodes={"replicas": 2}, snapshot={"dataShards": 1, "parityShards": 2})
    p = S.plan(j, [], now=NOW)
    assert not p.valid and p.create == [] and p.status["phase"] == "Failed"
    failed = [c for c in p.status["conditions"] if c["type"] == "Failed"][0]
    assert failed["reason"] == "InvalidSpec" and "parityShards (2) must be less than" in failed["message"]
    assert p.events and p.events[0][:2] == ("Warning", "InvalidSpec")
    j["status"] = p.status
    assert S.plan(j, [], now=NOW).events == []  # reported once


def test_set_condition_only_moves_timestamps_on_change():
    c = S.set_condition([], "Running", True, "R", "m", "t1")
    assert S.set_condition(c, "Running", True, "R", "m", "t2") == c
    c2 = S.set_condition(c, "Running", False, "R", "m", "t3")
    assert c2[0]["lastTransitionTime"] == "t3" and c2[0]["status"] == "False"


# --------------------------------------------------------------------------- coordinator status

def test_parse_status_json():
    assert parse_status_json('log line\n{"generation": 3, "world_size": 4, "last_committed_step": 7}\n') == {
        "generation": 3, "world_size": 4, "last_committed_step": 7}
    assert parse_status_json("not json") is None
    assert parse_status_json('{"other": 1}') is None


def _fake_ftrain(tmp_path: Path, body: str) -> None:
    exe = tmp_path / "ftrain"
    exe.write_text(f"#!{sys.executable}\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_read_coordinator_status_runs_ftrain_status(tmp_path, monkeypatch):
    _fake_ftrain(tmp_path, "import json, os, sys\n"
                 "assert sys.argv[1:] == ['status', '--coordinator', 'c:29400', '--json'], sys.argv\n"
                 "print(json.dumps({'generation': 2, 'world_size': 8, 'last_committed_step': 5, "
                 "'token': os.environ.get('FTRAIN_TOKEN')}))")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    got = read_coordinator_status_cli("c:29400", "tok")
    assert got == {"generation": 2, "world_size": 8, "last_committed_step": 5, "token": "tok"}


@pytest.mark.parametrize("body", ["import sys; sys.exit(3)", "import time; time.sleep(5)", "print('garbage')"])
def test_read_coordinator_status_is_best_effort(tmp_path, monkeypatch, body):
    _fake_ftrain(tmp_path, body)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert read_coordinator_status_cli("c:29400", None, timeout=1.0) is None


def test_read_coordinator_status_unreachable_is_none():
    assert read_coordinator_status("127.0.0.1:1", "tok", timeout=1.0) is None


# --------------------------------------------------------------------------- CRD schema vs examples

def _crd_schema() -> dict:
    yaml = pytest.importorskip("yaml")
    crd = yaml.safe_load((ROOT / "k8s" / "crd.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_match_crd_schema_and_operator_rules(path):
    yaml = pytest.importorskip("yaml")
    jsonschema = pytest.importorskip("jsonschema")
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ftrain.dev/v1alpha1" and doc["kind"] == "FTrainJob"
    jsonschema.Draft4Validator(_crd_schema()).validate(doc)
    spec = S.JobSpec.from_dict(doc["spec"])
    assert S.validate(spec, doc["metadata"]["name"]) == []


def test_examples_exist():
    assert any(p.name == "digits.yaml" for p in EXAMPLES)


def test_crd_schema_rejects_bad_specs_offline():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft4Validator(_crd_schema())
    base = job()
    for bad in ({"nodes": {"replicas": 0}}, {"mode": "bogus"}, {"nprocPerNode": 0},
                {"snapshot": {"parityShards": -1}}, {"snapshot": {"everySteps": 0}},
                {"checkpoint": {}}, {"checkpoint": {"dir": "ckpt"}}, {"checkpoint": {"dir": "/c", "keep": 0}},
                {"checkpoint": {"dir": "/c", "everySteps": -1}}, {"checkpoint": {"dir": "/c", "everySeconds": -1}},
                {"checkpoint": {"dir": "/c", "claimName": ""}}):
        doc = job(**bad)
        assert list(validator.iter_errors(doc)), bad
    assert not list(validator.iter_errors(base))
    good = job(checkpoint={"dir": "/ckpt", "everySteps": 0, "everySeconds": 1.5, "keep": 1, "claimName": "my-pvc"})
    assert not list(validator.iter_errors(good))


@pytest.mark.timeout(90)
def test_read_status_from_a_real_coordinator(tmp_path):
    """The contract with `ftrain status --json`: a real coordinator answers with the keys the
    operator copies into FTrainJob.status (in-process and through the CLI)."""
    import signal
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "coordinator.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "ftrain", "coordinator", "--host", "127.0.0.1", "--port", str(port),
                             "--nodes", "2", "--job-id", "contract"],
                            env={**os.environ, "FTRAIN_TOKEN": "contract-token"}, cwd=str(ROOT),
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        got = None
        while got is None and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "coordinator.log").read_text()
            got = read_coordinator_status(f"127.0.0.1:{port}", "contract-token", timeout=2.0)
            time.sleep(0.2)
        assert got is not None, (tmp_path / "coordinator.log").read_text()
        assert {"generation", "world_size", "last_committed_step"} <= set(got)
        assert all(isinstance(got[k], int) for k in ("generation", "world_size", "last_committed_step"))
        assert read_coordinator_status(f"127.0.0.1:{port}", "wrong-token", timeout=2.0) is None
        cli = read_coordinator_status_cli(f"127.0.0.1:{port}", "contract-token", timeout=30.0)
        assert cli is not None and cli["generation"] == got["generation"]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
