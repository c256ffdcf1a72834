"""The FTrainJob operator against a real kube-apiserver (see conftest.py).

The operator runs in-process under kopf's KopfRunner, authenticated as the operator's service
account, so every test also checks that k8s/rbac.yaml grants enough (and the API server enforces
RBAC and ownerReference permissions). With no kubelet, tests play the kubelet's part by writing
pod phases through the pods/status subresource.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

pytestmark = pytest.mark.k8s

kubernetes = pytest.importorskip("kubernetes", reason="pip install kubernetes kopf")
kopf_testing = pytest.importorskip("kopf.testing", reason="pip install kopf kubernetes")

from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from ftrain.operator import spec as S  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ftrain.operator.handlers import OperatorConfig, build_registry  # noqa: E402

GROUP, VERSION, PLURAL = "ftrain.dev", "v1alpha1", "ftrainjobs"


class FakeCoordinators:
    """Stands in for `ftrain status --json`: what each coordinator address would report."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()

    def __call__(self, address: str, token: str | None) -> dict[str, Any] | None:
        with self._lock:
            self.calls.append((address, token))
            return self.reports.get(address)


@pytest.fixture(scope="module")
def coordinators() -> FakeCoordinators:
    return FakeCoordinators()


@pytest.fixture(scope="module")
def operator(apiserver, coordinators):
    """The operator, watching all namespaces, as system:serviceaccount:ftrain-system:ftrain-operator."""
    config = OperatorConfig(sync_interval=1.0, status_reader=coordinators, status_min_interval=0.5,
                            api_client=apiserver.operator_client())
    registry = build_registry(config)
    with kopf_testing.KopfRunner(["run", "--standalone", "--all-namespaces", "--verbose"],
                                 registry=registry, timeout=60) as runner:
        yield runner
    assert runner.exit_code == 0, runner.output[-5000:]
    assert runner.exception is None


@pytest.fixture
def api(apiserver):
    a = apiserver.client()
    return client.CoreV1Api(a), client.CustomObjectsApi(a)


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def job_body(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "image": "ftrain:test",
        "command": ["python", "examples/digits_mlp.py"],
        "args": ["--steps", "200"],
        "nodes": {"replicas": 2},
        "nprocPerNode": 1,
    }
    base.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FTrainJob", "metadata": {"name": name}, "spec": base}


def create_job(custom, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    return custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def get_job(custom, namespace: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def pods_of(core, namespace: str, name: str) -> dict[str, client.V1Pod]:
    return {p.metadata.name: p for p in core.list_namespaced_pod(namespace, label_selector=f"{S.LABEL_JOB}={name}").items}


def set_phase(core, namespace: str, pod: str, phase: str, exit_code: int | None = None) -> None:
    """Play kubelet: write the pod's phase through the pods/status subresource."""
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [{
            "name": "worker", "image": "ftrain:test", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}},
        }]
    core.patch_namespaced_pod_status(pod, namespace, {"status": status})


def status_of(custom, namespace: str, name: str) -> dict[str, Any]:
    return get_job(custom, namespace, name).get("status") or {}


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), None)


# --------------------------------------------------------------------------- schema (API server only)

