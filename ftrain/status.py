"""`ftrain status --coordinator HOST:PORT [--json]`: a running job at a glance.

Asks the coordinator's `GetStatus` RPC (token from `FTRAIN_TOKEN`) and prints members,
generation, world size, last committed step, the erasure code in use (and the one requested),
the codec backend of the nodes, snapshot stall and interval, stragglers, in async mode the
aggregator's version, updates and staleness, and the last events as a table that fits an
80-column terminal, or, with `--json`, the coordinator's JSON as is (keys `generation`,
`world_size`, `last_committed_step` are stable: the Kubernetes operator reads them). Neither
shows the token or any other secret.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Sequence

import grpc

from ftrain.config import ENV_TOKEN, ConfigError, parse_host_port
from ftrain.proto.ftrain.v1 import coordinator_pb2 as pb, coordinator_pb2_grpc
from ftrain.rpc import describe_rpc_error, open_channel, token_metadata
from ftrain.textfmt import natural_key

WIDTH = 80
RECENT_EVENTS = 8


class StatusError(RuntimeError):
    """The status could not be fetched (unreachable coordinator, wrong token...)."""


def fetch_status(address: str, token: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The coordinator's status as a dict. Raises StatusError with a readable message."""
    channel = open_channel(address)
    try:
        reply = coordinator_pb2_grpc.CoordinatorStub(channel).GetStatus(
            pb.StatusRequest(), timeout=timeout_s, metadata=token_metadata(token))
    except grpc.RpcError as error:
        raise StatusError(describe_rpc_error(error, f"coordinator {address}")) from None
    finally:
        channel.close()
    try:
        return json.loads(reply.json)
    except ValueError as error:
        raise StatusError(f"coordinator {address} sent a status that is not JSON: {error}") from None


# -- formatting --------------------------------------------------------------------------------------
def _cut(text: str, width: int) -> str:
    text = str(text).replace("\r", " ").replace("\n", " ").replace("\t", " ")
    if len(text) <= width:
        return text
    return text[: max(0, width - 3)] + "..." if width > 3 else text[:width]


def _cut_middle(text: str, width: int) -> str:
    """Cuts the middle out: node ids and host:port keep their distinguishing ends."""
    text = _cut(text, len(text))
    if len(text) <= width or width <= 5:
        return _cut(text, width)
    head = (width - 3) // 2
    return text[:head] + "..." + text[len(text) - (width - 3 - head):]


def _ranks(ranks: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    parts: list[str] = []
    ordered = sorted(ranks)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts) or "-"


