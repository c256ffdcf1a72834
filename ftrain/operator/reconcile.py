"""Carry out :func:`ftrain.operator.spec.plan` against the Kubernetes API (no kopf here).

One :class:`Reconciler` per operator process; every entry point takes a per-job lock, reads the
job and its pods fresh from the API server, plans, applies, and patches ``status`` only when it
changed. All calls are idempotent (409 on create and 404 on delete are fine), so kopf may call in
from the job's create/update/resume/timer handlers and from pod events in any order.
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import socket
import threading
import time
from typing import Any, Callable, Mapping

from . import spec as S
from .coordinator_status import StatusReader, read_coordinator_status

log = logging.getLogger("ftrain.operator")

EventSink = Callable[[Mapping[str, Any], str, str, str], None]


def load_api_client(kubeconfig: str | None = None, context: str | None = None):
    """An ApiClient from the in-cluster service account, else from kubeconfig ($KUBECONFIG)."""
    from kubernetes import client, config

    if kubeconfig is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
    return client.ApiClient(configuration=cfg)


def _status_of(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


class Reconciler:
    def __init__(self, api_client=None, *, status_reader: StatusReader | None = read_coordinator_status,
                 events: bool = True, status_min_interval: float = 5.0) -> None:
        from kubernetes import client

        self.api_client = api_client if api_client is not None else load_api_client()
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.status_reader = status_reader
        self.post_events = events
        # Pod events can come in bursts: ask a coordinator at most this often.
        self.status_min_interval = status_min_interval
        self._status_cache: dict[str, tuple[float, Any]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._instance = socket.gethostname()

    # ------------------------------------------------------------------ helpers
    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault((namespace, name), threading.Lock())

    @staticmethod
    def _call(fn, *args: Any, **kwargs: Any) -> Any:
        """Call a kubernetes-client method and return the raw JSON (no model deserialisation:
        robust across client versions, and a few responses do not match their declared models)."""
        resp = fn(*args, _preload_content=False, **kwargs)
        data = resp.data if hasattr(resp, "data") else resp.read()
        return json.loads(data) if data else {}

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            return self._call(self.custom.get_namespaced_custom_object, S.GROUP, S.VERSION, namespace, S.PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return self._call(self.core.list_namespaced_pod, namespace, label_selector=S.job_selector(name)).get("items", [])

    def _read_token(self, namespace: str, name: str) -> str | None:
        from kubernetes.client.rest import ApiException

        try:
            secret = self._call(self.core.read_namespaced_secret, S.secret_name(name), namespace)
        except ApiException:
            return None
        raw = (secret.get("data") or {}).get(S.TOKEN_KEY)
        return base64.b64decode(raw).decode() if raw else None

    def _create(self, fn, namespace: str, body: Mapping[str, Any]) -> bool:
        """Create; False if it already exists."""
        from kubernetes.client.rest import ApiException

        try:
            self._call(fn, namespace, body)
            return True
        except ApiException as e:
            if e.status == 409:
                return False
            raise

    def _ensure(self, read, create, namespace: str, name: str, body_fn) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self._call(read, name, namespace)
            return
        except ApiException as e:
            if e.status != 404:
                raise
        if self._create(create, namespace, body_fn()):
            log.info("created %s/%s", namespace, name)

    def emit(self, job: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event on the FTrainJob (best-effort)."""
        log.log(logging.WARNING if type_ == "Warning" else logging.INFO, "%s/%s %s: %s",
                job["metadata"]["namespace"], job["metadata"]["name"], reason, message)
        if not self.post_events:
            return
        meta = job["metadata"]
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": S.API_VERSION, "kind": S.KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": S.MANAGED_BY},
        }
        try:
            self._call(self.core.create_namespaced_event, meta["namespace"], body)
        except Exception as e:  # events are advisory
            log.debug("could not post event: %s", e)

    def _coordinator_status(self, namespace: str, name: str) -> Any:
        address = S.coordinator_address(name, namespace)
        now = time.monotonic()
        cached = self._status_cache.get(address)
        if cached is not None and now - cached[0] < self.status_min_interval:
            return cached[1]
        try:
            info = self.status_reader(address, self._read_token(namespace, name))  # type: ignore[misc]
        except Exception as e:  # best-effort by contract
            log.debug("coordinator status read failed: %s", e)
            info = None
        self._status_cache[address] = (now, info)
        return info

    # ------------------------------------------------------------------ entry points
    def reconcile(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Bring one job's pods in line with its spec and refresh its status. Returns the status."""
        from kubernetes.client.rest import ApiException

        with self._lock(namespace, name):
            job = self.get_job(namespace, name)
            if job is None or job["metadata"].get("deletionTimestamp"):
                return None
            pods = self.list_pods(namespace, name)
            info = None
            if self.status_reader is not None and S.coordinator_running(pods):
                info = self._coordinator_status(namespace, name)
            p = S.plan(job, pods, coordinator_info=info)
            if p.valid and p.need_children:
                self._ensure(self.core.read_namespaced_secret, self.core.create_namespaced_secret, namespace,
                             S.secret_name(name), lambda: S.secret_manifest(job))
                self._ensure(self.core.read_namespaced_service, self.core.create_namespaced_service, namespace,
                             S.service_name(name), lambda: S.service_manifest(job))
            for pod in p.create:
                if self._create(self.core.create_namespaced_pod, namespace, pod):
                    log.info("created pod %s/%s", namespace, pod["metadata"]["name"])
            for pod_name in p.delete_pods:
                try:
                    self._call(self.core.delete_namespaced_pod, pod_name, namespace)
                    log.info("deleted pod %s/%s", namespace, pod_name)
                except ApiException as e:
                    if e.status != 404:
                        raise
            for type_, reason, message in p.events:
                self.emit(job, type_, reason, message)
            old = job.get("status") or {}
            if any(old.get(k) != v for k, v in p.status.items()):
                try:
                    self._call(
                        self.custom.patch_namespaced_custom_object_status, S.GROUP, S.VERSION, namespace, S.PLURAL, name, {"status": p.status})
                except ApiException as e:
                    if e.status != 404:
                        raise
            return p.status

    def cleanup(self, namespace: str, name: str, uid: str | None = None) -> int:
        """Delete every pod, service and secret this operator created for the job.

        Owner references let the garbage collector do the same on a full cluster; deleting
        explicitly makes deletion prompt and independent of kube-controller-manager.
        Returns how many objects were deleted.
        """
        from kubernetes.client.rest import ApiException

        def owned(obj: Mapping[str, Any]) -> bool:
            refs = (obj.get("metadata") or {}).get("ownerReferences") or []
            return uid is None or any(r.get("uid") == uid for r in refs)

        deleted = 0
        with self._lock(namespace, name):
            # Pods: by label (one list call). Service and Secret: by their fixed names, so the
            # operator needs no list/watch rights on secrets.
            items = self._call(self.core.list_namespaced_pod, namespace,
                               label_selector=S.job_selector(name)).get("items", [])
            targets: list[tuple[Callable[..., Any], Any]] = [(self.core.delete_namespaced_pod, obj) for obj in items]
            for reader, deleter, obj_name in (
                (self.core.read_namespaced_service, self.core.delete_namespaced_service, S.service_name(name)),
                (self.core.read_namespaced_secret, self.core.delete_namespaced_secret, S.secret_name(name)),
            ):
                try:
                    obj = self._call(reader, obj_name, namespace)
                except ApiException as e:
                    if e.status != 404:
                        raise
                    continue
                targets.append((deleter, obj))
            for deleter, obj in targets:
                if not owned(obj):
                    continue
                try:
                    self._call(deleter, obj["metadata"]["name"], namespace)
                    deleted += 1
                except ApiException as e:
                    if e.status != 404:
                        raise
        with self._locks_guard:
            self._locks.pop((namespace, name), None)
        self._status_cache.pop(S.coordinator_address(name, namespace), None)
        log.info("FTrainJob %s/%s deleted: removed %d object(s)", namespace, name, deleted)
        return deleted
