"""``ftrain simulate``: goodput projection at scale.

The lead's ``ftrain/cli.py`` wires this in as a sub-command::

    sim_cli.add_arguments(subparser)
    ...
    return sim_cli.run(args)

Standalone: ``python -m ftrain.sim.cli --gpus 16384``.

Precedence of every cost: flag > ``--costs-from FILE`` block > built-in default.
Exit codes: 0 success, 2 bad flags / costs file / parameters.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from . import engine, report
from .costs import CostsError, load_costs
from .params import CHOICES, POLICIES, SPEC_BY_KEY, SPECS, ParamError, check_value, resolve

PROG = "ftrain simulate"

_METAVAR = {
    "step_time_s": "S", "snapshot_stall_s": "C", "recovery_time_s": "R",
    "node_failures_per_1000_days": "F", "checkpoint_write_s": "C", "restart_time_s": "R",
    "checkpoint_interval_s": "TAU", "snapshot_every": "K", "replica_group_nodes": "NODES",
    "domain_nodes": "NODES",
}


def _bounded(convert: Callable[[str], Any], minimum: float, inclusive: bool, rule: str, name: str
             ) -> Callable[[str], Any]:
    """An argparse type: `convert(text)` that is >= `minimum` (or > it when not `inclusive`);
    errors read "must be {rule}, got '...'"."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
        if value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


_positive_int = _bounded(int, 1, True, "a positive integer", "positive_int")
_nonneg_int = _bounded(int, 0, True, "an integer >= 0", "nonneg_int")
_positive_float = _bounded(float, 0.0, False, "a number > 0", "positive_float")


def _spec_type(key: str):
    spec = SPEC_BY_KEY[key]

    def conv(text: str) -> Any:
        try:
            raw: Any = int(text) if spec.kind == "int" else float(text)
        except ValueError:
            what = "an integer" if spec.kind == "int" else "a number"
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        try:
            return check_value(key, raw)
        except ParamError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    conv.__name__ = key  # argparse names the type in some messages
    return conv


