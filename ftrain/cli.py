"""`ftrain` command line: demo, launch, coordinator, agent, status, operator, simulate."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Sequence

from ftrain.config import DEFAULT_HANG_TIMEOUT_S, ENV_TOKEN, ConfigError, JobSettings, parse_ec, parse_fault


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1, help="number of nodes (agents)")
    parser.add_argument("--min-nodes", type=int, default=None, help="shrink no further than this (default: --nodes)")
    parser.add_argument("--job-id", default="ftrain-job", help="job name (lowercase letters, digits, '-')")
    parser.add_argument("--mode", default="sync", help="sync | async")
    parser.add_argument("--strategy", default="",
                        help="--mode async: aggregation strategy, a name (diloco (default), fedavg, fedasync, fedbuff, "
                             "fedstale, fedvarp, mifa) or package.module:Class")
    parser.add_argument("--snapshot-every", type=int, default=1, help="snapshot every S steps (default 1)")
    parser.add_argument("--ec", default="4+2", help="Reed-Solomon K+M per snapshot blob (capped by the node count)")
    parser.add_argument("--inject", action="append", default=[], help="fault spec, e.g. kill-node:1@step=20")
    parser.add_argument("--collective-timeout", type=float, default=None,
                        help="seconds before a blocked collective gives up (default: the hang timeout + the "
                             "heartbeat timeout, so the hang watchdog fires first)")
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0, help="seconds without heartbeat = dead node")
    parser.add_argument("--hang-timeout", type=float, default=DEFAULT_HANG_TIMEOUT_S,
                        help="minimum seconds without step progress before a live rank counts as hung (default "
                             "300; the watchdog uses max(this, 5 x p99 step time)); a frozen process (its pulses "
                             "stop) is caught within seconds whatever this is")
    parser.add_argument("--straggler-policy", default="rebalance",
                        help="response ladder for slow ranks: report | rebalance | evict")
    parser.add_argument("--compress", default="none", help="none | zstd (snapshot shards)")
    parser.add_argument("--recovery", default="inprocess",
                        help="inprocess (default: survivors keep their processes) | restart (every failure restarts "
                             "every trainer from the top of its script, with torchrun's environment: for scripts "
                             "that call dist.init_process_group() and build their own DDP / FSDP2)")
    parser.add_argument("--snapshot-memory", default="",
                        help="the most memory each agent holds for snapshots (shards of its peers' blobs and its "
                             "trainers' own copies): a size (8GiB) or a share of its machine's memory (default "
                             "50%%); a snapshot that does not fit is skipped with a warning, never a failure")
    parser.add_argument("--standby-trainers", action="store_true",
                        help="each agent keeps one process per local rank with Python, torch and ftrain already "
                             "imported, and turns it into the trainer that replaces one that died (no cold start; "
                             "costs that process's memory, a few hundred MB, per local rank)")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    durable = parser.add_argument_group("durable tier (agents write committed snapshots to disk in the background)")
    durable.add_argument("--checkpoint-dir", default="",
                         help="directory every agent can write (a shared mount): turns the durable tier on")
    durable.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100; "
                         "0: by time only)")
    durable.add_argument("--checkpoint-every-s", type=float, default=0.0,
                         help="seconds between checkpoints (default 0: by steps only)")
    durable.add_argument("--checkpoint-keep", type=int, default=2, help="complete checkpoints kept (default 2)")
    durable.add_argument("--checkpoint-dcp-every", type=int, default=1, metavar="K",
                         help="every K-th checkpoint (and the job's last) also gets a copy in torch DCP format, which "
                              "costs the agents as much work again as the checkpoint; 0: none (default 1: every "
                              "one). Resuming FSDP2 state on another world size needs a checkpoint with one")
    durable.add_argument("--resume", nargs="?", const="", default=None, metavar="DIR",
                         help="start from the newest complete checkpoint in DIR (default: --checkpoint-dir)")
    durable.add_argument("--resume-if-any", action="store_true",
                         help="with --resume: start fresh when DIR holds no complete checkpoint (the operator's way)")
    _tls_arguments(parser)


def _resume_dir(args: argparse.Namespace) -> str:
    if args.resume is None:
        if args.resume_if_any:
            raise ConfigError("--resume-if-any goes with --resume [DIR]")
        return ""
    where = args.resume or args.checkpoint_dir
    if not where:
        raise ConfigError("--resume needs a directory: --resume DIR, or --checkpoint-dir DIR to resume from")
    return os.path.abspath(where)


def _tls_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("mutual TLS (all three, or none; inherited by agents and trainers)")
    group.add_argument("--tls-cert", default=None, help="PEM certificate of this process")
    group.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    group.add_argument("--tls-ca", default=None, help="PEM CA certificate that signs every peer")


def _apply_tls(args: argparse.Namespace) -> None:
    """Exports --tls-* as FTRAIN_TLS_* so this process and its children use mTLS (checked here)."""
    from ftrain.rpc import ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, tls_from_env

    for flag, env in (("tls_cert", ENV_TLS_CERT), ("tls_key", ENV_TLS_KEY), ("tls_ca", ENV_TLS_CA)):
        value = getattr(args, flag, None)
        if value:
            os.environ[env] = os.path.abspath(value)
    tls_from_env()


def _check_compress(codec: str) -> None:
    if codec == "zstd":
        try:
            import zstandard  # noqa: F401
        except ImportError:
            raise ConfigError("--compress zstd needs the zstandard package: pip install 'ftrain[compress]'") from None


def _check_strategy(args: argparse.Namespace) -> None:
    if args.mode == "async":
        from ftrain.aggregate.server import check_strategy_spec

        try:
            check_strategy_spec(args.strategy)
        except ValueError as error:
            raise ConfigError(f"--strategy: {error}") from None
    elif args.strategy:
        logging.getLogger("ftrain").warning("--strategy %s is ignored: it applies to --mode async only", args.strategy)


def _settings(args: argparse.Namespace, replace_timeout_s: float) -> JobSettings:
    _check_compress(args.compress)
    _check_strategy(args)
    return JobSettings(
        job_id=args.job_id, target_nodes=args.nodes, min_nodes=args.min_nodes or args.nodes,
        snapshot_every=args.snapshot_every, ec=parse_ec(args.ec), mode=args.mode, strategy=args.strategy,
        inject=tuple(parse_fault(spec) for spec in args.inject), replace_timeout_s=replace_timeout_s,
        collective_timeout_s=args.collective_timeout, heartbeat_dead_after_s=args.heartbeat_timeout,
        hang_timeout_s=args.hang_timeout, straggler_policy=args.straggler_policy,
        compress=args.compress, recovery=args.recovery, checkpoint_dir=os.path.abspath(args.checkpoint_dir) if args.checkpoint_dir else "",
        checkpoint_every=args.checkpoint_every, checkpoint_every_s=args.checkpoint_every_s,
        checkpoint_keep=args.checkpoint_keep, checkpoint_dcp_every=args.checkpoint_dcp_every, resume_dir=_resume_dir(args), resume_optional=args.resume_if_any,
        snapshot_memory=args.snapshot_memory, standby_trainers=args.standby_trainers,
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


def _check_script(command: list[str]) -> None:
    """--backend local: a training script that is not there fails before any node starts."""
    script = command[0]
    if script.endswith(".py") and not os.path.isfile(script):
        raise ConfigError(f"training script {script!r} not found (from {os.getcwd()})")


def cmd_launch(args: argparse.Namespace) -> int:
    from ftrain.launch.local import LocalLauncher

    if args.backend not in ("local", "ssh", "ray"):
        raise ConfigError(f"--backend must be local, ssh or ray; got {args.backend!r}")
    if args.hosts and args.backend != "ssh":
        raise ConfigError("--hosts is read by --backend ssh only")
    hosts = None
    if args.backend == "ssh":
        from ftrain.launch.ssh import load_hosts

        if not args.hosts:
            raise ConfigError("--backend ssh needs --hosts FILE (one `[user@]host[:port] [python=PATH]` per line)")
        hosts = load_hosts(args.hosts)  # errors name the file and line
    if args.nodes is None:  # ssh: one node per hosts-file line
        args.nodes = len(hosts) if hosts else 1
    if args.no_replace:
        replace_timeout = 0.0
    else:
        replace_timeout = max(args.replace_delay + 30.0, 60.0)
    settings = _settings(args, replace_timeout)
    if args.local_steps is not None:  # async mode: local steps per push, inherited by agents and trainers
        if args.local_steps < 1:
            raise ConfigError(f"--local-steps must be >= 1; got {args.local_steps}")
        os.environ["FTRAIN_LOCAL_STEPS"] = str(args.local_steps)
    common = dict(replace=not args.no_replace, replace_delay_s=args.replace_delay, metrics_port=args.metrics_port,
                  timeout_s=args.timeout, coordinator_port=args.coordinator_port,
                  token=os.environ.get(ENV_TOKEN) or None, agent_metrics_port_base=args.agent_metrics_port_base)
    if args.backend == "ssh":
        from ftrain.launch.ssh import launcher_from_args as ssh_launcher

        assert hosts is not None  # loaded above for --backend ssh
        launcher: Any = ssh_launcher(args, settings, _script_command(args), hosts, spares=args.spares, **common)
    elif args.backend == "ray":
        from ftrain.launch.ray import launcher_from_args as ray_launcher

        if args.spares:
            raise ConfigError("--spares is for the local and ssh backends: with Ray, a lost agent's actor is restarted")
        launcher = ray_launcher(args, settings, _script_command(args), **common)
    else:
        command = _script_command(args)
        _check_script(command)
        launcher = LocalLauncher(settings, args.nproc_per_node, command, spares=args.spares, **common)
    from ftrain.textfmt import LINE_WIDTH, say

    if args.events_file:  # written live: a launcher killed mid-run leaves the events up to then
        launcher.coordinator.state.open_events_file(args.events_file)
    say("ftrain launch", f"coordinator {launcher.coordinator.address}"
        + (f", metrics on port {launcher.coordinator.metrics_port}" if launcher.coordinator.metrics_port else "")
        + f"; starting {settings.target_nodes} node(s)" + (f" and {args.spares} spare(s)" if args.spares else ""))
    try:
        code = launcher.run()
    except KeyboardInterrupt:  # the launcher has already torn its agents down
        say("ftrain launch", "interrupted; every agent was stopped")
        return 130
    for line in job_summary(launcher.coordinator.state.status()):
        say("ftrain launch", line, width=0 if line.startswith(("job ", "warning: fault")) else LINE_WIDTH)
    return code


def job_summary(status: dict) -> list[str]:
    """The launcher's closing lines: outcome, effective erasure code and codec, failures and steps,
    and in async mode the aggregator's version, updates and staleness."""
    from ftrain.status import aggregator_lines, codec_text, ec_line
    from ftrain.textfmt import strip_source_paths

    # the outcome's message is ftrain's own (it names lost shards, hosts, files): kept whole
    head = f"job {status['state']}" + (f": {strip_source_paths(status['message'])}" if status.get("message") else "")
    lines = [ec_line(status)]
    committed = status.get("last_committed_step", -1)
    lines.append(f"codec {codec_text(status)}; failures {status.get('failures', 0)}, recoveries "
                 f"{status.get('recoveries', 0)}, lost steps {status.get('lost_steps', 0)}"
                 + (f", last committed step {committed}" if status.get("mode") != "async" else ""))
    durable = status.get("checkpoint")
    if durable:
        lines.append(("resumed from the durable checkpoint of step " + str(durable["resumed_from"]) + "; "
                      if durable.get("resumed_from") is not None else "")
                     + (f"last durable checkpoint: step {durable['last_step']} in {durable['dir']}"
                        if durable.get("dir") and durable.get("last_step", -1) >= 0 else
                        "no durable checkpoint written" if durable.get("dir") else "").rstrip("; "))
    lines += aggregator_lines(status) + list(status.get("unfired_faults") or [])
    # a failed job's reason is the last line (what a user sees first); a completed job's outcome leads
    return lines + [head] if status.get("state") == "failed" else [head] + lines


