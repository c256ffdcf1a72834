"""`ftrain demo`: 4 simulated nodes train an MLP on sklearn's digits; one node is SIGKILLed
mid-run (agent, trainer and the snapshot shards it held), a replacement joins, the job
restores from erasure-coded snapshots and finishes. Then the same job runs without the
failure and the final parameters are compared bit for bit.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from ftrain.config import JobSettings, parse_fault
from ftrain.launch.base import Launcher
from ftrain.launch.local import LocalLauncher
from ftrain.textfmt import LINE_WIDTH, fit

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits_mlp.py"
BAR = 32


def _example_path() -> Path:
    if EXAMPLE.exists():
        return EXAMPLE
    raise FileNotFoundError(f"the demo needs {EXAMPLE} (run it from a checkout of the ftrain repository)")


class LiveView:
    """Renders progress and new coordinator events while a launcher runs."""

    def __init__(self, label: str, total: int, out=sys.stdout, live: bool = True) -> None:
        self.label, self.total, self.out, self.live = label, total, out, live
        self.seen = 0
        self.started = time.monotonic()
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.last_line = ""
        self.last_filled = -1
        self.announced = False

    def __call__(self, launcher: Launcher) -> None:
        state = launcher.coordinator.state
        with state.cond:
            events = list(state.events)[self.seen:]
            self.seen += len(events)
            step = max(state.machine.catalog.newest_committed, 0)
            plan = state.machine.plan
            world = plan.generation.world_size if plan else 0
            generation = plan.generation.number if plan else -1
            joined = sum(1 for node in state.machine.membership.nodes.values() if node.alive)
        if self.live and not self.announced:  # the nodes take seconds to start: say so
            self.out.write(f"  {self.label}: starting {launcher.started_agents} nodes (agent + trainer processes)...\n")
            self.announced = True
        for event in events:
            if self.live and event["kind"] in ("inject", "failure", "generation", "recovered", "job-complete", "job-failed"):
                if self.tty:
                    self.out.write("\r" + " " * 79 + "\r")
                self.out.write(fit(f"  {time.monotonic() - self.started:5.1f}s {self.label}: {event['message']}",
                                   LINE_WIDTH) + "\n")
        filled = int(BAR * min(step, self.total) / max(self.total, 1))
        where = (f"world {world} gen {generation}" if generation >= 0
                 else f"{joined}/{launcher.settings.target_nodes} nodes joined")
        line = f"  {self.label:<9} [{'#' * filled}{'.' * (BAR - filled)}] step {step:>3}/{self.total} {where}"[:79]
        if not self.live or (line == self.last_line and not events):
            return
        if self.tty:
            self.out.write("\r" + line)
        elif filled != self.last_filled and (filled % 8 == 0 or step >= self.total):
            self.out.write(line + "\n")  # not a terminal: a line per quarter of progress
        self.last_line, self.last_filled = line, filled
        self.out.flush()

    def done(self) -> None:
        if self.live and self.tty:
            self.out.write("\n")


def _run(label: str, nodes: int, steps: int, out: Path, inject: list[str], log_dir: Path, live: bool) -> tuple[int, dict]:
    settings = JobSettings(job_id=f"demo-{label}", target_nodes=nodes, min_nodes=nodes, snapshot_every=1,
                           inject=tuple(parse_fault(spec) for spec in inject), replace_timeout_s=60.0)
    log = open(log_dir / f"{label}.log", "w")
    launcher = LocalLauncher(settings, 1, [str(_example_path()), "--steps", str(steps), "--out", str(out)],
                             replace=True, replace_delay_s=1.0, agent_output=log, timeout_s=600)
    view = LiveView(label, steps, live=live)
    started = time.monotonic()
    code = launcher.run(on_tick=view)
    view(launcher)
    view.done()
    log.close()
    state = launcher.coordinator.state
    recovered = [e for e in state.events if e["kind"] == "recovered"]
    restores = [e.get("restore_step", -1) for e in state.events if e["kind"] == "generation"][1:]
    status = state.status()
    return code, {"status": status,"seconds": time.monotonic() - started, "failures": status["failures"], "recoveries": status["recoveries"],
                  "recovery_s": recovered[0]["recovery_s"] if recovered else None,
                  "restore_step": restores[0] if restores else None, "message": state.message}


def _ec_summary(status: dict) -> str:
    from ftrain.status import codec_text, ec_line

    return f"{ec_line(status).removeprefix('EC ')}; codec {codec_text(status)}"


def run_demo(steps: int = 60, kill_step: int = 25, nodes: int = 4) -> int:
    import torch

    if not 0 < kill_step < steps:
        print(f"ftrain demo: --kill-step must be between 1 and --steps - 1 ({steps - 1}); got {kill_step}", file=sys.stderr)
        return 2
    if nodes < 2:
        print("ftrain demo: --nodes must be >= 2 (one node is killed)", file=sys.stderr)
        return 2
    logging.getLogger("ftrain").setLevel(logging.ERROR)  # the live view reports what matters
    from ftrain.snapshot.erasure import default_backend, isal_library_path
    from ftrain.snapshot.placement import effective_code
    from ftrain.textfmt import survives

    victim = nodes // 2
    k, m = effective_code(4, 2, nodes)
    backend = default_backend()
    where = f" ({os.path.basename(isal_library_path() or '')})" if backend == "isal" else " (slow: pip install pyeclib)"
    print(f"ftrain demo: {nodes} simulated nodes x 1 CPU trainer, MLP on sklearn digits, {steps} steps.\n"
          f"Node {victim} (agent + trainer + the snapshot shards it holds) is SIGKILLed at step {kill_step};\n"
          f"a replacement node joins and the job restores from erasure-coded in-memory snapshots.\n"
          f"Snapshots are Reed-Solomon {k}+{m} coded (survives {survives(k, m, nodes)} node losses at once), "
          f"codec {backend}{where}.\n")
    with tempfile.TemporaryDirectory(prefix="ftrain-demo-") as tmp:
        tmp_path = Path(tmp)
        code, run = _run("faulty", nodes, steps, tmp_path / "faulty.pt", [f"kill-node:{victim}@step={kill_step}"],
                         tmp_path, live=True)
        if code != 0:
            print(f"\nthe job failed: {run['message']}\n--- trainer/agent log ---\n"
                  + (tmp_path / "faulty.log").read_text()[-4000:], file=sys.stderr)
            return 1
        print("\nverifying: the same job without the failure...")
        ref_code, ref = _run("reference", nodes, steps, tmp_path / "reference.pt", [], tmp_path, live=True)
        if ref_code != 0:
            print(f"the reference job failed: {ref['message']}", file=sys.stderr)
            return 1
        faulty = torch.load(tmp_path / "faulty.pt")
        reference = torch.load(tmp_path / "reference.pt")
    identical = all(torch.equal(faulty["params"][k], reference["params"][k]) for k in reference["params"])
    recomputed = kill_step - run["restore_step"] if run["restore_step"] is not None else 0
    rows = [
        ("steps", f"{faulty['step']} of {steps}"),
        ("failures", f"{run['failures']} (node {victim} killed at step {kill_step})"),
        ("recoveries", str(run["recoveries"])),
        ("recovery time", f"{run['recovery_s']:.2f} s (failure -> next committed step)" if run["recovery_s"] else "-"),
        ("restored from", f"the snapshot of step {run['restore_step']} (in memory, erasure-coded; no file written)"
         if run["restore_step"] is not None and run["restore_step"] >= 0 else "the start (no snapshot committed yet)"),
        ("erasure code", _ec_summary(run["status"])),
        ("lost steps", f"0 ({recomputed} step(s) recomputed from the snapshot, same samples, same RNG)"),
        ("final loss", f"{faulty['final_loss']:.4f} (accuracy {faulty['accuracy']:.3f})"),
        ("failure-free run", f"final loss {reference['final_loss']:.4f}"),
        ("parameters", "bit-identical to the failure-free run" if identical else "DIFFERENT from the failure-free run"),
        ("wall time", f"{run['seconds']:.1f} s with the failure, {ref['seconds']:.1f} s without"),
    ]
    print("\nsummary")
    for name, value in rows:
        print(f"  {name:<17} {value}")
    return 0 if identical else 1