def _table(headers: list[str], rows: list[list[str]], flexible: Sequence[Sequence[int]],
           width: int = WIDTH) -> list[str]:
    """Left-aligned columns separated by two spaces (one if tight).

    `flexible`: groups of columns that may shrink (middle cut), in order: the first group shrinks
    to 12 characters before the next one gives anything.
    """
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    gap = 2
    if sum(widths) + gap * (len(widths) - 1) > width:
        gap = 1
    excess = sum(widths) + gap * (len(widths) - 1) - width
    for group in flexible:
        while excess > 0:
            candidates = [i for i in group if widths[i] > max(len(headers[i]), 12)]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
    shrinkable = {i for group in flexible for i in group}
    lines = []
    for row in [headers] + rows:
        cells = [(_cut_middle if i in shrinkable else _cut)(cell, widths[i]).ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append((" " * gap).join(cells).rstrip()[:width])
    return lines


def _seconds(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.1f} s"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "es" if word.endswith("ss") else "s")


def ec_line(status: dict[str, Any]) -> str:
    """The erasure code in use: 'EC 1+1 on 3 nodes (requested 4+2): survives 2 node losses at once'."""
    eff = status.get("ec_effective") or {}
    requested = status.get("ec", "?")
    if not eff:
        return f"EC {requested}"
    code = f"{eff.get('k', '?')}+{eff.get('m', '?')}"
    note = "" if code == requested else f" (requested {requested})"
    lost = int(eff.get("survives_node_losses", 0))
    if eff.get("of") == "aggregator state":
        return (f"aggregator state EC {code} on {_plural(int(eff.get('nodes', 0)), 'agent')}{note}: "
                f"survives {_plural(lost, 'agent loss')}")
    return f"EC {code} on {_plural(int(eff.get('nodes', 0)), 'node')}{note}: survives {_plural(lost, 'node loss')} at once"


def codec_text(status: dict[str, Any]) -> str:
    """'isal' when every node runs it, else 'isal on 2 nodes, numpy on 1'."""
    backends = status.get("codec_backends") or {}
    if not backends:
        return "-"
    if len(backends) == 1:
        return next(iter(backends))
    return ", ".join(f"{name} on {_plural(count, 'node')}" for name, count in backends.items())


def aggregator_lines(status: dict[str, Any]) -> list[str]:
    """Async mode: 'aggregator version 12: 40 updates accepted, 2 ignored, 0 refused' and
    'staleness of accepted updates: mean 0.80, max 3' (none in sync mode)."""
    agg = status.get("aggregator")
    if not agg:
        return []
    return [f"aggregator version {agg.get('version', 0)}: {agg.get('updates_applied', 0)} updates accepted, "
            f"{agg.get('updates_ignored', 0)} ignored, {agg.get('updates_refused', 0)} refused",
            f"staleness of accepted updates: mean {float(agg.get('mean_staleness', 0.0)):.2f}, "
            f"max {agg.get('max_staleness', 0)}"]


def durable_lines(status: dict[str, Any]) -> list[str]:
    """The durable tier: the last complete checkpoint, the one being written, the last problem."""
    d = status.get("checkpoint")
    if not d:
        return []
    line = (f"durable: last step {d['last_step']}" if d.get("last_step", -1) >= 0
            else "durable: no checkpoint written yet") + (f" in {d['dir']}" if d.get("dir") else "")
    if d.get("in_flight_step") is not None:
        line += f"; writing step {d['in_flight_step']}"
    if d.get("resumed_from") is not None:
        line += f"; resumed from step {d['resumed_from']}"
    return [line] + ([f"durable: {d['last_problem']}"] if d.get("last_problem") else [])


def format_status(status: dict[str, Any], width: int = WIDTH) -> str:
    """The readable table (every line at most `width` characters)."""
    s = status
    lines: list[str] = []
    head = f"job {s.get('job_id', '?')}  {s.get('state', '?')}"
    if s.get("message"):
        head += f": {s['message']}"
    lines.append(_cut(head, width))
    recovery = f" ({s['recovery']} recovery)" if s.get("recovery") and s.get("mode") != "async" else ""
    lines.append(_cut(f"mode {s.get('mode', '?')}{recovery}  codec {codec_text(s)}  uptime {s.get('uptime_s', 0):.0f} s",
                      width))
    lines.append(_cut(ec_line(s), width))
    lines += [_cut(line, width) for line in aggregator_lines(s)]
    pending = "  (re-forming)" if s.get("pending_generation") else ""
    lines.append(_cut(f"generation {s.get('generation', -1)}  world size {s.get('world_size', 0)}  "
                      f"last committed step {s.get('last_committed_step', -1)}{pending}", width))
    every = s.get("snapshot_every", 1)
    lines.append(_cut(f"snapshot every {every} step{'s' if every != 1 else ''}: stall "
                      f"{_seconds(s.get('snapshot_stall_s'))}, interval {_seconds(s.get('snapshot_interval_s'))}",
                      width))
    held = [(int(m.get("shard_bytes") or 0), str(m.get("node", "?")), int(m.get("shard_limit_bytes") or 0))
            for m in s.get("members", []) if m.get("alive")]
    if any(size for size, _, _ in held):
        top = max(held)
        limit = f" of its {top[2] / 2**20:.0f} MiB limit" if top[2] else ""
        lines.append(_cut(f"snapshot memory on the agents: {sum(b for b, _, _ in held) / 2**20:.1f} MiB "
                          f"(most: {top[0] / 2**20:.1f} MiB{limit} on {top[1]})", width))
    lines += [_cut(line, width) for line in durable_lines(s)]
    stragglers = s.get("stragglers") or []
    flagged = ", ".join(f"rank {x['rank']} ({x.get('slowdown', 0):.2f}x)" if isinstance(x, dict) else f"rank {x}"
                        for x in stragglers) or "none"
    lines.append(_cut(f"failures {s.get('failures', 0)}  recoveries {s.get('recoveries', 0)}  "
                      f"lost steps {s.get('lost_steps', 0)}  stragglers: {flagged}", width))
    lines.append("")
    rows = []
    for m in sorted(s.get("members", []), key=lambda m: natural_key(str(m.get("node", "")))):
        state = "alive" if m.get("alive") else "dead"
        hb = m.get("heartbeat_age_s")
        rows.append([str(m.get("node", "?")), state, _ranks(m.get("ranks") or []),
                     "-" if m.get("step") is None else str(m["step"]),
                     "-" if hb is None else f"{hb:.1f}s", str(m.get("address") or "-"),
                     str(m.get("metrics") or "-")])
    lines += _table(["NODE", "STATE", "RANKS", "STEP", "BEAT", "AGENT", "METRICS"], rows, flexible=((5, 6), (0,)),
                    width=width)
    events = list(s.get("events") or [])[-RECENT_EVENTS:]
    if events:
        lines.append("")
        lines.append("RECENT EVENTS")
        kind_width = min(17, max(len(str(e.get("kind", ""))) for e in events))
        for event in events:
            when = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
            kind = _cut(event.get("kind", ""), kind_width).ljust(kind_width)
            lines.append(_cut(f"{when}  {kind}  {event.get('message', '')}", width))
    return "\n".join(line[:width] for line in lines)


def show_status(address: str, as_json: bool = False) -> int:
    """Prints the status of the job whose coordinator is at `address`. Returns the exit code."""
    token = os.environ.get(ENV_TOKEN, "")
    if not token:
        print(f"ftrain status: set the job token in the {ENV_TOKEN} environment variable "
              "(the value the job's coordinator was started with)", file=sys.stderr)
        return 2
    try:
        parse_host_port(address)
        status = fetch_status(address, token)
    except (ConfigError, StatusError) as error:
        print(f"ftrain status: {error}", file=sys.stderr)
        return 2 if isinstance(error, ConfigError) else 1
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return 0
