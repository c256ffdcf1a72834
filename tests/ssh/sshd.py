"""Real OpenSSH servers for tests: several sshd instances on 127.0.0.1 (one per simulated host).

Everything lives in a temporary directory: generated host and client keys, authorized_keys, a
known_hosts file naming each instance's port, and one sshd_config per instance (non-default
port, UsePAM no, StrictModes no, PermitRootLogin yes: tests run as root here). Each server runs
in the foreground (`sshd -D`) as a child of the test process and is killed by PID, together
with the per-connection session processes it forked.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REQUIRE_ENV = "FTRAIN_REQUIRE_SSH"


def find_sshd() -> str | None:
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_tools() -> list[str]:
    missing = [] if find_sshd() else ["sshd (apt-get install openssh-server)"]
    for tool in ("ssh", "ssh-keygen"):
        if not shutil.which(tool):
            missing.append(f"{tool} (apt-get install openssh-client)")
    return missing


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


@dataclass
class SshdCluster:
    """`count` sshd instances sharing one host key and one authorized client key."""

    root: Path
    count: int = 3
    user: str = field(default_factory=getpass.getuser)
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def client_key(self) -> Path:
        return self.root / "client_key"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def ssh_options(self) -> list[str]:
        """`ftrain launch` arguments that make the ssh client trust exactly these servers."""
        return ["--ssh-option", f"UserKnownHostsFile={self.known_hosts}", "--ssh-option", "StrictHostKeyChecking=yes"]

    def host_line(self, index: int, **keys: str) -> str:
        extra = "".join(f" {k}={v}" for k, v in keys.items())
        return f"{self.user}@127.0.0.1:{self.ports[index]}{extra}"

    def start(self) -> "SshdCluster":
        sshd = find_sshd()
        assert sshd, "sshd not installed"
        self.root.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / name)], check=True)
        shutil.copy(self.root / "client_key.pub", self.root / "authorized_keys")
        host_pub = (self.root / "host_key.pub").read_text().split()[:2]
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir (as sshd.service)
        lines = []
        for index in range(self.count):
            port = free_port()
            config = self.root / f"sshd_{index}.conf"
            config.write_text("\n".join([
                f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {self.root / 'host_key'}",
                f"AuthorizedKeysFile {self.root / 'authorized_keys'}", f"PidFile {self.root / f'sshd_{index}.pid'}",
                "UsePAM no", "StrictModes no", "PermitRootLogin yes", "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "X11Forwarding no",
                "PrintMotd no", "LogLevel ERROR", "MaxStartups 50", "",
            ]))
            log = open(self.root / f"sshd_{index}.log", "wb")
            self.processes.append(subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=log,
                                                   stdin=subprocess.DEVNULL))
            log.close()
            self.ports.append(port)
            lines.append(f"[127.0.0.1]:{port} {' '.join(host_pub)}")
        self.known_hosts.write_text("\n".join(lines) + "\n")
        for index, port in enumerate(self.ports):
            self._wait_ready(index, port)
        return self

    def _wait_ready(self, index: int, port: int) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.processes[index].poll() is not None:
                raise RuntimeError(f"sshd {index} exited: {(self.root / f'sshd_{index}.log').read_text()}")
            result = subprocess.run(self.ssh(index, "true"), capture_output=True, text=True, timeout=15)
            if result.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"sshd on port {port} does not accept the test key: {result.stderr}")

    def ssh(self, index: int, command: str) -> list[str]:
        return ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-i", str(self.client_key), "-p", str(self.ports[index]),
                f"{self.user}@127.0.0.1", command]

    def stop(self) -> None:
        for process in self.processes:
            for child in _children(process.pid):  # per-connection session processes
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if process.poll() is None:
                process.kill()
            process.wait()
