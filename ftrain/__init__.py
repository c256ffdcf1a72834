"""ftrain: distributed fault-tolerant training for PyTorch.

    import ftrain
    session = ftrain.init(model, optimizer, dataset=ds, batch_size=32, seed=0)
    for step, batch in session.steps(total_steps): ...

The trainer-side API is imported lazily, so the agent and coordinator start without torch.
"""
import os
from typing import Any

# Set before anything imports grpc. Agents and launchers fork trainer processes while gRPC threads
# run; gRPC's fork handlers can abort such a child between fork and exec, and no child of ours
# uses its parent's channels, so they are off. gRPC core's INFO notices are noise for users.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from ftrain.config import ConfigError  # noqa: E402
from ftrain.textfmt import install_trainer_log_format  # noqa: E402

install_trainer_log_format()  # only in a trainer an agent started (FTRAIN_LOG_SOURCE set)

__all__ = ["init", "Session", "ConfigError", "CoordinatorUnavailable", "Unauthenticated", "JobFailed"]
__version__ = "0.1.0"

_LAZY = {
    "init": "ftrain.train.session", "Session": "ftrain.train.session",
    "CoordinatorUnavailable": "ftrain.train.client", "Unauthenticated": "ftrain.train.client",
    "JobFailed": "ftrain.train.client",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ftrain' has no attribute {name!r}")