@pytest.mark.timeout(60)
@pytest.mark.parametrize("spec_patch, expected", [
    ({"nodes": {"replicas": 0}}, "spec.nodes.replicas in body should be greater than or equal to 1"),
    ({"nodes": {"replicas": 2, "minReplicas": 0}}, "spec.nodes.minReplicas in body should be greater than or equal to 1"),
    ({"mode": "bogus"}, 'spec.mode: Unsupported value: "bogus": supported values: "sync", "async"'),
    ({"nprocPerNode": 0}, "spec.nprocPerNode in body should be greater than or equal to 1"),
    ({"snapshot": {"everySteps": 0}}, "spec.snapshot.everySteps in body should be greater than or equal to 1"),
    ({"snapshot": {"dataShards": 0}}, "spec.snapshot.dataShards in body should be greater than or equal to 1"),
    ({"snapshot": {"parityShards": -1}}, "spec.snapshot.parityShards in body should be greater than or equal to 0"),
    ({"command": []}, "spec.command in body should have at least 1 items"),
    ({"image": ""}, "spec.image in body should be at least 1 chars long"),
    ({"nodes": {"replicas": "two"}}, 'spec.nodes.replicas: Invalid value: "string": spec.nodes.replicas in body must be of type integer'),
    ({"checkpoint": {"dir": "/ckpt", "keep": 0}}, "spec.checkpoint.keep in body should be greater than or equal to 1"),
    ({"checkpoint": {"dir": "/ckpt", "everySteps": -1}},
     "spec.checkpoint.everySteps in body should be greater than or equal to 0"),
    ({"checkpoint": {"dir": "ckpt"}}, "spec.checkpoint.dir in body should match '^/'"),
    ({"checkpoint": {"everySteps": 10}}, "spec.checkpoint.dir: Required value"),
    ({"recovery": "bogus"}, 'spec.recovery: Unsupported value: "bogus": supported values: "inprocess", "restart"'),
    ({"standbyTrainers": "yes"}, "spec.standbyTrainers in body must be of type boolean"),
    ({"snapshot": {"memory": 8}}, "spec.snapshot.memory in body must be of type string"),
])
def test_api_server_rejects_invalid_spec(apiserver, namespace, api, spec_patch, expected):
    _, custom = api
    body = job_body("bad", **spec_patch)
    with pytest.raises(ApiException) as info:
        create_job(custom, namespace, body)
    assert info.value.status == 422, info.value.body
    message = json.loads(info.value.body)["message"]  # what kubectl prints
    assert expected in message, message
    assert message.startswith('FTrainJob.ftrain.dev "bad" is invalid: ')


@pytest.mark.timeout(60)
def test_api_server_requires_image_and_command(apiserver, namespace, api):
    _, custom = api
    body = job_body("bad")
    del body["spec"]["image"], body["spec"]["command"]
    with pytest.raises(ApiException) as info:
        create_job(custom, namespace, body)
    assert info.value.status == 422
    message = json.loads(info.value.body)["message"]
    assert "spec.image: Required value" in message and "spec.command: Required value" in message, message


@pytest.mark.timeout(60)
def test_schema_defaults_applied(apiserver, namespace, api):
    _, custom = api
    body = job_body("defaults")
    del body["spec"]["nodes"], body["spec"]["nprocPerNode"], body["spec"]["args"]
    got = create_job(custom, namespace, body)["spec"]
    assert got["nodes"] == {"replicas": 1}
    assert got["nprocPerNode"] == 1 and got["mode"] == "sync" and got["args"] == []
    assert got["snapshot"] == {"everySteps": 1}
    assert "checkpoint" not in got  # no durable tier unless asked for
    assert got["recovery"] == "inprocess" and got["standbyTrainers"] is False
    got = create_job(custom, namespace, job_body("defaults-checkpoint", checkpoint={"dir": "/ckpt"}))["spec"]
    assert got["checkpoint"] == {"dir": "/ckpt", "everySteps": 100, "everySeconds": 0, "keep": 2, "dcpEvery": 1}
    spec = S.JobSpec.from_dict(got)
    assert (spec.checkpoint_every, spec.checkpoint_every_s, spec.checkpoint_keep, spec.checkpoint_dcp_every) == (100, 0.0, 2, 1)


# --------------------------------------------------------------------------- operator

