"""Kubernetes operator for FTrainJob (``ftrain operator``).

For every FTrainJob (group ``ftrain.dev``, version ``v1alpha1``) the operator creates a token
Secret, a coordinator Service + Pod (``ftrain coordinator --port 29400 --metrics-port 9400``) and
one worker Pod per node (``ftrain agent --coordinator <svc>:29400 --nproc-per-node P -- CMD``),
replaces pods that fail or disappear, and reports phase / generation / worldSize /
lastCommittedStep / restarts / conditions in the job's status. See docs/kubernetes.md.

Wiring into the CLI::

    p = sub.add_parser("operator", help="run the Kubernetes operator")
    ftrain.operator.add_arguments(p)
    ... return ftrain.operator.run(args)

kopf and kubernetes are optional dependencies (``pip install 'ftrain[k8s]'``); this module
imports them only inside :func:`run`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .spec import API_VERSION, GROUP, KIND, PLURAL, VERSION  # noqa: F401  (re-exported)

__all__ = ["add_arguments", "run", "GROUP", "VERSION", "PLURAL", "KIND", "API_VERSION"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                        help="watch FTrainJobs in this namespace (repeatable; globs allowed); "
                             "default: all namespaces")
    parser.add_argument("--standalone", action="store_true", default=True,
                        help="run without kopf peering (the default: one operator replica)")
    parser.add_argument("--peering", metavar="NAME", default=None,
                        help="use kopf peering object NAME instead of --standalone (needs the "
                             "KopfPeering CRDs and RBAC for them)")
    parser.add_argument("--sync-interval", type=float, default=15.0, metavar="SECONDS",
                        help="reconcile each job and refresh its status from the coordinator this often "
                             "(default 15)")
    parser.add_argument("--no-coordinator-status", action="store_true",
                        help="do not query coordinators (`ftrain status --json`) for generation/step")
    parser.add_argument("--liveness", metavar="URL", default=None,
                        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--kubeconfig", default=None, metavar="FILE",
                        help="kubeconfig to use (default: in-cluster service account, else $KUBECONFIG)")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    """Run the operator until SIGINT/SIGTERM. Returns a process exit code."""
    import importlib.util

    missing = [m for m in ("kopf", "kubernetes") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"ftrain operator: missing {', '.join(missing)}; install with: pip install 'ftrain[k8s]'",
              file=sys.stderr)
        return 2
    import kopf

    from .coordinator_status import read_coordinator_status
    from .handlers import OperatorConfig, build_registry
    from .reconcile import load_api_client

    verbose = bool(getattr(args, "verbose", False))
    kopf.configure(debug=verbose, verbose=verbose)
    logging.getLogger("ftrain.operator").setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        api_client = load_api_client(getattr(args, "kubeconfig", None))
    except Exception as e:
        print(f"ftrain operator: cannot load Kubernetes credentials: {e}", file=sys.stderr)
        return 2
    if getattr(args, "kubeconfig", None):
        import os

        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's own login reads it
    config = OperatorConfig(
        sync_interval=float(getattr(args, "sync_interval", 15.0)),
        status_reader=None if getattr(args, "no_coordinator_status", False) else read_coordinator_status,
        api_client=api_client,
    )
    namespaces = list(getattr(args, "namespace", None) or [])
    peering = getattr(args, "peering", None)
    kopf.run(
        registry=build_registry(config),
        standalone=peering is None,
        peering_name=peering,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=getattr(args, "liveness", None),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ftrain.operator`` (same as ``ftrain operator``)."""
    parser = argparse.ArgumentParser(prog="ftrain operator", description="Run the Kubernetes operator for FTrainJob resources.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
