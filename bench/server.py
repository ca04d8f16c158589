"""The server process: find it by its listening port, read its memory, or start one and time it to ready."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

PROC = Path("/proc")
TCP_LISTEN = "0A"


def listening_inodes(port: int, proc: Path = PROC) -> set[str]:
    """Socket inodes in LISTEN state on ``port`` (IPv4 and IPv6), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == TCP_LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def process_cmdline(pid: int, proc: Path = PROC) -> str:
    try:
        return (proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def holds_socket(pid: int, inodes: set[str], proc: Path = PROC) -> bool:
    try:
        links = [os.readlink(fd) for fd in (proc / str(pid) / "fd").iterdir()]
    except OSError:
        return False
    return any(link.startswith("socket:[") and link[8:-1] in inodes for link in links)


def find_server_pid(port: int, proc: Path = PROC) -> int | None:
    """The uvicorn process listening on ``port``, or None."""
    inodes = listening_inodes(port, proc)
    if not inodes:
        return None
    pids = sorted(int(entry.name) for entry in proc.iterdir() if entry.name.isdigit())
    for pid in pids:
        if "uvicorn" in process_cmdline(pid, proc) and holds_socket(pid, inodes, proc):
            return pid
    return None


@dataclass(frozen=True)
class Memory:
    rss_bytes: int
    peak_rss_bytes: int


def read_memory(pid: int, proc: Path = PROC) -> Memory | None:
    """VmRSS and VmHWM (peak RSS) of ``pid`` from /proc/<pid>/status, or None if unreadable."""
    try:
        text = (proc / str(pid) / "status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024  # reported in kB
    if "VmRSS" not in values:
        return None
    return Memory(values["VmRSS"], values.get("VmHWM", values["VmRSS"]))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


REPO_ROOT = Path(__file__).resolve().parent.parent
# Batching settings a started server takes from its mode alone, never from the bench's own environment, so that
# "on" means the service's defaults.
MODE_SETTINGS = ("FACEGEN_MAX_BATCH", "FACEGEN_BATCH_DELAY_MS", "FACEGEN_MAX_QUEUE")


def child_env(extra: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment with the repository importable (``python -m bench...``, ``app.main``), without
    ``drop``, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


UVICORN = ("-m", "uvicorn", "app.main:app")
PROFILED = ("-m", "bench.profiled_server", "app.main:app")  # uvicorn's command line, profiled on SIGUSR1
SERVICE = ("-m", "app")  # the service's own entry point, as `make serve` runs it (header and body timeouts too)


class StartedServer:
    """``python -m uvicorn app.main:app`` (or ``command``) on a free loopback port; the PID is the server's own (no
    wrapper).

    ``env``: extra ``FACEGEN_*`` settings (e.g. ``{"FACEGEN_MAX_BATCH": "1"}``); the batching settings not given
    there are the service's defaults whatever the bench's environment says. ``command``: the Python arguments that
    start the server, before ``--host``, ``--port`` and ``--log-level`` (:data:`UVICORN`, :data:`PROFILED`,
    :data:`SERVICE`). ``keep_log``: the server's log stays on disk after :meth:`stop` (at ``log_path``)."""

    def __init__(
        self,
        weights: Path,
        threads: int | None = None,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        device: str | None = None,
        command: tuple[str, ...] = UVICORN,
        keep_log: bool = False,
    ):
        self.host, self.port = host, free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.settings = {"FACEGEN_WEIGHTS_DIR": str(Path(weights).resolve())}
        if threads:
            self.settings["FACEGEN_TORCH_THREADS"] = str(threads)
        if device:
            self.settings["FACEGEN_DEVICE"] = device
        self.settings.update(env or {})
        self.keep_log = keep_log
        self.log = tempfile.NamedTemporaryFile(prefix="facegen-bench-server-", suffix=".log", delete=False)
        self.log_path = Path(self.log.name)
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                *command,
                "--host",
                host,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            env=child_env(self.settings, drop=MODE_SETTINGS),
            cwd=REPO_ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout_s: float = 120.0, poll_s: float = 0.05, api_key: str | None = None) -> float:
        """Seconds from process start to the first ``GET /ready`` = 200 (``api_key``: when the server needs one)."""
        deadline = self.started + timeout_s
        headers = {"X-API-Key": api_key} if api_key else {}
        with httpx.Client(base_url=self.url, timeout=2.0, trust_env=False, headers=headers) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with code {self.process.returncode}:\n{self.log_tail()}")
                try:
                    if client.get("/ready").status_code == 200:
                        return time.perf_counter() - self.started
                except httpx.HTTPError:
                    pass
                time.sleep(poll_s)
        raise TimeoutError(
            f"server not ready after {timeout_s:g} s (are there checkpoints in the weights folder?):\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 2000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM (the server's graceful shutdown), SIGKILL after ``grace_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        if not self.keep_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> StartedServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def started_service(weights: Path, threads: int | None, keep_log: bool = False) -> StartedServer:
    """The service as ``make serve`` runs it (``python -m app``) on a free loopback port, ready (``FACEGEN_DEVICE``
    from the environment, else the CPU)."""
    started = StartedServer(
        weights, threads, device=os.environ.get("FACEGEN_DEVICE", "cpu"), command=SERVICE, keep_log=keep_log
    )
    try:
        started.wait_ready(timeout_s=180)
    except BaseException:
        started.stop()
        raise
    return started


# ---- CPU time and the server's environment ------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int, proc: Path = PROC) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)" (state first), or None if the process is gone."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int, proc: Path = PROC) -> list[int]:
    """``root`` and every live descendant of it (a LitServe peer's manager, workers and API servers; uvicorn's)."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name), proc)
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int, proc: Path = PROC) -> float:
    """User plus system CPU time, in seconds, of ``root`` and its live descendants (every thread of each), from
    /proc/<pid>/stat. Read before and after a measurement: the difference is what the server spent on it."""
    total = 0
    for pid in process_tree(root, proc):
        fields = _stat_fields(pid, proc)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


# What uvicorn picks for speed when installed: the production install must have them (pyproject's
# uvicorn[standard] and requirements/service.lock).
FAST_STACK = ("uvloop", "httptools")


def server_environment(python: str = sys.executable) -> dict[str, object]:
    """The Python the servers run with, and the versions of uvloop and httptools it imports (None: missing)."""
    probe = (
        "import importlib, importlib.metadata as m, json\n"
        "found = {}\n"
        f"for name in {FAST_STACK!r}:\n"
        "    try:\n"
        "        importlib.import_module(name); found[name] = m.version(name)\n"
        "    except Exception:\n"
        "        found[name] = None\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    versions = json.loads(result.stdout) if result.returncode == 0 else dict.fromkeys(FAST_STACK)
    return {"python": python, **versions, "fast_stack": all(versions.get(name) for name in FAST_STACK)}