@pytest.mark.timeout(120)
def test_job_creates_coordinator_service_secret_and_workers(operator, coordinators, apiserver, namespace, api):
    core, custom = api
    name = "digits"
    job = create_job(custom, namespace, job_body(name, nodes={"replicas": 3}, nprocPerNode=2,
                                                 env=[{"name": "EXTRA", "value": "1"}],
                                                 resources={"limits": {"cpu": "2", "memory": "4Gi"}},
                                                 recovery="restart", standbyTrainers=True,
                                                 snapshot={"memory": "2GiB"}))
    uid = job["metadata"]["uid"]
    pods = wait_for("coordinator + 3 worker pods", lambda: (lambda p: p if len(p) == 4 else None)(pods_of(core, namespace, name)))
    assert set(pods) == {"digits-coordinator-0", "digits-worker-0-0", "digits-worker-1-0", "digits-worker-2-0"}
    for pod in pods.values():
        refs = pod.metadata.owner_references
        assert refs and refs[0].uid == uid and refs[0].kind == "FTrainJob" and refs[0].controller
        assert pod.spec.restart_policy == "Never"

    coord = pods["digits-coordinator-0"].spec.containers[0]
    assert coord.command == ["ftrain", "coordinator", "--host", "$(FTRAIN_POD_IP)", "--port", "29400",
                             "--metrics-port", "9400", "--job-id", "digits", "--nodes", "3", "--min-nodes", "3",
                             "--mode", "sync", "--snapshot-every", "1", "--ec", "1+1",  # 3 nodes: k=1, m=1
                             "--recovery", "restart", "--standby-trainers", "--snapshot-memory", "2GiB"]
    address = f"digits-coordinator.{namespace}.svc:29400"
    worker = pods["digits-worker-1-0"].spec.containers[0]
    assert worker.command == ["ftrain", "agent", "--coordinator", address, "--nproc-per-node", "2",
                              "--metrics-port", "9400", "--host", "$(FTRAIN_POD_IP)", "--job-id", "digits",
                              "--node-id", "digits-worker-1-0",
                              "--", "python", "examples/digits_mlp.py", "--steps", "200"]
    assert worker.resources.limits == {"cpu": "2", "memory": "4Gi"}
    env = {e.name: e for e in worker.env}
    assert env["FTRAIN_COORDINATOR"].value == address
    assert env["FTRAIN_JOB_ID"].value == name
    assert env["FTRAIN_NODE_ID"].value == "digits-worker-1-0"
    assert env["FTRAIN_NODE_INDEX"].value == "1"
    assert env["FTRAIN_POD_IP"].value_from.field_ref.field_path == "status.podIP"
    assert env["EXTRA"].value == "1"
    ref = env["FTRAIN_TOKEN"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("digits-token", "token")
    assert {e.name for e in coord.env} >= {"FTRAIN_TOKEN", "FTRAIN_JOB_ID", "FTRAIN_POD_IP"}

    svc = core.read_namespaced_service("digits-coordinator", namespace)
    assert {p.port for p in svc.spec.ports} == {29400, 9400}
    assert svc.spec.selector == {S.LABEL_MANAGED_BY: S.MANAGED_BY, S.LABEL_JOB: name, S.LABEL_ROLE: "coordinator"}
    assert svc.metadata.owner_references[0].uid == uid
    secret = core.read_namespaced_secret("digits-token", namespace)
    import base64
    token = base64.b64decode(secret.data["token"]).decode()
    assert len(token) >= 40 and secret.metadata.owner_references[0].uid == uid

    st = wait_for("status Pending", lambda: (lambda s: s if s.get("phase") == "Pending" else None)(status_of(custom, namespace, name)))
    assert st["restarts"] == 0 and st["coordinatorAddress"] == address
    assert condition(st, "Created")["status"] == "True"

    # The "kubelet" starts everything; the coordinator reports generation/world size/step.
    coordinators.reports[address] = {"generation": 2, "world_size": 6, "last_committed_step": 40}
    for pod in pods:
        set_phase(core, namespace, pod, "Running")
    st = wait_for("status Running with coordinator numbers", lambda: (lambda s: s if s.get("phase") == "Running"
                  and s.get("lastCommittedStep") == 40 else None)(status_of(custom, namespace, name)))
    assert st["generation"] == 2 and st["worldSize"] == 6 and st["restarts"] == 0
    assert condition(st, "Running")["status"] == "True"
    assert st["replicaStatuses"]["Worker"] == {"active": 3, "succeeded": 0, "failed": 0}
    assert (address, token) in coordinators.calls  # the status read carries the job token

    # Numbers move as the coordinator's do (periodic sync).
    coordinators.reports[address] = {"generation": 3, "world_size": 6, "last_committed_step": 80}
    wait_for("lastCommittedStep 80", lambda: status_of(custom, namespace, name).get("lastCommittedStep") == 80)

    # Printer columns.
    table = apiserver.get_json(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}",
                               accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns == ["Name", "Phase", "Generation", "World", "Step", "Restarts", "Age"]
    assert table["rows"][0]["cells"][1:6] == ["Running", 3, 6, 80, 0]


@pytest.mark.timeout(120)
def test_failed_or_deleted_worker_is_replaced(operator, namespace, api):
    core, custom = api
    name = "elastic"
    create_job(custom, namespace, job_body(name, nodes={"replicas": 2, "minReplicas": 1}))
    pods = wait_for("3 pods", lambda: (lambda p: p if len(p) == 3 else None)(pods_of(core, namespace, name)))
    for pod in pods:
        set_phase(core, namespace, pod, "Running")
    wait_for("Running", lambda: status_of(custom, namespace, name).get("phase") == "Running")

    # A worker dies (the kubelet would report this): a replacement with a new name appears.
    set_phase(core, namespace, "elastic-worker-1-0", "Failed", exit_code=137)
    wait_for("replacement elastic-worker-1-1", lambda: "elastic-worker-1-1" in pods_of(core, namespace, name))
    st = wait_for("restarts == 1", lambda: (lambda s: s if s.get("restarts") == 1 else None)(status_of(custom, namespace, name)))
    assert st["phase"] == "Restarting"
    assert condition(st, "Restarting")["status"] == "True"
    assert "elastic-worker-1-0" in pods_of(core, namespace, name)  # newest failed pod kept for `kubectl logs`
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    replaced = [e for e in events if e.reason == "PodReplaced"]
    assert replaced and "elastic-worker-1-0 Failed" in replaced[0].message and "exit code 137" in replaced[0].message

    set_phase(core, namespace, "elastic-worker-1-1", "Running")
    wait_for("Running again", lambda: status_of(custom, namespace, name).get("phase") == "Running")

    # A worker pod is deleted (node drained, evicted, kubectl delete): replaced as well.
    core.delete_namespaced_pod("elastic-worker-0-0", namespace)
    wait_for("replacement elastic-worker-0-1", lambda: "elastic-worker-0-1" in pods_of(core, namespace, name))
    wait_for("restarts == 2", lambda: status_of(custom, namespace, name).get("restarts") == 2)

    # The replacement fails too: a third attempt; only the newest failed pod of a slot is kept.
    set_phase(core, namespace, "elastic-worker-1-1", "Failed", exit_code=1)
    wait_for("elastic-worker-1-2", lambda: "elastic-worker-1-2" in pods_of(core, namespace, name))
    wait_for("old failed pod removed", lambda: "elastic-worker-1-0" not in pods_of(core, namespace, name))
    st = wait_for("restarts == 3", lambda: (lambda s: s if s.get("restarts") == 3 else None)(status_of(custom, namespace, name)))
    assert st["attempts"] == {"coordinator": 0, "0": 1, "1": 2}

    # The coordinator pod is replaced too.
    set_phase(core, namespace, "elastic-coordinator-0", "Failed", exit_code=1)
    wait_for("elastic-coordinator-1", lambda: "elastic-coordinator-1" in pods_of(core, namespace, name))
    wait_for("restarts == 4", lambda: status_of(custom, namespace, name).get("restarts") == 4)

    # Every live pod finishes: the job Succeeded.
    live = [n for n, p in pods_of(core, namespace, name).items() if p.status.phase not in ("Failed", "Succeeded")]
    for pod in live:
        set_phase(core, namespace, pod, "Succeeded", exit_code=0)
    st = wait_for("Succeeded", lambda: (lambda s: s if s.get("phase") == "Succeeded" else None)(status_of(custom, namespace, name)))
    assert condition(st, "Succeeded")["status"] == "True"


@pytest.mark.timeout(120)
def test_backoff_limit_marks_job_failed(operator, namespace, api):
    core, custom = api
    name = "flaky"
    create_job(custom, namespace, job_body(name, nodes={"replicas": 1}, runPolicy={"backoffLimit": 1}))
    wait_for("worker", lambda: "flaky-worker-0-0" in pods_of(core, namespace, name))
    set_phase(core, namespace, "flaky-worker-0-0", "Failed", exit_code=2)
    wait_for("first replacement", lambda: "flaky-worker-0-1" in pods_of(core, namespace, name))
    set_phase(core, namespace, "flaky-worker-0-1", "Failed", exit_code=2)
    st = wait_for("Failed", lambda: (lambda s: s if s.get("phase") == "Failed" else None)(status_of(custom, namespace, name)))
    failed = condition(st, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "backoffLimit (1)" in failed["message"]
    time.sleep(2.5)  # a few sync periods: no further replacement
    assert "flaky-worker-0-2" not in pods_of(core, namespace, name)


@pytest.mark.timeout(120)
def test_invalid_erasure_coding_gets_failed_condition_then_recovers(operator, namespace, api):
    core, custom = api
    name = "ec"
    create_job(custom, namespace, job_body(name, nodes={"replicas": 3}, snapshot={"dataShards": 1, "parityShards": 3}))
    st = wait_for("Failed", lambda: (lambda s: s if s.get("phase") == "Failed" else None)(status_of(custom, namespace, name)))
    failed = condition(st, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "InvalidSpec"
    assert "spec.snapshot.parityShards (3) must be less than spec.nodes.replicas (3)" in failed["message"]
    assert pods_of(core, namespace, name) == {}
    with pytest.raises(ApiException):
        core.read_namespaced_service("ec-coordinator", namespace)
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    assert any(e.reason == "InvalidSpec" and e.type == "Warning" for e in events)

    # Still too many shards for 3 nodes (2 peers): k+m = 3 > 2.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                          {"spec": {"snapshot": {"dataShards": 2, "parityShards": 1}}})
    wait_for("k+m message", lambda: "dataShards + parityShards (2+1=3) must be <= spec.nodes.replicas - 1 (2)"
             in (condition(status_of(custom, namespace, name), "Failed") or {}).get("message", ""))

    # Fixed: the operator creates the job.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                          {"spec": {"snapshot": {"dataShards": 1, "parityShards": 1}}})
    wait_for("4 pods", lambda: len(pods_of(core, namespace, name)) == 4)
    st = wait_for("Pending", lambda: (lambda s: s if s.get("phase") == "Pending" else None)(status_of(custom, namespace, name)))
    assert condition(st, "Failed")["status"] == "False"


@pytest.mark.timeout(120)
def test_scale_replicas_up_and_down(operator, namespace, api):
    core, custom = api
    name = "scale"
    create_job(custom, namespace, job_body(name, nodes={"replicas": 2}))
    wait_for("3 pods", lambda: len(pods_of(core, namespace, name)) == 3)
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"nodes": {"replicas": 3}}})
    wait_for("worker 2", lambda: "scale-worker-2-0" in pods_of(core, namespace, name))
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": {"nodes": {"replicas": 1}}})
    wait_for("workers 1, 2 removed", lambda: set(pods_of(core, namespace, name)) == {"scale-coordinator-0", "scale-worker-0-0"})
    assert status_of(custom, namespace, name).get("restarts") == 0


