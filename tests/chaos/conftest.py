"""Collects one row per chaos case and prints the table at the end of the run."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROWS: list[dict] = []


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