def cmd_coordinator(args: argparse.Namespace) -> int:
    from ftrain.coordinator.server import Coordinator

    settings = _settings(args, args.replace_timeout)
    coordinator = Coordinator(settings, _token_from_env("ftrain coordinator"), host=args.host, port=args.port,
                              metrics_port=args.metrics_port)
    if args.events_file:
        coordinator.state.open_events_file(args.events_file)
    coordinator.start()
    print(f"ftrain coordinator listening on {coordinator.address}", flush=True)
    try:
        state = coordinator.wait_done()
        coordinator.wait_checkpoints()  # the last durable checkpoint is finished before the agents go
        coordinator.linger()  # let every agent hear the outcome before the coordinator goes away
    except KeyboardInterrupt:
        state = "interrupted"
    coordinator.stop()
    return 0 if state == "complete" else 1


def cmd_agent(args: argparse.Namespace) -> int:
    from ftrain.agent.agent import Agent

    agent = Agent(args.coordinator, _token_from_env("ftrain agent"), args.nproc_per_node, _script_command(args),
                  job_id=args.job_id, node_id=args.node_id, host=args.host, port=args.port,
                  metrics_port=args.metrics_port, max_restarts=args.max_restarts,
                  checkpoint_dir=os.path.abspath(args.checkpoint_dir) if args.checkpoint_dir else "",
                  snapshot_memory=args.snapshot_memory)
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
    launch.add_argument("--hosts", default=None,
                        help="hosts file (ssh backend): one `[user@]host[:port] [python=PATH] [identity=KEY] "
                             "[cwd=DIR] [addr=ADDRESS]` per line; --nodes defaults to the number of lines")
    launch.add_argument("--coordinator-host", default=None,
                        help="address the embedded coordinator binds and advertises (ssh/ray; default 127.0.0.1 "
                             "when every node is local, else the local address that reaches them)")
    launch.add_argument("--remote-python", default="python3",
                        help="ssh: interpreter (or venv python) on the hosts; a hosts-file python= overrides it")
    launch.add_argument("--ssh-option", action="append", default=[], metavar="OPTION",
                        help="ssh: extra `-o OPTION` for every connection, e.g. StrictHostKeyChecking=accept-new")
    launch.add_argument("--ssh-identity", default=None, help="ssh: private key (a hosts-file identity= overrides it)")
    launch.add_argument("--remote-env", action="append", default=[], metavar="NAME=VALUE",
                        help="ssh/ray: environment for the agents and trainers (sent with the token, not on argv)")
    launch.add_argument("--ray-address", default=None,
                        help="ray: address of an existing cluster (e.g. auto or HOST:6379); default: start a local one")
    launch.add_argument("--ray-placement", default="auto",
                        help="ray: auto | pack | spread | strict-spread | strict-pack (auto: STRICT_SPREAD when "
                             "the cluster has a node per agent, else PACK)")
    launch.add_argument("--ray-cpus-per-node", type=float, default=1.0, help="ray: CPUs reserved per agent actor")
    launch.add_argument("--gpus-per-node", type=float, default=0, help="ray: GPUs requested per agent actor")
    launch.add_argument("--replace-delay", type=float, default=1.0, help="seconds before a lost node is replaced")
    launch.add_argument("--local-steps", type=int, default=None,
                        help="--mode async: local steps between a worker's push and pull (default 10; "
                             "ftrain.init(local_steps=H) overrides)")
    launch.add_argument("--spares", type=int, default=0,
                        help="hot-spare nodes started up front; one takes a lost node's ranks at once (local backend)")
    launch.add_argument("--no-replace", action="store_true", help="shrink to the survivors instead of replacing")
    launch.add_argument("--timeout", type=float, default=None, help="fail the job after this many seconds")
    launch.add_argument("--events-file", default=None,
                        help="write the coordinator's events here as they happen (JSON lines, one flushed line each)")
    launch.add_argument("--coordinator-port", type=int, default=0,
                        help="port of the embedded coordinator (default: a free one; for `ftrain status` set "
                             f"{ENV_TOKEN} too, else the job gets a random token)")
    launch.add_argument("--agent-metrics-port-base", type=int, default=None,
                        help="agent of node i serves /metrics on BASE+i (replacements continue the count); "
                             "default with --metrics-port: a free port per agent, listed by `ftrain status`")
    launch.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    launch.set_defaults(func=cmd_launch, nodes=None)  # None: 1, or one per --hosts line

    coord = sub.add_parser("coordinator", help="run the coordinator (token from FTRAIN_TOKEN)")
    _job_arguments(coord)
    coord.add_argument("--host", default="127.0.0.1")
    coord.add_argument("--port", type=int, default=29400)
    coord.add_argument("--replace-timeout", type=float, default=60.0,
                       help="seconds a lost node's slot waits for a replacement before the job shrinks")
    coord.add_argument("--events-file", default=None,
                       help="write the events here as they happen (JSON lines, one flushed line each)")
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
    agent.add_argument("--checkpoint-dir", default="",
                       help="where this node mounts the job's checkpoint directory, when not at the job's path")
    agent.add_argument("--snapshot-memory", default="",
                       help="this node's snapshot memory limit, instead of the job's --snapshot-memory (a size "
                            "such as 8GiB, or a share of this machine's memory such as 50%%)")
    _tls_arguments(agent)
    agent.add_argument("command", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    agent.set_defaults(func=cmd_agent)

    status = sub.add_parser("status", help="show a running job")
    status.add_argument("--coordinator", required=True, help="HOST:PORT")
    status.add_argument("--json", action="store_true")
    _tls_arguments(status)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    from ftrain.textfmt import install_log_format

    install_log_format(getattr(logging, str(args.log_level).upper(), logging.WARNING))
    try:
        _apply_tls(args)
        return int(args.func(args) or 0)
    except ConfigError as error:
        print(f"ftrain {args.cmd}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
