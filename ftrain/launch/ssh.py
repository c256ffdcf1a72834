"""`ftrain launch --backend ssh --hosts FILE`: an embedded coordinator here, one agent per host over SSH.

Each agent is started with the system `ssh` client (`-o BatchMode=yes`, never a password prompt)
under a tiny remote bootstrap (`BOOTSTRAP`, run with `python -c`). The bootstrap

* reads one JSON line from the ssh session's stdin: the job token (so it never appears on a
  command line visible in `ps`), extra environment and the working directory;
* starts `python -m ftrain agent ...` in its own process group (kill-node = SIGKILL to that
  group takes the agent and its trainers, not the bootstrap), and prints its PIDs;
* kills that process group as soon as its stdin closes, i.e. when the ssh session ends for
  any reason (launcher exit, Ctrl-C, a lost connection), so no remote agent outlives the job.

The launcher streams every remote line to its stderr prefixed with `[node host]`. A host's
agent that dies (kill-node) is replaced after `--replace-delay` by a new agent on the same host
under a new node id, unless `--no-replace`. On teardown the launcher closes the sessions' stdin,
then kills what is left by PID (remotely with `ssh HOST kill`, locally by process group).

Hosts file: one node per line, `[user@]host[:port] [key=value ...]`, `#` starts a comment.
Keys: `python=` (remote interpreter or venv python, default `--remote-python`), `identity=`
(ssh private key), `cwd=` (remote working directory, default the launcher's), `addr=` (address
the agent binds and advertises to the coordinator and peers, default the host name).
"""
from __future__ import annotations

import collections
import ipaddress
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

from ftrain.config import ConfigError, JobSettings
from ftrain.launch.base import AgentProcess, Launcher, ProcessLauncher

log = logging.getLogger("ftrain.launch.ssh")

BOOTSTRAP_MARK = "FTRAIN-BOOTSTRAP"

# Runs on the remote host as `python -u -c BOOTSTRAP PYTHON -m ftrain ... agent ...`. Standard
# library only and no ftrain import, so it starts in milliseconds. Also used by the Ray backend.
BOOTSTRAP = r'''
import ctypes, json, os, signal, subprocess, sys, threading
line = sys.stdin.readline()
try:
    cfg = json.loads(line)
except ValueError:
    cfg = {}
if not cfg.get("token"):
    print("ftrain bootstrap: no job token on stdin", file=sys.stderr, flush=True)
    sys.exit(2)
env = dict(os.environ)
env.update(cfg.get("env") or {})
env["FTRAIN_TOKEN"] = cfg["token"]
cwd = cfg.get("cwd") or None
if cwd and not os.path.isdir(cwd):
    print("ftrain bootstrap: working directory %s does not exist here; staying in %s" % (cwd, os.getcwd()),
          file=sys.stderr, flush=True)
    cwd = None
def _die_with_parent():
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except Exception:
        pass
try:
    child = subprocess.Popen(sys.argv[1:], env=env, cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=_die_with_parent)
except OSError as error:
    print("ftrain bootstrap: cannot start %s: %s" % (sys.argv[1] if len(sys.argv) > 1 else "agent", error),
          file=sys.stderr, flush=True)
    sys.exit(127)
print("FTRAIN-BOOTSTRAP started pid=%d bootstrap=%d host=%s" % (child.pid, os.getpid(), os.uname().nodename),
      flush=True)
def _kill_group(*_):
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except OSError:
            pass
def _watch_stdin():
    for _ in sys.stdin:
        pass
    _kill_group()
for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(sig, lambda *_: (_kill_group(), os._exit(143)))
threading.Thread(target=_watch_stdin, daemon=True).start()
code = child.wait()
try:
    os.killpg(child.pid, signal.SIGKILL)  # leftovers of the agent's group (trainers)
except OSError:
    pass
print("FTRAIN-BOOTSTRAP exit code=%d" % code, flush=True)
sys.exit(code if code >= 0 else 128 - code)
'''

_HOST_RE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?(?:\[(?P<v6>[0-9A-Fa-f:.%a-zA-Z]+)\]|"
                      r"(?P<host>[A-Za-z0-9_.][A-Za-z0-9_.-]*))(?::(?P<port>[^:]*))?$")
