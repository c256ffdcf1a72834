"""A real etcd + kube-apiserver (v1.20.2, built by tests/k8s/setup_apiserver.sh) for the k8s tests.

Everything listens on 127.0.0.1 only; every process started here is ended by PID in teardown,
also when a test fails. There is no kubelet, scheduler or controller-manager: pods stay Pending
unless a test sets their phase through the pods/status subresource, and nothing garbage-collects
by owner references (the operator deletes its children itself).

Credentials (static token file):
- ``admin`` (system:masters) for the tests themselves;
- ``system:serviceaccount:ftrain-system:ftrain-operator`` for the operator, so the operator runs
  with exactly the RBAC of k8s/rbac.yaml.

Without the binary the tests are skipped, unless FTRAIN_K8S_REQUIRED=1 (then they fail).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "k8s"
SETUP = "tests/k8s/setup_apiserver.sh"
OPERATOR_SA = ("ftrain-system", "ftrain-operator")


def apiserver_binary() -> Path:
    explicit = os.environ.get("FTRAIN_K8S_APISERVER")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("FTRAIN_K8S_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ftrain-k8s")
    return Path(cache) / "kube-apiserver"


def _missing(reason: str) -> None:
    if os.environ.get("FTRAIN_K8S_REQUIRED", "") not in ("", "0"):
        pytest.fail(f"FTRAIN_K8S_REQUIRED is set but {reason}", pytrace=False)
    pytest.skip(reason)


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if pytest itself dies (no orphaned servers)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ApiServer:
    url: str
    admin_token: str
    operator_token: str
    workdir: Path
    admin_kubeconfig: Path
    operator_kubeconfig: Path

    @property
    def ca_cert(self) -> Path:
        """The API server's self-signed serving certificate (valid for 127.0.0.1)."""
        return self.workdir / "certs" / "apiserver.crt"

    def client(self, token: str | None = None):
        """A kubernetes.client.ApiClient for this server (admin unless another token is given)."""
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(self.ca_cert)
        cfg.api_key = {"BearerToken": token or self.admin_token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(cfg)

    def operator_client(self):
        return self.client(self.operator_token)

    def get_json(self, path: str, accept: str = "application/json") -> dict:
        """A raw GET as admin (independent of the client library's version)."""
        return self.request("GET", path, accept=accept)

    def request(self, method: str, path: str, body: dict | None = None, accept: str = "application/json") -> dict:
        """A raw API call as admin; raises urllib.error.HTTPError (with the Status body) on failure."""
        import json

        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.admin_token}", "Accept": accept, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return json.loads(r.read())


def _write_kubeconfig(path: Path, url: str, ca: Path, user: str, token: str) -> None:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\n"
        f"users:\n- name: {user}\n  user:\n    token: {token}\n"
        f"contexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\n"
        "current-context: test\n"
    )


