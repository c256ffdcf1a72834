"""Short, readable one-line texts for error reasons, event lines and the survival of a code.

Errors that cross processes (a failed collective's reason, a trainer's exception) arrive as
PyTorch wrote them: ``[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553]
Connection closed by peer [127.0.0.1]:41234``. :func:`short_reason` keeps the first sentence
whole and drops the build-machine source locations; :func:`fit` shortens a line at a word
boundary to a terminal width.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import IO

LINE_WIDTH = 100
"""Width that event and error lines fit in (`ftrain status`, the demo, `ftrain launch`)."""


def natural_key(text: str) -> list[int | str]:
    """Sorts node names as people do: node2 before node10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]

# "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] " or
# "(/pytorch/torch/csrc/distributed/c10d/ProcessGroupGloo.cpp:123)": a source file with a line number
_SOURCE_LOCATION = re.compile(r"[\[(]\s*(?:[A-Za-z]:)?[\w./\\-]*/[\w.-]+\.(?:cc|cpp|cxx|c|h|hpp|cu|py):\d+\s*[\])]\s*")
# "Exception raised from recvBytes at /pytorch/...:123 (most recent call first):" and what follows it
_CPP_TRACE = re.compile(r"\s*Exception raised from .*", re.S)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\[(])")


def strip_source_paths(text: str) -> str:
    """`text` without PyTorch's C++ source locations and C++ stack traces."""
    text = _CPP_TRACE.sub("", str(text))
    text = _SOURCE_LOCATION.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def first_sentence(text: str) -> str:
    """The first sentence of `text`, whole (up to the first '. ' that starts a new sentence)."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    parts = _SENTENCE_END.split(text, maxsplit=1)
    return parts[0] if parts else text


def short_reason(text: str, limit: int = 300) -> str:
    """An error reason fit for one line: source paths stripped, the first sentence kept whole.

    A first sentence longer than `limit` characters (a very long message without full stops) is
    cut at a word boundary with '...'.
    """
    sentence = first_sentence(strip_source_paths(text))
    return fit(sentence, limit) if len(sentence) > limit else sentence


def fit(text: str, width: int = LINE_WIDTH) -> str:
    """`text` on one line of at most `width` characters, cut at a word boundary with '...'."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    cut = text[: width - 3]
    space = cut.rfind(" ")
    if space > width // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "..."


def survives(k: int, m: int, nodes: int) -> int:
    """How many simultaneous node losses a job of `nodes` nodes survives with RS(k, m) shards that
    never sit on their producer (see ftrain.snapshot.placement): m + 1 when there is a shard
    target at all, else none."""
    return m + 1 if nodes >= 2 else 0


def restore_phrase(step: int, durable: bool = False) -> str:
    """'starts from scratch' for step -1 (no snapshot committed yet), else 'resumes from the
    snapshot of step N' (or 'the durable checkpoint of step N', read from disk)."""
    if step < 0:
        return "starts from scratch"
    return f"resumes from the {'durable checkpoint' if durable else 'snapshot'} of step {step}"


ENV_LOG_SOURCE = "FTRAIN_LOG_SOURCE"
"""Set by an agent for its trainers ("node1/0"): their ftrain log lines name where they come from."""


class LineFormatter(logging.Formatter):
    """One format for every ftrain log line: ``HH:MM:SS source: message``, PyTorch's source paths
    stripped, a long string argument (an error's reason) cut to its first sentence. Info lines
    are cut to `width` columns; warnings and errors are kept whole, since what went wrong is in
    their reason (a traceback, when there is one, follows on its own lines). Errors say so after
    the source."""

    def __init__(self, source: str = "", width: int = LINE_WIDTH) -> None:
        super().__init__()
        self.source = source
        self.width = width

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(record.created))
        source = self.source or record.name
        level = "" if record.levelno < logging.ERROR else f"{record.levelname.lower()}: "
        args = record.args
        if isinstance(args, tuple):  # the variable parts (an error's reason): their first sentence, whole
            args = tuple(short_reason(a) if isinstance(a, str) and len(a) > 40 else a for a in args)
        try:
            message = str(record.msg) % args if args else str(record.msg)
        except (TypeError, ValueError):
            message = record.getMessage()
        line = f"{when} {source}: {level}{strip_source_paths(message)}"
        if record.levelno < logging.WARNING:  # warnings and errors stay whole: their reason is the point
            line = fit(line, self.width)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def say(source: str, message: str, stream: IO[str] | None = None, width: int = LINE_WIDTH) -> None:
    """Prints one line in the log format (``HH:MM:SS source: message``) to stderr, cut to
    `width` columns (0: whole, for an error that must be read in full)."""
    out = stream if stream is not None else sys.stderr
    line = f"{time.strftime('%H:%M:%S')} {source}: {strip_source_paths(message)}"
    out.write((fit(line, width) if width else line) + "\n")
    out.flush()


def install_log_format(level: int | None = None, source: str = "") -> None:
    """Sends the root logger's lines through :class:`LineFormatter` (stderr)."""
    handler = logging.StreamHandler()
    handler.setFormatter(LineFormatter(source))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if level is not None:
        root.setLevel(level)


def install_trainer_log_format() -> None:
    """In a trainer started by an agent (``$FTRAIN_LOG_SOURCE`` set): the `ftrain` logger's lines
    use the one format, named after the node and local rank, unless the script configured
    logging itself."""
    source = os.environ.get(ENV_LOG_SOURCE, "")
    logger = logging.getLogger("ftrain")
    if not source or logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(LineFormatter(source))
    logger.addHandler(handler)
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