HOST_KEYS = ("python", "identity", "cwd", "addr")
# environment the agents inherit from the launcher: every FTRAIN_* setting (mTLS file paths, which
# must then exist on the hosts; async --local-steps; ...) except the token, which travels separately
FORWARDED_ENV = ("GRPC_VERBOSITY",)


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if (k.startswith("FTRAIN_") or k in FORWARDED_ENV) and k != "FTRAIN_TOKEN"}


@dataclass(frozen=True)
class HostSpec:
    """One line of the hosts file."""

    host: str
    user: str | None = None
    port: int | None = None
    python: str | None = None
    identity: str | None = None
    cwd: str | None = None
    addr: str | None = None
    line: int = 0
    source: str = ""

    @property
    def label(self) -> str:
        text = f"{self.user}@{self.host}" if self.user else self.host
        return f"{text}:{self.port}" if self.port else text

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.source else f"line {self.line}"

    @property
    def advertise(self) -> str:
        return self.addr or self.host


def parse_hosts(text: str, source: str = "hosts file") -> list[HostSpec]:
    """Parses a hosts file; every error names the file and line."""
    hosts: list[HostSpec] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        content = raw.split("#", 1)[0].strip()
        if not content:
            continue
        where = f"{source}:{number}"
        try:
            words = shlex.split(content)
        except ValueError as error:
            raise ConfigError(f"{where}: cannot parse {raw.strip()!r}: {error}") from None
        match = _HOST_RE.match(words[0])
        if match is None or words[0].startswith("-"):
            raise ConfigError(f"{where}: {words[0]!r} is not a host; expected [user@]host[:port] "
                              "(e.g. ubuntu@10.0.0.5:2222 or gpu-node-1)")
        port = None
        if match.group("port") is not None:
            if not match.group("port").isdigit() or not 1 <= int(match.group("port")) <= 65535:
                raise ConfigError(f"{where}: port {match.group('port')!r} must be a number in 1..65535")
            port = int(match.group("port"))
        options: dict[str, str] = {}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if not sep:
                raise ConfigError(f"{where}: {word!r} should be key=value (keys: {', '.join(HOST_KEYS)})")
            if key not in HOST_KEYS:
                raise ConfigError(f"{where}: unknown key {key!r} (keys: {', '.join(HOST_KEYS)})")
            if not value:
                raise ConfigError(f"{where}: {key}= needs a value")
            if key in options:
                raise ConfigError(f"{where}: {key}= given twice")
            options[key] = value
        if "identity" in options:
            options["identity"] = os.path.expanduser(options["identity"])
        hosts.append(HostSpec(host=match.group("v6") or match.group("host"), user=match.group("user"), port=port,
                              line=number, source=source, **options))
    if not hosts:
        raise ConfigError(f"{source}: no hosts (one `[user@]host[:port] [python=...]` per line)")
    return hosts


def load_hosts(path: str | os.PathLike) -> list[HostSpec]:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"--hosts {path}: cannot read: {error.strerror or error}") from None
    return parse_hosts(text, source=str(path))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_coordinator_host(hosts: Sequence[HostSpec]) -> str:
    """127.0.0.1 if every node is this machine, else the local address that routes to the first host."""
    if all(_is_loopback(h.advertise) for h in hosts):
        return "127.0.0.1"
    target = next(h for h in hosts if not _is_loopback(h.advertise))
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(target.advertise, target.port or 22, proto=socket.IPPROTO_TCP)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(sockaddr)  # no packet is sent: this only picks the outgoing interface
            return probe.getsockname()[0]
    except OSError as error:
        raise ConfigError(f"cannot find a local address that {target.advertise} can reach ({error}); "
                          "pass --coordinator-host ADDRESS") from None


def _remote_path(path: str) -> str:
    """Shell-quotes a path, keeping a leading ~/ expandable on the remote side."""
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)


@dataclass
class SshAgent(AgentProcess):
    host: HostSpec = field(kw_only=True)  # always given: the host this agent's ssh connects to
    remote_pid: int | None = None
    bootstrap_pid: int | None = None
    ready: bool = False
    agent_exit: int | None = None  # the agent's own exit status, reported by the bootstrap
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=30))
    reader: threading.Thread | None = None


