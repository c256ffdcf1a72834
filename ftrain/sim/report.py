"""Rendering of simulation results: JSON document, side-by-side text table, optional PNG.

Only :func:`plot_scaling` touches matplotlib, imported lazily (it is optional).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .engine import CAUSES, Job, Summary, closed_form, scenario
from .params import SPECS, Resolved

SCHEMA = "ftrain.sim/v1"

CAUSE_LABELS = {
    "rework": "rework (rolled-back work)",
    "restart": "restart / recovery downtime",
    "checkpoint": "checkpoint / snapshot stalls",
    "planned": "planned interruptions",
    "slow": "slow nodes",
    "degraded": "degraded capacity",
}


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def to_json(job: Job, p: Resolved, results: Mapping[str, Summary], runs: int, seed: int) -> dict:
    """The ``--json`` document (schema ``ftrain.sim/v1``; infinities become null)."""
    cf = {k: _finite(v) for k, v in closed_form(job, p).items()}
    return {
        "schema": SCHEMA,
        "job": {"gpus": job.gpus, "gpus_per_node": job.gpus_per_node, "nodes": job.nodes,
                "days": job.days, "runs": runs, "seed": seed},
        "scenario": scenario(job, p),
        "closed_form": cf,
        "costs": {
            s.key: {"value": _finite(p[s.key]), "source": p.provenance[s.key].source,
                    "basis": p.provenance[s.key].basis, "note": s.note}
            for s in SPECS
        },
        "policies": list(results),
        "results": {
            name: {
                "goodput": r.goodput,
                "goodput_sd": r.goodput_sd,
                "goodput_runs": r.goodput_runs,
                "lost_gpu_hours": r.lost_gpu_hours,
                "lost_gpu_hours_by_cause": r.lost_gpu_hours_by_cause,
                "events": r.events,
                **{k: _finite(v) for k, v in r.extra.items()},
            }
            for name, r in results.items()
        },
    }


def _num(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def _dur(s: float) -> str:
    if s == math.inf:
        return "inf"
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.3g} s"


def _policy_setting(name: str, job: Job, p: Resolved, r: Summary) -> str:
    if name == "checkpoint-restart":
        tau = r.extra.get("checkpoint_interval_s", math.nan)
        how = "Daly" if p["checkpoint_interval_s"] is None else "set"
        return f"ckpt {_num(tau)} s ({how})"
    if name == "replica-heal":
        groups = max(1, job.nodes // p["replica_group_nodes"])
        return f"{groups} groups, heal {_num(p['heal_time_s'])} s"
    return f"snap/{p['snapshot_every']}, RS({p['ec_k']},{p['ec_m']}), {p['ftrain_replacement']}"


def format_table(job: Job, p: Resolved, results: Mapping[str, Summary], runs: int, seed: int) -> str:
    sc = scenario(job, p)
    cf = closed_form(job, p)
    names = list(results)
    w0, w = 32, 25
    out: list[str] = []
    out.append(f"ftrain simulate: {_num(job.gpus)} GPUs = {_num(job.nodes)} nodes x "
               f"{job.gpus_per_node}, {job.days:g} days, {runs} run{'s' if runs != 1 else ''} "
               f"(seed {seed})")
    out.append(f"expected per day: {sc['node_failures_per_day']:.2f} node failures"
               + (f" + {sc['domain_failures_per_day']:.2f} domain failures"
                  if sc["domain_failures_per_day"] else "")
               + f" (job MTBF {_dur(cf['job_mtbf_s'])}), {sc['planned_per_day']:g} planned "
               f"interruption(s), {sc['slow_episodes_per_day']:.2f} slow-node episodes")
    out.append("")

    def row(label: str, cells: list[str]) -> None:
        out.append(label.ljust(w0) + "".join(c.rjust(w) for c in cells).rstrip())

    row("", names)
    row("", ["-" * (w - 2)] * len(names))
    sd = runs > 1
    row("goodput", [f"{r.goodput * 100:.2f}%" + (f" ±{r.goodput_sd * 100:.2f}" if sd else "")
                    for r in results.values()])
    row(f"lost GPU-hours ({job.days:g} d)", [_num(r.lost_gpu_hours) for r in results.values()])
    for c in CAUSES:
        row("  " + CAUSE_LABELS[c], [_num(r.lost_gpu_hours_by_cause[c]) for r in results.values()])
    row("failures", [_num(r.events["failures"], 1) for r in results.values()])
    row("full restarts", [_num(r.events["full_restarts"], 1) for r in results.values()])
    row("in-place recoveries / heals",
        [_num(r.events["recoveries"] + r.events["heals"], 1) for r in results.values()])
    row("fallbacks to disk checkpoint", [_num(r.events["fallbacks"], 1) for r in results.values()])
    row("slow-node evictions", [_num(r.events["evictions"], 1) for r in results.values()])
    row("setting", [_policy_setting(n, job, p, r) for n, r in results.items()])
    out.append("")
    if "checkpoint-restart" in results:
        out.append(
            f"checkpoint-restart closed form (Daly 2006; node failures only, no planned/slow): "
            f"tau_opt = {_num(cf['daly_tau_opt_s'])} s (Young {_num(cf['young_tau_s'])} s), "
            f"goodput {cf['daly_goodput'] * 100:.2f}% at tau = {_num(cf['checkpoint_interval_s'])} s")
        out.append("")
    if "ftrain" in results and math.isfinite(cf["ftrain_snapshot_every_young"]):
        out.append(f"ftrain snapshot interval, Young estimate sqrt(2 x stall x MTBF): "
                   f"{cf['ftrain_snapshot_every_young']:.1f} steps "
                   f"(in use: every {p['snapshot_every']})")
        out.append("")
    out.append("costs (value, where it came from, basis):")
    relevant = set(names)
    for s in SPECS:
        if not relevant & set(s.policies):
            continue
        pv = p.provenance[s.key]
        v = p[s.key]
        if v is None:
            vs = "auto"
        else:
            vs = f"{v:g}" if isinstance(v, (int, float)) else str(v)
        out.append(f"  {s.key:<32}{vs:>10}  {pv.source:<10} {pv.basis}")
    return "\n".join(out)


SWEEP_GPUS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 100000, 131072)


def plot_scaling(path: str, points: Mapping[int, Mapping[str, Summary]], title: str) -> None:
    """Write a PNG of goodput vs GPUs (one line per policy). Needs matplotlib."""
    import matplotlib  # lazy: optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies: list[str] = []
    for res in points.values():
        policies.extend(x for x in res if x not in policies)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pol in policies:
        gpus = sorted(g for g in points if pol in points[g])
        ys = [points[g][pol].goodput * 100 for g in gpus]
        es = [points[g][pol].goodput_sd * 100 for g in gpus]
        ax.errorbar(gpus, ys, yerr=es, marker="o", capsize=3, label=pol)
    ax.set_xscale("log")
    ax.set_xlabel("GPUs")
    ax.set_ylabel("goodput (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