def _ec(text: str) -> tuple[int, int]:
    parts = text.split("+")
    try:
        k, m = (int(x) for x in parts)
    except ValueError:
        k = m = 0
    if len(parts) != 2 or k < 1 or m < 1:
        raise argparse.ArgumentTypeError(f"expected K+M with K, M >= 1 (e.g. 4+2), got {text!r}")
    return k, m


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``ftrain simulate`` flags to ``parser``."""
    parser.add_argument("--gpus", type=_positive_int, required=True, metavar="N",
                        help="GPUs in the job (required)")
    parser.add_argument("--gpus-per-node", type=_positive_int, default=8, metavar="G",
                        help="GPUs per node (default 8)")
    parser.add_argument("--policy", action="append", choices=POLICIES + ("all",), default=None,
                        help="policy to simulate; repeat for several (default: all three, "
                             "side by side)")
    parser.add_argument("--days", type=_positive_float, default=30.0, metavar="D",
                        help="simulated wall-clock days per run (default 30)")
    parser.add_argument("--runs", type=_positive_int, default=5,
                        help="independent seeded runs to average (default 5)")
    parser.add_argument("--seed", type=_nonneg_int, default=0, help="RNG seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead")
    parser.add_argument("--costs-from", metavar="FILE", default=None,
                        help="read ```ftrain-sim-costs blocks from a markdown file "
                             "(e.g. benchmarks/RESULTS.md); flags override it")
    parser.add_argument("--plot", metavar="FILE", default=None,
                        help="also write a PNG of goodput vs scale (needs matplotlib)")
    g = parser.add_argument_group("costs and rates (default: built-in, see ftrain/sim/params.py)")
    for spec in SPECS:
        if spec.key in ("ec_k", "ec_m"):
            continue
        default = "derived" if spec.default is None else spec.default
        kw: dict[str, Any] = {"dest": spec.key, "default": None,
                              "help": f"{spec.note} (default {default}; {spec.basis})"
                              .replace("%", "%%")}
        if spec.kind == "choice":
            kw["choices"] = CHOICES[spec.key]
        else:
            kw["type"] = _spec_type(spec.key)
            kw["metavar"] = _METAVAR.get(
                spec.key, "SEC" if spec.key.endswith("_s") else "RATE" if "per_" in spec.key else "X")
        g.add_argument(spec.flag, **kw)
    g.add_argument("--ec", type=_ec, default=None, metavar="K+M",
                   help="ftrain Reed-Solomon code (default 4+2; assumed); EC groups have K+M+1 nodes")


def _fail(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def resolve_args(args: argparse.Namespace):
    """Flags + costs file + defaults -> (Job, Resolved, policies). Raises ValueError."""
    explicit: dict[str, Any] = {}
    sources: dict[str, str] = {}
    measured: set[str] = set()
    costs_from = getattr(args, "costs_from", None)
    if costs_from:
        costs = load_costs(costs_from)
        for k, v in costs.values.items():
            explicit[k] = v
            sources[k] = f"file:{costs_from}"
        measured = set(costs.measured)
    for spec in SPECS:
        v = getattr(args, spec.key, None)
        if v is not None:
            explicit[spec.key] = v
            sources[spec.key] = "flag"
    ec = getattr(args, "ec", None)
    if ec is not None:
        explicit["ec_k"], explicit["ec_m"] = ec
        sources["ec_k"] = sources["ec_m"] = "flag"
    p = resolve(explicit, sources, measured)
    job = engine.Job(gpus=args.gpus, gpus_per_node=args.gpus_per_node, days=args.days)
    chosen = args.policy or ["all"]
    policies = list(POLICIES) if "all" in chosen else list(dict.fromkeys(chosen))
    if "ftrain" in policies and job.nodes < p["ec_k"] + p["ec_m"] + 1:
        raise ParamError(
            f"--gpus {job.gpus} gives {job.nodes} node(s); the ftrain policy needs at least "
            f"K+M+1 = {p['ec_k'] + p['ec_m'] + 1} nodes for RS({p['ec_k']},{p['ec_m']}) "
            f"(lower --ec or pick another --policy)")
    return job, p, policies


def run(args: argparse.Namespace) -> int:
    """Run the simulation described by parsed ``args``; print a table or JSON. Exit code."""
    try:
        job, p, policies = resolve_args(args)
    except (CostsError, ValueError) as e:
        return _fail(str(e))
    plot_path = getattr(args, "plot", None)
    if plot_path:
        try:
            import matplotlib  # noqa: F401  (only checking it is there before the long run)
        except ImportError:
            return _fail("--plot needs matplotlib (pip install matplotlib)")
    runs, seed = args.runs, args.seed
    results = engine.simulate(job, p, policies, runs=runs, seed=seed)
    if args.json:
        doc = report.to_json(job, p, results, runs, seed)
        if plot_path:
            doc["plot"] = plot_path
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        print(report.format_table(job, p, results, runs, seed))
    if plot_path:
        points = {}
        for g in sorted(set(report.SWEEP_GPUS) | {job.gpus}):
            j = engine.Job(gpus=g, gpus_per_node=job.gpus_per_node, days=job.days)
            pols = [x for x in policies if x != "ftrain" or j.nodes >= p["ec_k"] + p["ec_m"] + 1]
            points[g] = engine.simulate(j, p, pols, runs=runs, seed=seed)
        try:
            report.plot_scaling(plot_path, points,
                                f"goodput vs scale ({job.days:g} days, {runs} runs)")
        except OSError as e:
            return _fail(f"--plot {plot_path}: {e.strerror or e}")
        if not args.json:
            print(f"\nplot written to {plot_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Goodput projection at scale: checkpoint-restart vs replica-heal vs ftrain "
                    "(discrete-event simulation).")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
