"""The Helm chart and the plain manifests: render, lint, validate offline.

helm comes from a PyPI wheel (see helmbin.py); kubernetes-validate checks the rendered objects
against the Kubernetes OpenAPI schemas without a cluster. The server-side check of the same
objects against a real API server is in test_operator.py (k8s marker).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helmbin import PIP_INSTALL, helm_binary  # noqa: E402

yaml = pytest.importorskip("yaml", reason="pip install pyyaml")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "ftrain-operator"
# Oldest and newest schema sets shipped with kubernetes-validate.
K8S_VERSIONS = ("1.25.0", "latest")


@pytest.fixture(scope="module")
def helm() -> Path:
    path = helm_binary()
    if path is None:
        pytest.skip(f"helm not installed; {PIP_INSTALL}")
    return path


@pytest.fixture(scope="module")
def kv():
    return pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")


def render(helm: Path, *args: str) -> list[dict]:
    out = subprocess.run([str(helm), "template", "ftrain", str(CHART), "--namespace", "ftrain-system", *args],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate_all(kv, docs: list[dict]) -> None:
    for version in K8S_VERSIONS:
        v = kv.latest_version() if version == "latest" else version
        for doc in docs:
            try:
                kv.validate(doc, v, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {v}: {e.message} "
                            f"at {'.'.join(map(str, e.path))}")


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


VALUE_SETS = [
    (),
    ("--set", "watchNamespaces={team-a,team-b}", "--set", "coordinatorStatus=false", "--set", "verbose=true",
     "--set", "image.tag=0.1.0-cuda", "--set", "imagePullSecrets[0].name=regcred"),
    ("--set", "serviceAccount.create=false", "--set", "serviceAccount.name=existing", "--set", "rbac.create=false"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("values", VALUE_SETS, ids=["defaults", "namespaced", "no-rbac"])
def test_helm_lint_strict(helm, values):
    proc = subprocess.run([str(helm), "lint", "--strict", str(CHART), *values], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.timeout(120)
def test_helm_lint_rejects_bad_values(helm):
    proc = subprocess.run([str(helm), "lint", "--strict", str(CHART), "--set", "image.pullPolicy=Sometimes"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "pullPolicy" in proc.stdout + proc.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("values", VALUE_SETS, ids=["defaults", "namespaced", "no-rbac"])
def test_helm_template_validates(helm, kv, values):
    docs = render(helm, "--include-crds", *values)
    validate_all(kv, docs)
    kinds = by_kind(docs)
    assert [d["metadata"]["name"] for d in kinds["CustomResourceDefinition"]] == ["ftrainjobs.ftrain.dev"]
    (deploy,) = kinds["Deployment"]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["operator", "--standalone"]
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.timeout(120)
def test_helm_values_reach_the_deployment(helm):
    docs = by_kind(render(helm, *VALUE_SETS[1]))
    (deploy,) = docs["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--no-coordinator-status" in args and "--verbose" in args
    assert pod["containers"][0]["image"] == "ftrain:0.1.0-cuda"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    # Namespaced: the ClusterRole is bound per namespace, never cluster-wide.
    assert "ClusterRoleBinding" not in docs
    assert sorted(rb["metadata"]["namespace"] for rb in docs["RoleBinding"]) == ["team-a", "team-b"]
    assert all(rb["subjects"][0]["namespace"] == "ftrain-system" for rb in docs["RoleBinding"])

    defaults = by_kind(render(helm))
    assert "RoleBinding" not in defaults and len(defaults["ClusterRoleBinding"]) == 1
    none = by_kind(render(helm, *VALUE_SETS[2]))
    assert set(none) == {"Deployment"}
    assert none["Deployment"][0]["spec"]["template"]["spec"]["serviceAccountName"] == "existing"


def test_chart_crd_is_k8s_crd():
    """The chart ships the same CRD as k8s/crd.yaml (helm installs crds/ before templates)."""
    assert (CHART / "crds" / "ftrainjobs.ftrain.dev.yaml").read_text() == (ROOT / "k8s" / "crd.yaml").read_text()


@pytest.mark.timeout(120)
def test_chart_rbac_matches_k8s_rbac(helm):
    chart_rules = by_kind(render(helm))["ClusterRole"][0]["rules"]
    plain = by_kind([d for d in yaml.safe_load_all((ROOT / "k8s" / "rbac.yaml").read_text()) if d])
    assert chart_rules == plain["ClusterRole"][0]["rules"]


@pytest.mark.parametrize("name", ["crd.yaml", "rbac.yaml", "operator.yaml"])
def test_plain_manifests_validate(kv, name):
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / name).read_text()) if d]
    assert docs
    validate_all(kv, docs)


def test_operator_manifest_runs_ftrain_operator():
    (deploy,) = [d for d in yaml.safe_load_all((ROOT / "k8s" / "operator.yaml").read_text()) if d]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ftrain-operator"
    assert pod["containers"][0]["args"][:2] == ["operator", "--standalone"]


def test_dockerfile_copies_what_exists():
    """deploy/Dockerfile builds from the repository root; what it COPYs must be there."""
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    sources = []
    for line in text.splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    assert "ftrain" in sources and "pyproject.toml" in sources
    missing = [s for s in sources if s != "README.md" and not (ROOT / s).exists()]
    assert not missing, missing
    assert 'ENTRYPOINT ["tini", "--", "ftrain"]' in text
    assert "ARG BASE_IMAGE=python:3.11-slim" in text and "ARG TORCH_VERSION=2.13.0" in text
