"""Collects one row per chaos case and prints the table at the end of the run."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROWS: list[dict] = []


def params_identical(expected: dict, final: dict) -> bool:
    """Whether two ledger-job results (torch.load of --out) hold bit-identical parameters."""
    return all(torch.equal(expected["params"][k], final["params"][k]) for k in expected["params"])


def check_against_reference(directory: Path, fault: str, detect: float | None, recover: float | None) -> None:
    """For cases that start their own processes: adds the row for `fault`, then requires that the
    job moved past generation 0 and that final.pt equals the failure-free ref.pt in `directory`."""
    final, reference = torch.load(directory / "final.pt"), torch.load(directory / "ref.pt")
    identical = params_identical(reference, final)
    ROWS.append({"fault": fault, "outcome": "completed", "detect": detect, "recover": recover, "lost": "-",
                 "identical": "yes" if identical else "NO"})
    assert final["generation"] >= 1
    assert identical, "final parameters differ from the failure-free run"


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest hook
    if not ROWS:
        return
    write = terminalreporter.write_line
    write("")
    write(f"{'fault':34}{'outcome':>10}{'detect s':>10}{'recover s':>11}{'lost':>6}{'bit-identical':>15}")
    for row in ROWS:
        detect = f"{row['detect']:.2f}" if row["detect"] is not None else "-"
        recover = f"{row['recover']:.2f}" if row["recover"] is not None else "-"
        write(f"{row['fault']:34}{row['outcome']:>10}{detect:>10}{recover:>11}{row['lost']:>6}{row['identical']:>15}")
