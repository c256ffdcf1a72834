"""Aggregation strategy protocol, shared building blocks and the strategy registry.

Role: the contract between the async/federated aggregator (``ftrain.aggregate.server``) and
the update rules in the sibling modules (``fedavg``, ``fedasync``, ``fedbuff``, ``fedstale``,
``mifa``, ``diloco``).  Everything here is pure: no I/O, no threads, no wall clock, so a
strategy's behaviour is a function of the sequence of updates it is fed and nothing else.

Model representation
--------------------
The global model is a **flat, 1-D, contiguous float32 torch tensor** (the parameters of a
model concatenated, e.g. with ``torch.nn.utils.parameters_to_vector``).  A worker's update is
the change of that vector over its local work, ``delta = x_local_end - x_start``, tagged with
the global version ``x_start`` was pulled at.  Flat vectors keep every rule a handful of
vector operations and make bit-exact snapshots trivial.

Version and staleness
---------------------
``version`` starts at 0 on :meth:`Strategy.init` and goes up by one every time the global
model changes (``on_update`` returns ``True``).  The staleness of an update is
``version - update.base_version`` at the moment it arrives.

Resuming
--------
``state_dict()`` returns everything needed to continue bit-exactly (global model, version,
server-optimizer buffers, client memories, pending buffers, running statistics, and the
hyper-parameters for a consistency check); the returned tensors are copies.  A fresh strategy
built with the same options and given ``load_state_dict(state)`` produces bit-identical
results to the uninterrupted one for the same subsequent updates.

Registry
--------
``make_strategy("fedbuff", num_workers=20)`` builds a built-in strategy by name;
``make_strategy("my_pkg.module:MyStrategy", **options)`` imports a user class (or factory).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Protocol, runtime_checkable

import torch

__all__ = [
    "Update",
    "Strategy",
    "BaseStrategy",
    "BufferedStrategy",
    "ServerSGD",
    "StalenessTracker",
    "NotInitializedError",
    "BUILTIN_STRATEGIES",
    "DEFAULT_ASYNC_STRATEGY",
    "DEFAULT_SYNC_STRATEGY",
    "available_strategies",
    "make_strategy",
]


# --------------------------------------------------------------------------------------
# Data types and protocol
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Update:
    """One worker's contribution.

    ``delta`` is ``x_local_end - x_start`` (flat 1-D float32), ``base_version`` the global
    version ``x_start`` was pulled at, ``num_samples`` the size of the worker's local data (used
    as its aggregation weight by the sample-weighted rules).
    """

    delta: torch.Tensor
    base_version: int
    worker_id: str
    num_samples: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.delta, torch.Tensor):
            raise TypeError(f"Update.delta must be a torch.Tensor, got {type(self.delta).__name__}")
        if self.delta.dim() != 1:
            raise ValueError(f"Update.delta must be a flat 1-D tensor, got shape {tuple(self.delta.shape)}")
        if self.delta.dtype != torch.float32:
            raise ValueError(f"Update.delta must be float32, got {self.delta.dtype}")
        if int(self.base_version) < 0:
            raise ValueError(f"Update.base_version must be >= 0, got {self.base_version}")
        if int(self.num_samples) < 0:
            raise ValueError(f"Update.num_samples must be >= 0, got {self.num_samples}")


@runtime_checkable
class Strategy(Protocol):
    """What the aggregator needs from an update rule."""

    name: str
    #: True for rules that only accept updates made from the current version (sync FedAvg):
    #: a runtime should hold a worker that has pushed for version v until the version moves.
    synchronous: bool

    def init(self, model: torch.Tensor) -> None:
        """Set the global model at version 0 (copied) and reset all state."""
        ...

    def on_update(self, update: Update) -> bool:
        """Feed one update; True if the global model changed (version += 1)."""
        ...

    @property
    def model(self) -> torch.Tensor:
        """The current global model (the strategy's own tensor: treat it as read-only)."""
        ...

    @property
    def version(self) -> int:
        ...

    def staleness(self, update: Update) -> int:
        """``version - update.base_version`` (now)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ...


# --------------------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------------------


def _copy_state(obj: Any) -> Any:
    """Deep copy of nested dict/list/tuple state with every tensor cloned."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _copy_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_copy_state(v) for v in obj)
    return obj


class StalenessTracker:
    """Expected staleness used to normalise tau.

    Either a fixed value (``expected``) or the running mean of observed staleness: a
    cumulative mean for the first ``1/ema`` observations, then an exponential moving average
    with smoothing ``ema`` (so it follows changes in concurrency).  Before the first
    observation the running mean is ``prior`` (e.g. ``num_workers - 1``).  ``normalise(tau)``
    divides by ``max(1, expected)`` using the observations *before* this one, then records tau.
    """

    def __init__(self, expected: float | None = None, ema: float = 0.01, prior: float = 0.0) -> None:
        if expected is not None and expected < 0:
            raise ValueError(f"expected staleness must be >= 0, got {expected}")
        if not 0.0 < ema <= 1.0:
            raise ValueError(f"ema must be in (0, 1], got {ema}")
        self.fixed = None if expected is None else float(expected)
        self.ema = float(ema)
        self.mean = max(0.0, float(prior))
        self.count = 0

    @property
    def expected(self) -> float:
        return self.fixed if self.fixed is not None else self.mean

    def normalise(self, tau: int) -> float:
        t = float(tau) / max(1.0, self.expected)
        self.observe(tau)
        return t

    def observe(self, tau: int) -> None:
        self.count += 1
        self.mean += (float(tau) - self.mean) * max(self.ema, 1.0 / self.count)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.mean = float(state["mean"])
        self.count = int(state["count"])


class ServerSGD:
    """Server optimizer: SGD on the model with the aggregated *delta* as the step direction.

    Mirrors ``torch.optim.SGD`` (no dampening, no weight decay) applied to the
    pseudo-gradient ``g = -delta``: ``buf = momentum * buf + g`` (``buf = g`` on the first
    step), ``step = g + momentum * buf`` with Nesterov else ``buf``, ``x -= lr * step``.
    """

    def __init__(self, lr: float = 1.0, momentum: float = 0.0, nesterov: bool = False) -> None:
        if lr <= 0:
            raise ValueError(f"server lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"server momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0.0:
            raise ValueError("Nesterov momentum requires momentum > 0")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.buf: torch.Tensor | None = None

    def step(self, model: torch.Tensor, delta: torch.Tensor, lr_scale: float = 1.0) -> None:
        """``model`` in place; ``delta`` is the aggregated model change (may be overwritten)."""
        lr = self.lr * lr_scale
        if self.momentum == 0.0:
            model.add_(delta, alpha=lr)
            return
        if self.buf is None:
            self.buf = delta.detach().clone()
        else:
            self.buf.mul_(self.momentum).add_(delta)
        step = delta.add(self.buf, alpha=self.momentum) if self.nesterov else self.buf
        model.add_(step, alpha=lr)

    def reset(self) -> None:
        self.buf = None

    def state_dict(self) -> dict[str, Any]:
        return {"buf": None if self.buf is None else self.buf.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        buf = state["buf"]
        self.buf = None if buf is None else buf.detach().clone()


class NotInitializedError(RuntimeError, AttributeError):
    """The strategy has no model yet: call ``init(model)`` (or ``load_state_dict``) first.

    Also an AttributeError so ``hasattr(strategy, "model")`` is simply False before init.
    """


class BaseStrategy:
    """Common mechanics: model/version bookkeeping, validation, state (de)serialisation.

    Subclasses implement :meth:`_apply` (return True when the model changed) and, when they
    keep extra state, :meth:`_reset`, :meth:`_extra_state`, :meth:`_load_extra_state` and
    :meth:`config`.
    """

    name: ClassVar[str] = "base"
    synchronous: ClassVar[bool] = False

    def __init__(self) -> None:
        self._model: torch.Tensor | None = None
        self._version = 0

    # ---- hooks -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Hyper-parameters (checked on ``load_state_dict``)."""
        return {}

    def _reset(self) -> None:
        pass

    def _apply(self, update: Update, tau: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass

    # ---- protocol ----------------------------------------------------------------------
    def init(self, model: torch.Tensor) -> None:
        if not isinstance(model, torch.Tensor) or model.dim() != 1 or model.dtype != torch.float32:
            raise ValueError("the global model must be a flat 1-D float32 tensor")
        self._model = model.detach().clone().contiguous()
        self._version = 0
        self._reset()

    @property
    def model(self) -> torch.Tensor:
        if self._model is None:
            raise NotInitializedError(f"{self.name}: call init(model) first")
        return self._model

    @property
    def version(self) -> int:
        return self._version

    def staleness(self, update: Update) -> int:
        tau = self._version - int(update.base_version)
        if tau < 0:
            raise ValueError(
                f"update from worker {update.worker_id!r} claims base version "
                f"{update.base_version} > current version {self._version}"
            )
        return tau

    def on_update(self, update: Update) -> bool:
        model = self.model
        if update.delta.shape != model.shape:
            raise ValueError(
                f"update from worker {update.worker_id!r} has {update.delta.numel()} elements, "
                f"the model has {model.numel()}"
            )
        tau = self.staleness(update)
        changed = bool(self._apply(update, tau))
        if changed:
            self._version += 1
        return changed

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": dict(self.config()),
            "version": self._version,
            "model": None if self._model is None else self._model.clone(),
            "extra": _copy_state(self._extra_state()),
        }

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state is for strategy {state.get('name')!r}, not {self.name!r}")
        if strict and dict(state.get("config", {})) != self.config():
            raise ValueError(
                f"{self.name}: state was saved with options {state.get('config')}, this strategy "
                f"has {self.config()}; build it with the same options (or pass strict=False)"
            )
        model = state["model"]
        self._model = None if model is None else model.detach().clone().contiguous()
        self._version = int(state["version"])
        self._reset()
        self._load_extra_state(_copy_state(state["extra"]))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({opts})"


class BufferedStrategy(BaseStrategy):
    """Base for rules that apply one server step every ``buffer_size`` arrivals.

    Holds the server optimizer (SGD with optional (Nesterov) momentum) and the ESS option:
    with ``ess=True`` the server lr of a step is scaled by ``sqrt(min(1, rho))`` where
    ``rho = (sum w)^2 / (K sum w^2)`` over the weights the rule gave its K buffered updates
    (see :mod:`ftrain.aggregate.ess`).
    """

    def __init__(
        self,
        buffer_size: int,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        ess: bool = False,
    ) -> None:
        super().__init__()
        if int(buffer_size) < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.buffer_size = int(buffer_size)
        self.ess = bool(ess)
        self.opt = ServerSGD(lr=lr, momentum=momentum, nesterov=nesterov)

    def config(self) -> dict[str, Any]:
        return {
            "buffer_size": self.buffer_size,
            "lr": self.opt.lr,
            "momentum": self.opt.momentum,
            "nesterov": self.opt.nesterov,
            "ess": self.ess,
        }

    def _lr_scale(self, weights: list[float]) -> float:
        if not self.ess:
            return 1.0
        from ftrain.aggregate.ess import ess_lr_scale

        return ess_lr_scale(weights)

    def _server_step(self, direction: torch.Tensor, weights: list[float]) -> None:
        self.opt.step(self.model, direction, self._lr_scale(weights))

    def _reset(self) -> None:
        self.opt.reset()

    def _extra_state(self) -> dict[str, Any]:
        return {"opt": self.opt.state_dict()}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

#: Built-in names -> "module:attribute" (imported lazily).
BUILTIN_STRATEGIES: dict[str, str] = {
    "fedavg": "ftrain.aggregate.fedavg:FedAvg",
    "fedasync": "ftrain.aggregate.fedasync:FedAsync",
    "fedbuff": "ftrain.aggregate.fedbuff:FedBuff",
    "fedstale": "ftrain.aggregate.fedstale:FedStale",
    "fedvarp": "ftrain.aggregate.fedstale:FedVARP",
    "mifa": "ftrain.aggregate.mifa:MIFA",
    "diloco": "ftrain.aggregate.diloco:DiLoCo",
}

#: Default rule for ``--mode async`` (chosen by benchmarks/aggregation.py; see
#: benchmarks/RESULTS_aggregation.md for the numbers).  Build it with ``num_workers``.
DEFAULT_ASYNC_STRATEGY = "diloco"
#: Default rule for synchronous data-parallel-style rounds.
DEFAULT_SYNC_STRATEGY = "fedavg"


def available_strategies() -> list[str]:
    return sorted(BUILTIN_STRATEGIES)


def import_target(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"import path must look like 'package.module:ClassName', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for strategy {path!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from exc
    return target


def make_strategy(spec: str, **options: Any) -> Strategy:
    """Build a strategy from a built-in name or a ``"package.module:ClassName"`` path.

    ``options`` go to the class (or factory) as keyword arguments.  Unknown names raise
    ``ValueError`` listing the built-ins and the import-path form.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"strategy spec must be a non-empty string, got {spec!r}")
    key = spec.strip()
    if ":" in key:
        target_path = key
    else:
        target_path = BUILTIN_STRATEGIES.get(key.lower(), "")
        if not target_path:
            raise ValueError(
                f"unknown aggregation strategy {spec!r}; known: {', '.join(available_strategies())}; "
                "or give an import path 'package.module:ClassName'"
            )
    factory: Callable[..., Any] = import_target(target_path)
    if not callable(factory):
        raise ValueError(f"{target_path!r} is not a class or factory")
    strategy = factory(**options)
    missing = [
        m
        for m in ("init", "on_update", "model", "version", "staleness", "state_dict", "load_state_dict", "name")
        if not hasattr(type(strategy), m) and not hasattr(strategy, m)
    ]
    if missing:
        raise TypeError(f"{target_path!r} does not implement the Strategy protocol (missing {', '.join(missing)})")
    if not hasattr(strategy, "synchronous"):
        try:
            strategy.synchronous = False
        except AttributeError:
            pass
    return strategy


def check_finite_positive(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return v