@pytest.mark.timeout(120)
def test_delete_job_removes_everything_it_created(operator, namespace, api):
    core, custom = api
    name = "gone"
    create_job(custom, namespace, job_body(name, nodes={"replicas": 2}))
    wait_for("3 pods", lambda: len(pods_of(core, namespace, name)) == 3)
    wait_for("service", lambda: core.list_namespaced_service(namespace).items)
    wait_for("finalizer", lambda: "ftrain.dev/cleanup" in (get_job(custom, namespace, name)["metadata"].get("finalizers") or []))
    # An unrelated pod in the same namespace must survive.
    core.create_namespaced_pod(namespace, {"metadata": {"name": "bystander", "labels": {S.LABEL_JOB: name}},
                                           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})

    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def job_gone() -> bool:
        try:
            get_job(custom, namespace, name)
            return False
        except ApiException as e:
            return e.status == 404
    wait_for("job deleted (finalizer released)", job_gone)
    # No garbage collector runs here: the operator itself deleted its children.
    assert set(pods_of(core, namespace, name)) == {"bystander"}
    assert core.list_namespaced_service(namespace).items == []
    with pytest.raises(ApiException) as info:
        core.read_namespaced_secret("gone-token", namespace)
    assert info.value.status == 404


@pytest.mark.timeout(60)
def test_operator_identity_is_least_privilege(apiserver, namespace):
    """The operator's service account can do what it needs and not more."""
    api = apiserver.operator_client()
    authz = client.AuthorizationV1Api(api)

    def can(verb: str, resource: str, group: str = "", subresource: str = "") -> bool:
        review = authz.create_self_subject_access_review({"spec": {"resourceAttributes": {
            "namespace": namespace, "verb": verb, "group": group, "resource": resource, "subresource": subresource}}})
        return review.status.allowed

    assert can("watch", "ftrainjobs", GROUP) and can("patch", "ftrainjobs", GROUP, "status")
    assert can("create", "pods") and can("delete", "pods") and can("create", "secrets")
    assert not can("list", "secrets") and not can("watch", "secrets")
    assert not can("create", "ftrainjobs", GROUP) and not can("delete", "ftrainjobs", GROUP)
    assert not can("create", "deployments", "apps") and not can("patch", "pods")
    assert not can("list", "customresourcedefinitions", "apiextensions.k8s.io")


