"""Machine-readable cost blocks inside markdown (e.g. benchmarks/RESULTS.md).

Format: a fenced code block whose info string is ``ftrain-sim-costs`` and whose body is one
JSON object::

    ```ftrain-sim-costs
    {
      "snapshot_stall_s": 0.12,
      "recovery_time_s": 38.5,
      "measured": ["snapshot_stall_s", "recovery_time_s"],
      "source": "benchmarks/snapshot.py + recovery.py, 2 vCPU Zen5, 2025-11-22"
    }
    ```

* Cost keys are the parameter names of :mod:`ftrain.sim.params` (``step_time_s``,
  ``snapshot_stall_s``, ``snapshot_every``, ``snapshot_commit_s``, ``recovery_time_s``,
  ``checkpoint_write_s``, ``restart_time_s``, ``heal_time_s``, ``detection_s``, ...); values
  are JSON numbers (strings for ``ec_placement`` / ``ftrain_replacement``).
* Meta keys: ``"measured"`` (list of the keys in this block that were measured; the others
  are reported as assumed), ``"source"``, ``"notes"`` (free text).
* Several blocks in one file are merged in order; a later block overrides an earlier one.
* Any other key, a non-numeric or out-of-range value, bad JSON or an unterminated block is a
  :class:`CostsError` naming the file, the block's line and the key.

Pure: :func:`parse_costs` takes the text; only :func:`load_costs` reads a file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .params import SPEC_BY_KEY, ParamError, check_value

INFO = "ftrain-sim-costs"
META_KEYS = ("measured", "source", "notes")
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")


class CostsError(ValueError):
    """A costs block is missing or malformed."""


@dataclass
class Costs:
    values: dict[str, Any] = field(default_factory=dict)
    measured: set[str] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)
    blocks: int = 0


def _blocks(text: str, where: str) -> list[tuple[int, str]]:
    """(1-based line of the opening fence, body) of every ftrain-sim-costs block."""
    out: list[tuple[int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group("fence"), m.group("info"), i
        body: list[str] = []
        i += 1
        closed = False
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) <= {fence[0]}:
                closed = True
                break
            body.append(lines[i])
            i += 1
        if info == INFO:
            if not closed:
                raise CostsError(f"{where}:{start + 1}: unterminated ```{INFO} block")
            out.append((start + 1, "\n".join(body)))
        i += 1
    return out


def parse_costs(text: str, where: str = "<costs>") -> Costs:
    """Parse every ``ftrain-sim-costs`` block in markdown ``text``."""
    blocks = _blocks(text, where)
    if not blocks:
        raise CostsError(f"{where}: no ```{INFO} block found (see ftrain/sim/costs.py for the format)")
    costs = Costs()
    for line, body in blocks:
        loc = f"{where}:{line}"
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            raise CostsError(f"{loc}: {INFO} block is not valid JSON: {e.msg} "
                             f"(block line {e.lineno}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise CostsError(f"{loc}: {INFO} block must be a JSON object, got {type(obj).__name__}")
        measured = obj.get("measured", [])
        if not isinstance(measured, list) or not all(isinstance(k, str) for k in measured):
            raise CostsError(f"{loc}: key 'measured' must be a list of key names")
        for k in measured:
            if k not in SPEC_BY_KEY:
                raise CostsError(f"{loc}: 'measured' names unknown key {k!r}")
            if k not in obj:
                raise CostsError(f"{loc}: 'measured' names key {k!r} that the block does not set")
        for k in ("source", "notes"):
            if k in obj and not isinstance(obj[k], str):
                raise CostsError(f"{loc}: key {k!r} must be a string")
        for key, value in obj.items():
            if key in META_KEYS:
                continue
            if key not in SPEC_BY_KEY:
                raise CostsError(f"{loc}: unknown key {key!r}; valid keys: "
                                 f"{', '.join(sorted(SPEC_BY_KEY))}; meta keys: {', '.join(META_KEYS)}")
            try:
                costs.values[key] = check_value(key, value)
            except ParamError as e:
                raise CostsError(f"{loc}: {e}") from None
            costs.measured.discard(key)
        costs.measured.update(measured)
        if "source" in obj:
            costs.sources.append(obj["source"])
        costs.blocks += 1
    return costs


def load_costs(path: str) -> Costs:
    """Read ``path`` and parse its cost blocks."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CostsError(f"--costs-from {path}: {e.strerror or e}") from None
    return parse_costs(text, where=path)


def format_block(values: dict[str, Any], measured: list[str] | tuple[str, ...] = (),
                 source: str | None = None) -> str:
    """Render a block (for benchmark scripts that want to publish their figures)."""
    obj: dict[str, Any] = dict(values)
    obj["measured"] = list(measured)
    if source:
        obj["source"] = source
    return f"```{INFO}\n{json.dumps(obj, indent=2)}\n```\n"
