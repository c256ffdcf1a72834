"""Process helpers shared by the benchmarks that run whole jobs: a free port, killing a job's
process group, running a job to read one figure it prints, and a clean torchrun + DDP exit."""
import os
import re
import signal
import socket
import subprocess


# torchrun + DDP jobs keep their default group here until main() has returned (then clear it).
# Otherwise DDP's Reducer can hold the group's last reference, and freeing the Reducer (with the
# GIL held) runs gloo's destructor, which joins a worker thread that may still be dropping the
# last collective's tensors and needs the GIL: plain torch 2.13 then hangs at exit. A group
# freed from Python releases the GIL first.
KEPT_GROUPS: list = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the process's whole session (it was started with start_new_session=True)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def figure(output: str, name: str, what: str) -> float:
    """The last `NAME VALUE` the job printed."""
    found = re.findall(rf"{re.escape(name)} ([0-9.]+)", output)
    if not found:
        raise SystemExit(f"{what} printed no '{name}':\n{output[-3000:]}")
    return float(found[-1])


def run_for(name: str, command: list[str], env: dict[str, str], timeout: float) -> float:
    """Runs a job (its process group killed at the end, whatever happens) and returns the last
    `NAME VALUE` it printed; exits with its output if it failed or printed none."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        kill_group(process)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return figure(output, name, " ".join(command))