def _stop(proc: subprocess.Popen, name: str) -> None:
    """End one process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _wait_ready(url: str, token: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kube-apiserver exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        req = urllib.request.Request(f"{url}/readyz", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception as e:  # not up yet
            last = str(e)
        time.sleep(0.5)
    raise RuntimeError(f"kube-apiserver not ready after {timeout}s ({last}):\n{log.read_text()[-4000:]}")


def _wait_etcd(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if b"true" in r.read():
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"etcd not healthy after {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory):
    binary = apiserver_binary()
    etcd = shutil.which("etcd")
    if not binary.is_file() or not os.access(binary, os.X_OK):
        _missing(f"no kube-apiserver binary at {binary}; build it once with `bash {SETUP}` "
                 f"(~6 min; needs apt) or set FTRAIN_K8S_APISERVER")
    if not etcd:
        _missing(f"etcd not on PATH; run `bash {SETUP}` (apt-get install etcd-server)")
    if not shutil.which("openssl"):
        _missing("openssl not on PATH (apt-get install openssl)")
    import importlib.util

    for module in ("kubernetes", "kopf", "yaml"):
        if importlib.util.find_spec(module) is None:
            _missing(f"python package {module} missing; pip install kopf kubernetes pyyaml")

    work = tmp_path_factory.mktemp("k8s")
    procs: list[tuple[subprocess.Popen, str]] = []
    logs: list = []
    try:
        # Service-account key pair (the API server needs one even if nothing mints tokens here).
        subprocess.run(["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(work / "sa.key"), "-pubout", "-out", str(work / "sa.pub")],
                       check=True, capture_output=True)
        admin_token = uuid.uuid4().hex
        operator_token = uuid.uuid4().hex
        ns, sa = OPERATOR_SA
        (work / "tokens.csv").write_text(
            f'{admin_token},admin,admin-uid,"system:masters"\n'
            f'{operator_token},system:serviceaccount:{ns}:{sa},operator-uid,'
            f'"system:serviceaccounts,system:serviceaccounts:{ns},system:authenticated"\n'
        )

        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_log = open(work / "etcd.log", "w")
        logs.append(etcd_log)
        etcd_proc = subprocess.Popen(
            [etcd, "--name", "ftrain-test", "--data-dir", str(work / "etcd"),
             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
             "--initial-cluster", f"ftrain-test=http://127.0.0.1:{peer_port}",
             "--log-level", "warn"],
            stdout=etcd_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        procs.append((etcd_proc, "etcd"))
        _wait_etcd(etcd_port, etcd_proc, work / "etcd.log")

        api_log = open(work / "apiserver.log", "w")
        logs.append(api_log)
        api_proc = subprocess.Popen(
            [str(binary),
             f"--etcd-servers=http://127.0.0.1:{etcd_port}",
             "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
             f"--secure-port={api_port}", "--insecure-port=0",
             f"--cert-dir={work / 'certs'}",
             f"--token-auth-file={work / 'tokens.csv'}",
             "--authorization-mode=RBAC",
             f"--service-account-key-file={work / 'sa.pub'}",
             f"--service-account-signing-key-file={work / 'sa.key'}",
             "--service-account-issuer=https://kubernetes.default.svc",
             "--service-cluster-ip-range=10.96.0.0/16",
             # No controller-manager mints service-account tokens, so the ServiceAccount admission
             # plugin would reject every pod; enforce ownerReference permissions like real clusters.
             "--disable-admission-plugins=ServiceAccount",
             "--enable-admission-plugins=NamespaceLifecycle,OwnerReferencesPermissionEnforcement",
             "--enable-priority-and-fairness=false",
             "--profiling=false", "--logtostderr=true", "--v=1"],
            stdout=api_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        procs.append((api_proc, "kube-apiserver"))
        url = f"https://127.0.0.1:{api_port}"
        _wait_ready(url, admin_token, api_proc, work / "apiserver.log", timeout=90)

        admin_kc, operator_kc = work / "admin.kubeconfig", work / "operator.kubeconfig"
        ca = work / "certs" / "apiserver.crt"
        _write_kubeconfig(admin_kc, url, ca, "admin", admin_token)
        _write_kubeconfig(operator_kc, url, ca, "ftrain-operator", operator_token)
        server = ApiServer(url, admin_token, operator_token, work, admin_kc, operator_kc)
        _install_crd_and_rbac(server)
        yield server
    finally:
        for proc, name in reversed(procs):
            _stop(proc, name)
        for f in logs:
            f.close()


def _install_crd_and_rbac(server: ApiServer) -> None:
    import yaml
    from kubernetes import client, utils

    api = server.client()
    crd = yaml.safe_load((K8S_DIR / "crd.yaml").read_text())
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition(crd)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = ext.read_custom_resource_definition(crd["metadata"]["name"])
        if any(c.type == "Established" and c.status == "True" for c in (got.status.conditions or [])):
            break
        time.sleep(0.2)
    else:
        raise RuntimeError("CRD ftrainjobs.ftrain.dev never became Established")
    utils.create_from_yaml(api, yaml_objects=list(yaml.safe_load_all((K8S_DIR / "rbac.yaml").read_text())))
    # Discovery of the new group can lag Established by a moment.
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + 30
    while True:
        try:
            custom.list_cluster_custom_object("ftrain.dev", "v1alpha1", "ftrainjobs")
            break
        except client.ApiException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.fixture
def namespace(apiserver):
    """A fresh namespace per test (never deleted: no namespace controller runs here)."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(apiserver.client()).create_namespace({"metadata": {"name": name}})
    return name
