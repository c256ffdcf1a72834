"""kopf handlers for FTrainJob: thin glue from kopf's events to :class:`Reconciler`.

:func:`build_registry` returns a fresh :class:`kopf.OperatorRegistry` with all handlers bound to
one reconciler, so the operator (``ftrain operator``) and tests (``kopf.testing.KopfRunner(...,
registry=...)``) each get their own, with whatever coordinator-status reader they inject.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypedDict

import kopf

from . import spec as S
from .coordinator_status import StatusReader, read_coordinator_status

log = logging.getLogger("ftrain.operator")

FINALIZER = "ftrain.dev/cleanup"
ANNOTATION_PREFIX = "ftrain.dev"


@dataclass
class OperatorConfig:
    """What the handlers need; every field can be replaced in tests."""

    sync_interval: float = 15.0
    """Seconds between periodic reconciles of each job (status refresh from the coordinator)."""
    status_reader: StatusReader | None = read_coordinator_status
    api_client: Any = None
    """A kubernetes.client.ApiClient; None = in-cluster service account, else $KUBECONFIG."""
    post_events: bool = True
    status_min_interval: float = 5.0
    """Ask one coordinator for its status at most this often (pod events come in bursts)."""
    reconciler_factory: Callable[..., Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """Keep kopf's bookkeeping in our own annotations/finalizer and out of FTrainJob.status,
    and need no cluster-wide read rights (no CRD/namespace scanning)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.scanning.disabled = True
    # Watch only our own pods (server-side filter), not every pod in the cluster.
    settings.watching.label_selectors["v1", "pods"] = f"{S.LABEL_MANAGED_BY}={S.MANAGED_BY}"
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = S.MANAGED_BY
    settings.execution.max_workers = max(settings.execution.max_workers or 0, 4)
    # Reconnect promptly after API server restarts; bounded watch calls.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10


def connection_info(cfg: Any) -> kopf.ConnectionInfo:
    """kopf credentials from a kubernetes.client.Configuration (token refresh hooks honoured)."""
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert or None,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file or None,
        private_key_path=cfg.key_file or None,
    )


class _JobResource(TypedDict):
    """The keyword arguments that point a kopf handler at FTrainJob objects."""

    group: str
    version: str
    plural: str
    registry: kopf.OperatorRegistry


def build_registry(config: OperatorConfig | None = None) -> kopf.OperatorRegistry:
    config = config or OperatorConfig()
    registry = kopf.OperatorRegistry()
    state: dict[str, Any] = {}

    def reconciler() -> Any:
        if "r" not in state:
            if config.reconciler_factory is not None:
                state["r"] = config.reconciler_factory()
            else:
                from .reconcile import Reconciler

                state["r"] = Reconciler(config.api_client, status_reader=config.status_reader,
                                        events=config.post_events,
                                        status_min_interval=config.status_min_interval)
        return state["r"]

    # FTrainJob is namespaced, so kopf always passes a namespace; its handler protocols say
    # ``str | None`` (for cluster-scoped kinds), and the handlers below declare the same.
    job = _JobResource(group=S.GROUP, version=S.VERSION, plural=S.PLURAL, registry=registry)

    @kopf.on.startup(registry=registry)
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings)
        reconciler()  # fail fast on bad credentials

    @kopf.on.login(registry=registry, id="login")
    def _login(**_: Any) -> kopf.ConnectionInfo:
        # kopf talks to the API server with the same credentials as the reconciler.
        return connection_info(reconciler().api_client.configuration)

    @kopf.on.resume(**job, id="resume")
    def _resume(name: str, namespace: str | None, **_: Any) -> None:
        reconciler().reconcile(namespace, name)

    @kopf.on.create(**job, id="create")
    def _create(name: str, namespace: str | None, **_: Any) -> None:
        reconciler().reconcile(namespace, name)

    @kopf.on.update(**job, field="spec", id="update")
    def _update(name: str, namespace: str | None, **_: Any) -> None:
        reconciler().reconcile(namespace, name)

    @kopf.on.delete(**job, id="cleanup")
    def _delete(name: str, namespace: str | None, uid: str, **_: Any) -> None:
        reconciler().cleanup(namespace, name, uid)

    @kopf.timer(**job, interval=config.sync_interval, initial_delay=config.sync_interval, id="sync")
    def _sync(name: str, namespace: str | None, **_: Any) -> None:
        reconciler().reconcile(namespace, name)

    @kopf.on.event("v1", "pods", labels={S.LABEL_MANAGED_BY: S.MANAGED_BY, S.LABEL_JOB: kopf.PRESENT},
                   registry=registry, id="pod-event")
    def _pod_event(event: kopf.RawEvent, labels: Mapping[str, str], namespace: str | None,
                   **_: Any) -> None:
        # A worker or coordinator pod changed (phase Failed, deleted, ...): reconcile its job now
        # rather than at the next timer tick.
        if event.get("type") is None:
            return  # initial listing; the jobs' resume handlers cover it
        job_name = labels.get(S.LABEL_JOB)
        if job_name:
            reconciler().reconcile(namespace, job_name)

    return registry
