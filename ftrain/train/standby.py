"""A standby trainer process: the interpreter, torch and ftrain's trainer side already imported,
waiting for the trainer it is to become.

Its agent (ftrain.agent.standby) starts it ahead of any failure. It blocks on one line on stdin:
the trainer's command line after the interpreter (`script.py ARGS` or `-m module ARGS`) and its
whole environment, as JSON. It then takes that environment and runs the script as `__main__`
(runpy, exactly as `python script.py` would: `sys.argv`, `sys.path[0]`, `__main__` pickling), so a
replaced trainer skips the seconds of `import torch`. End of input (its agent left): it exits.
"""
from __future__ import annotations

import json
import os
import runpy
import sys


def _preload() -> None:
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import torch.distributed  # noqa: F401
    import torch.nn.parallel  # noqa: F401

    import ftrain.train.session  # noqa: F401  (gRPC, the snapshot engine, the codec)
    try:  # an optimizer's first step imports it (about a second)
        import torch._dynamo  # noqa: F401
    except ImportError:  # pragma: no cover - a torch built without it
        pass


def become(order: dict) -> None:
    """Turns this process into the trainer `order` describes (argv after the interpreter, env)."""
    os.environ.update(order["env"])  # the agent started this process with the same environment, less the trainer's own
    from ftrain.textfmt import install_trainer_log_format

    install_trainer_log_format()  # at ftrain's import there was no FTRAIN_LOG_SOURCE yet
    devnull = os.open(os.devnull, os.O_RDONLY)  # as a trainer started by its agent: no input
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - fd 0 lives as long as the process
    argv = list(order["argv"])
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return
    sys.argv = argv
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
    runpy.run_path(argv[0], run_name="__main__")


def main() -> None:
    _preload()
    line = sys.stdin.readline()
    if not line.strip():
        return
    become(json.loads(line))


if __name__ == "__main__":
    main()