class SshLauncher(ProcessLauncher):
    """Agents on the hosts of a hosts file, each started over SSH; the local child process of each
    is its ssh client (fencing or killing it ends the remote agent through the bootstrap)."""

    def __init__(self, settings: JobSettings, nproc_per_node: int, command: list[str], hosts: Sequence[HostSpec], *,
                 remote_python: str = "python3", ssh_options: Sequence[str] = (), identity: str | None = None,
                 coordinator_host: str | None = None, remote_env: dict[str, str] | None = None,
                 remote_cwd: str | None = None, launch_retries: int = 2, ssh_binary: str = "ssh",
                 log_stream: TextIO | None = None, log_level: str | None = None, **kwargs: Any) -> None:
        if not hosts:
            raise ConfigError("--backend ssh needs at least one host in --hosts")
        host = coordinator_host or default_coordinator_host(hosts)
        super().__init__(settings, nproc_per_node, command, host=host,
                         log_level=log_level or logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                         **kwargs)
        self.hosts = list(hosts)
        self.remote_python = remote_python
        self.ssh_options = list(ssh_options)
        self.identity = identity
        self.remote_env = forwarded_env()
        self.remote_env.setdefault("PYTHONUNBUFFERED", "1")  # remote logs stream line by line
        self.remote_env.update(remote_env or {})
        self.remote_cwd = remote_cwd if remote_cwd is not None else os.getcwd()
        self.launch_retries = launch_retries
        self.ssh_binary = ssh_binary
        self.log_stream = log_stream
        self._initial = 0
        self._relaunch_on: collections.deque[HostSpec] = collections.deque()
        self._launch_failures: collections.Counter[int] = collections.Counter()
        self._print_lock = threading.Lock()

    # -- commands ------------------------------------------------------------------------------
    def ssh_argv(self, host: HostSpec) -> list[str]:
        argv = [self.ssh_binary, "-T", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        for option in self.ssh_options:
            argv += ["-o", option]
        identity = host.identity or self.identity
        if identity:
            argv += ["-i", identity, "-o", "IdentitiesOnly=yes"]
        if host.port:
            argv += ["-p", str(host.port)]
        if host.user:
            argv += ["-l", host.user]
        return argv + [host.host]

    def remote_command(self, host: HostSpec, node_id: str) -> str:
        """The command line the remote shell runs (no secret in it: the token goes over stdin)."""
        python = host.python or self.remote_python
        agent = self.agent_args(node_id, int(node_id.removeprefix("node")), host.advertise)
        # `exec` so the bootstrap is the session's process; it runs the agent with the same interpreter
        return (f"exec {_remote_path(python)} -u -c {shlex.quote(BOOTSTRAP)} {_remote_path(python)} "
                + shlex.join(agent))

    def bootstrap_message(self, host: HostSpec) -> bytes:
        return (json.dumps({"token": self.token, "env": self.remote_env,
                            "cwd": host.cwd or self.remote_cwd}) + "\n").encode()

    # -- agents ----------------------------------------------------------------------------------
    def start_agent(self) -> str:
        if self._relaunch_on:
            host = self._relaunch_on.popleft()
        else:
            host = self.hosts[self._initial % len(self.hosts)]
            self._initial += 1
        node_id, _ = self.next_node()
        argv = self.ssh_argv(host) + [self.remote_command(host, node_id)]
        # own session: Ctrl-C in the terminal reaches only the launcher, which tears down in order
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        agent = SshAgent(node_id, process, host=host)
        assert process.stdin is not None  # stdin=PIPE
        try:
            process.stdin.write(self.bootstrap_message(host))
            process.stdin.flush()
        except OSError:
            pass  # ssh already gone: reported as a launch failure by agent_exited
        agent.reader = threading.Thread(target=self._read_output, args=(agent,), name=f"ftrain-ssh-{node_id}",
                                        daemon=True)
        agent.reader.start()
        self.agents.append(agent)
        log.info("starting agent %s on %s (%s)", node_id, host.label, host.where)
        return f"{node_id} on {host.label}"

    def _emit(self, text: str) -> None:
        stream = self.log_stream or sys.stderr
        with self._print_lock:
            try:
                stream.write(text + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass

    def _read_output(self, agent: SshAgent) -> None:
        prefix = f"[{agent.node_id} {agent.host.label}]"
        stdout = agent.process.stdout
        assert stdout is not None  # stdout=PIPE
        for raw in iter(stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith(BOOTSTRAP_MARK):
                fields = dict(part.split("=", 1) for part in line.split()[2:] if "=" in part)
                if line.split()[1:2] == ["exit"]:
                    agent.agent_exit = int(fields.get("code", "0"))
                elif line.split()[1:2] == ["started"]:
                    agent.remote_pid = int(fields.get("pid", 0)) or None
                    agent.bootstrap_pid = int(fields.get("bootstrap", 0)) or None
                    agent.ready = True
                    log.info("%s agent pid %s on %s", prefix, agent.remote_pid, fields.get("host", "?"))
                continue
            agent.tail.append(line)
            self._emit(f"{prefix} {line}")
        stdout.close()

    def agent_exited(self, agent: AgentProcess, now: float) -> None:
        assert isinstance(agent, SshAgent)
        if agent.reader is not None:
            agent.reader.join(timeout=1.0)  # the last lines (and the started marker) are in
        key = id(agent.host)
        if not agent.ready or (agent.agent_exit is not None and agent.agent_exit >= 0):
            # ssh, the bootstrap or the agent failed on its own (connection, auth, python path, no
            # ftrain there...), as opposed to a node lost to a signal: retry a few times, then fail
            self._launch_failures[key] += 1
            detail = " | ".join(line for line in agent.tail if line.strip())[-1500:] or "no output"
            what = (f"its agent exited with {agent.agent_exit}" if agent.ready
                    else f"ssh exited with {agent.process.returncode}")
            message = f"could not run an agent on {agent.host.label} ({agent.host.where}): {what}: {detail}"
            if self._launch_failures[key] > self.launch_retries:
                log.error("%s; giving up after %d attempts", message, self._launch_failures[key])
                self.coordinator.state.fail(message)
                return
            log.warning("%s; retrying in %.1f s", message, self.replace_delay_s)
            self._relaunch_on.append(agent.host)
            self.replacements_due.append(now + self.replace_delay_s)  # even with --no-replace: it never ran
            return
        self._launch_failures[key] = 0  # the node was lost (kill-node, a dropped connection)
        if self.replace:
            self._relaunch_on.append(agent.host)  # the replacement's start_agent takes this host
        super().agent_exited(agent, now)

    def run(self, on_tick: Callable[[Launcher], None] | None = None) -> int:
        previous = None
        if threading.current_thread() is threading.main_thread():
            def _terminate(signum: int, frame: Any) -> None:  # SIGTERM tears down like Ctrl-C
                raise KeyboardInterrupt
            previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return super().run(on_tick)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def stop_agents(self) -> None:
        live = [a for a in self.agents if a.process.poll() is None]
        for agent in live:  # closing stdin makes the remote bootstrap kill its agent's process group
            assert agent.process.stdin is not None  # stdin=PIPE
            try:
                agent.process.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for agent in live:
            try:
                agent.process.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        killers = []
        for agent in live:
            if agent.process.poll() is None and isinstance(agent, SshAgent) and agent.remote_pid:
                pids = f"-{agent.remote_pid}" + (f" {agent.bootstrap_pid}" if agent.bootstrap_pid else "")
                log.warning("killing agent %s on %s by pid (%s)", agent.node_id, agent.host.label, pids)
                killers.append(subprocess.Popen(self.ssh_argv(agent.host) + [f"kill -KILL -- {pids}"],
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL, start_new_session=True))
        for killer in killers:
            try:
                killer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                killer.kill()
                killer.wait()
        self.kill_agents()
        for agent in self.agents:
            if isinstance(agent, SshAgent) and agent.reader is not None:
                agent.reader.join(timeout=1.0)
            try:
                if agent.process.stdin is not None:
                    agent.process.stdin.close()
            except OSError:
                pass


def launcher_from_args(args: Any, settings: JobSettings, command: list[str], hosts: Sequence[HostSpec],
                       **common: Any) -> SshLauncher:
    """Builds the launcher from `ftrain launch --backend ssh` arguments (`common`: Launcher's keywords)."""
    return SshLauncher(settings, args.nproc_per_node, command, hosts, remote_python=args.remote_python,
                       ssh_options=args.ssh_option, identity=args.ssh_identity, coordinator_host=args.coordinator_host,
                       remote_env=parse_env_assignments(args.remote_env), log_level=args.log_level, **common)


def parse_env_assignments(items: Sequence[str] | None) -> dict[str, str]:
    env = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"--remote-env {item!r}: expected NAME=VALUE")
        if key == "FTRAIN_TOKEN":
            raise ConfigError("--remote-env cannot set FTRAIN_TOKEN: the launcher forwards the job token itself")
        env[key] = value
    return env