# --------------------------------------------------------------------------- manifests, server-side

_PATHS = {  # kind -> (API prefix, plural, namespaced)
    "FTrainJob": (f"/apis/{GROUP}/{VERSION}", PLURAL, True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
}


def _dry_run_create(apiserver, doc: dict[str, Any], namespace: str) -> None:
    import urllib.error

    prefix, plural, namespaced = _PATHS[doc["kind"]]
    ns = doc["metadata"].get("namespace") or namespace
    path = f"{prefix}/namespaces/{ns}/{plural}" if namespaced else f"{prefix}/{plural}"
    try:
        apiserver.request("POST", f"{path}?dryRun=All", doc)
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} rejected: {e.read().decode()}") from None


@pytest.mark.timeout(120)
def test_examples_operator_manifest_and_chart_accepted_by_api_server(apiserver, namespace):
    """Server-side (dry-run) validation by the real API server of everything we ship."""
    import yaml

    from helmbin import helm_binary

    root = Path(__file__).resolve().parents[2]
    docs: list[dict[str, Any]] = []
    for path in sorted((root / "k8s" / "examples").glob("*.yaml")) + [root / "k8s" / "operator.yaml"]:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    helm = helm_binary()
    if helm is not None:
        import subprocess

        out = subprocess.run([str(helm), "template", "ftj", str(root / "deploy" / "helm" / "ftrain-operator"),
                              "--namespace", "ftrain-system", "--set", f"watchNamespaces={{{namespace}}}"],
                             check=True, capture_output=True, text=True, timeout=60).stdout
        docs += [d for d in yaml.safe_load_all(out) if d]
    kinds = {d["kind"] for d in docs}
    assert {"FTrainJob", "Deployment"} <= kinds
    for doc in docs:
        _dry_run_create(apiserver, doc, namespace)


# --------------------------------------------------------------------------- `python -m ftrain.operator`

@pytest.mark.timeout(120)
def test_operator_process_with_kubeconfig_liveness_and_sigterm(apiserver, namespace, api, tmp_path):
    """The real entry point (ftrain.operator.run -> kopf.run) in its own process, namespaced."""
    import os
    import signal
    import subprocess
    import urllib.request

    from conftest import free_port

    core, custom = api
    port = free_port()
    log = open(tmp_path / "operator.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftrain.operator", "--kubeconfig", str(apiserver.operator_kubeconfig),
         "--namespace", namespace, "--sync-interval", "1", "--no-coordinator-status",
         "--liveness", f"http://127.0.0.1:{port}/healthz"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=str(Path(__file__).resolve().parents[2]))
    try:
        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for("operator liveness endpoint", healthy, timeout=60, interval=0.5)
        create_job(custom, namespace, job_body("cli", nodes={"replicas": 2}))
        wait_for("3 pods", lambda: len(pods_of(core, namespace, "cli")) == 3)
        wait_for("status Pending", lambda: status_of(custom, namespace, "cli").get("phase") == "Pending")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "operator.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
