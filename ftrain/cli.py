"""`ftrain` command line: demo, launch, coordinator, agent, status, operator, simulate."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from ftrain.config import ENV_TOKEN, ConfigError, JobSettings, parse_ec, parse_fault


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes (agents)")
    parser.add_argument("--min-nodes", type=int, default=None, help="shrink no further than this (default: --nodes)")
    parser.add_argument("--job-id", default="ftrain-job", help="job name (lowercase letters, digits, '-')")
    parser.add_argument("--mode", default="sync", help="sync | async")
    parser.add_argument("--strategy", default="", help="async aggregation strategy (name or module:Class)")
    parser.add_argument("--snapshot-every", type=int, default=1, help="snapshot every S steps (default 1)")
    parser.add_argument("--ec", default="4+2", help="Reed-Solomon K+M per snapshot blob (capped by the node count)")
    parser.add_argument("--inject", action="append", default=[], help="fault spec, e.g. kill-node:1@step=20")
    parser.add_argument("--collective-timeout", type=float, default=30.0,
                        help="seconds before a blocked collective is abandoned (hang bound)")
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0, help="seconds without heartbeat = dead node")
    parser.add_argument("--compress", default="none", help="none | zstd (snapshot shards)")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")


def _settings(args: argparse.Namespace, replace_timeout_s: float) -> JobSettings:
    return JobSettings(
        job_id=args.job_id, target_nodes=args.nodes, min_nodes=args.min_nodes or args.nodes,
        snapshot_every=args.snapshot_every, ec=parse_ec(args.ec), mode=args.mode, strategy=args.strategy,
        inject=tuple(parse_fault(spec) for spec in args.inject), replace_timeout_s=replace_timeout_s,
        collective_timeout_s=args.collective_timeout, heartbeat_dead_after_s=args.heartbeat_timeout,
        compress=args.compress,
    ).validate()


def _token_from_env(what: str) -> str:
    token = os.environ.get(ENV_TOKEN, "")
    if not token:
        raise ConfigError(f"{what} needs the job token in the {ENV_TOKEN} environment variable "
                          "(the same value for the coordinator, every agent and trainer)")
    return token


def _script_command(args: argparse.Namespace) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError("missing training command: put it after `--`, e.g. `-- examples/digits_mlp.py`")
    return command


def cmd_launch(args: argparse.Namespace) -> int:
    from ftrain.launch.local import LocalLauncher

    if args.backend != "local":
        raise ConfigError(f"--backend {args.backend}: only 'local' is available in this build")
    if args.no_replace:
        replace_timeout = 0.0
    else:
        replace_timeout = max(args.replace_delay + 30.0, 60.0)
    settings = _settings(args, replace_timeout)
    launcher = LocalLauncher(settings, args.nproc_per_node, _script_command(args), replace=not args.no_replace,
                             replace_delay_s=args.replace_delay, metrics_port=args.metrics_port,
                             timeout_s=args.timeout)
    code = launcher.run()
    state = launcher.coordinator.state
    print(f"ftrain launch: job {state.job_state}"
          + (f": {state.message}" if state.message else "")
          + f" (failures {state.failures}, recoveries {state.recoveries}, last committed step "
            f"{state.catalog.newest_committed})", file=sys.stderr)
    return code


def cmd_coordinator(args: argparse.Namespace) -> int:
    from ftrain.coordinator.server import Coordinator

    settings = _settings(args, args.replace_timeout)
    coordinator = Coordinator(settings, _token_from_env("ftrain coordinator"), host=args.host, port=args.port,
                              metrics_port=args.metrics_port).start()
    print(f"ftrain coordinator listening on {coordinator.address}", flush=True)
    try:
        state = coordinator.wait_done()
    except KeyboardInterrupt:
        state = "interrupted"
    coordinator.stop()
    return 0 if state == "complete" else 1


def cmd_agent(args: argparse.Namespace) -> int:
    from ftrain.agent.agent import Agent

    agent = Agent(args.coordinator, _token_from_env("ftrain agent"), args.nproc_per_node, _script_command(args),
                  job_id=args.job_id, node_id=args.node_id, host=args.host, port=args.port,
                  metrics_port=args.metrics_port, max_restarts=args.max_restarts)
    return agent.run()


def cmd_status(args: argparse.Namespace) -> int:
    from ftrain.status import show_status

    return show_status(args.coordinator, as_json=args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from ftrain.demo import run_demo

    return run_demo(steps=args.steps, kill_step=args.kill_step, nodes=args.nodes)


def cmd_simulate(args: argparse.Namespace) -> int:
    from ftrain.sim.cli import run

    return run(args)


def cmd_operator(args: argparse.Namespace) -> int:
    from ftrain.operator import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftrain", description="Fault-tolerant distributed training for PyTorch")
    parser.add_argument("--log-level", default=os.environ.get("FTRAIN_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="cmd", required=True)

    demo = sub.add_parser("demo", help="4 simulated nodes, a node killed mid-run, recovery shown live")
    demo.add_argument("--steps", type=int, default=60)
    demo.add_argument("--kill-step", type=int, default=25)
    demo.add_argument("--nodes", type=int, default=4)
    demo.set_defaults(func=cmd_demo)

    launch = sub.add_parser("launch", help="run a job: embedded coordinator + agents")
    _job_arguments(launch)
    launch.add_argument("--nproc-per-node", type=int, default=1)
    launch.add_argument("--backend", default="local", help="local | ssh | ray")
    launch.add_argument("--hosts", default=None, help="hosts file (ssh backend)")
    launch.add_argument("--replace-delay", type=float, default=1.0, help="seconds before a lost node is replaced")
    launch.add_argument("--no-replace", action="store_true", help="shrink to the survivors instead of replacing")
    launch.add_argument("--timeout", type=float, default=None, help="fail the job after this many seconds")
    launch.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    launch.set_defaults(func=cmd_launch)

    coord = sub.add_parser("coordinator", help="run the coordinator (token from FTRAIN_TOKEN)")
    _job_arguments(coord)
    coord.add_argument("--host", default="127.0.0.1")
    coord.add_argument("--port", type=int, default=29400)
    coord.add_argument("--replace-timeout", type=float, default=60.0,
                       help="seconds a lost node's slot waits for a replacement before the job shrinks")
    coord.set_defaults(func=cmd_coordinator)

    agent = sub.add_parser("agent", help="run a node agent (token from FTRAIN_TOKEN)")
    agent.add_argument("--coordinator", required=True, help="HOST:PORT")
    agent.add_argument("--nproc-per-node", type=int, default=1)
    agent.add_argument("--node-id", default="")
    agent.add_argument("--job-id", default="")
    agent.add_argument("--host", default="127.0.0.1", help="address this agent binds and advertises")
    agent.add_argument("--port", type=int, default=0)
    agent.add_argument("--metrics-port", type=int, default=None)
    agent.add_argument("--max-restarts", type=int, default=10)
    agent.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    agent.set_defaults(func=cmd_agent)

    status = sub.add_parser("status", help="show a running job")
    status.add_argument("--coordinator", required=True, help="HOST:PORT")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    simulate = sub.add_parser("simulate", help="goodput projection at scale")
    try:
        from ftrain.sim.cli import add_arguments as sim_arguments

        sim_arguments(simulate)
    except ImportError:  # pragma: no cover - the simulator ships with the package
        pass
    simulate.set_defaults(func=cmd_simulate)

    operator = sub.add_parser("operator", help="run the Kubernetes operator (FTrainJob)")
    try:
        from ftrain.operator import add_arguments as operator_arguments

        operator_arguments(operator)
    except ImportError:
        pass
    operator.set_defaults(func=cmd_operator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC core's fork notices are noise for users
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except ConfigError as error:
        print(f"ftrain {args.cmd}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
