"""Several GPUs: docker-compose.yml's profile multi-gpu (one replica per GPU behind nginx) and
deploy/nginx/facegen.conf, read as files and then run for real: two CPU replicas of the app behind nginx on loopback
ports, nginx running that very config with only the upstream addresses and the listen port substituted."""

from __future__ import annotations

import grp
import http.client
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.settings import Settings

yaml = pytest.importorskip("yaml")
httpx = pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx" / "facegen.conf"
PROFILE = "multi-gpu"

_spec = importlib.util.spec_from_file_location("facegen_nginx_render", ROOT / "deploy" / "nginx" / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
needs_nginx = pytest.mark.skipif(
    NGINX is None,
    reason="!!! nginx is NOT INSTALLED, so the reverse-proxy tests are SKIPPED !!! Install it: "
    "`apt-get install nginx` on Debian/Ubuntu (`make test` does it when run as root), or your system's nginx package",
)

# Everything a loopback test waits for shares one bound: replicas importing torch on a busy 2-core machine take
# most of it.
BUDGET_S = 45.0


# --------------------------------------------------------------------------------------------------------- the files


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def replicas(compose) -> dict[str, dict]:
    services = compose["services"]
    return {name: s for name, s in services.items() if PROFILE in s.get("profiles", []) and name.startswith("facegen")}


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else {k: str(v) for k, v in env.items()}


def seconds(duration: str | int | float) -> float:
    """A compose duration ("40s", "1m30s", "1h") in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a compose duration: {duration!r}"
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * unit[u] for n, u in parts)


def graceful_shutdown_s() -> float:
    """uvicorn's --timeout-graceful-shutdown in the Dockerfile's CMD (exec form)."""
    cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    argv = json.loads(cmd[len("CMD ") :])
    assert "--timeout-graceful-shutdown" in argv, "the Dockerfile CMD gives uvicorn no --timeout-graceful-shutdown"
    return float(argv[argv.index("--timeout-graceful-shutdown") + 1])


def directives(name: str) -> list[str]:
    """The arguments of every `name ...;` directive in facegen.conf (comments dropped)."""
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())
    return [m.group(1).strip() for m in re.finditer(rf"(?m)^\s*{name}\s+([^;{{}}\n]*);", text)]


def test_profile_has_one_replica_per_gpu(replicas):
    assert len(replicas) >= 2, f"profile {PROFILE} should have two or more replicas, has {sorted(replicas)}"
    device_ids = []
    for name, service in replicas.items():
        gpus = [d for d in service["deploy"]["resources"]["reservations"]["devices"] if d.get("driver") == "nvidia"]
        assert len(gpus) == 1 and "gpu" in gpus[0]["capabilities"], name
        assert len(gpus[0]["device_ids"]) == 1 and "count" not in gpus[0], f"{name} should reserve exactly one GPU"
        device_ids.append(str(gpus[0]["device_ids"][0]))
        env = environment(service)
        # with device_ids the container sees only its own GPU, as cuda:0
        assert env["FACEGEN_DEVICE"] == "cuda:0", name
        assert Settings(device=env["FACEGEN_DEVICE"], required=env.get("FACEGEN_REQUIRED", "")).device == "cuda:0"
        assert set(env) <= {f"FACEGEN_{field.upper()}" for field in Settings.model_fields}, name
        assert "./weights:/app/weights:ro" in service["volumes"], name
        assert not service.get("ports"), f"{name} should be reached through nginx only"
        assert "/ready" in " ".join(service["healthcheck"]["test"]), name
    assert len(set(device_ids)) == len(device_ids), f"two replicas share a GPU: {device_ids}"


def test_replicas_share_one_image(compose, replicas):
    images = {service.get("image") for service in replicas.values()} | {compose["services"]["facegen"]["image"]}
    assert images == {"facegen:latest"}


def test_nginx_service_fronts_every_replica(compose, replicas):
    nginx = compose["services"]["nginx"]
    assert PROFILE in nginx["profiles"]
    image, _, tag = nginx["image"].partition(":")
    assert image == "nginx" and re.match(r"\d+\.\d+", tag), f"pin nginx's version, not {nginx['image']!r}"
    assert "8080:8080" in [str(port) for port in nginx["ports"]]
    depends = nginx["depends_on"]
    assert set(replicas) <= set(depends)
    if isinstance(depends, dict):
        assert all(depends[name].get("condition") == "service_healthy" for name in replicas)
    mounts = [v.split(":") for v in nginx["volumes"] if isinstance(v, str)]
    assert ["./deploy/nginx/facegen.conf", "/etc/nginx/conf.d/default.conf", "ro"] in mounts
    assert "/nginx-health" in " ".join(nginx["healthcheck"]["test"])


def test_upstream_names_every_replica(replicas):
    servers = {line.split()[0] for line in directives("server")}
    assert servers == {f"{name}:8000" for name in replicas}


def test_every_service_outlasts_the_graceful_shutdown(compose):
    graceful = graceful_shutdown_s()
    assert graceful >= 10
    for name, service in compose["services"].items():
        assert "stop_grace_period" in service, f"{name} has no stop_grace_period (compose's default is 10 s)"
        assert seconds(service["stop_grace_period"]) > graceful, name


def test_proxy_limits_match_the_app():
    defaults = Settings()
    (body,) = directives("client_max_body_size")
    assert body == f"{defaults.max_upload_mb:g}m"  # nginx's m is MiB, as FACEGEN_MAX_UPLOAD_MB
    (read,) = directives("proxy_read_timeout")
    assert seconds(read) > defaults.request_timeout_s  # the app's own 503 arrives before nginx gives up
    assert directives("client_header_timeout") and directives("client_body_timeout")
    assert re.search(r"(?m)^\s*least_conn;", NGINX_CONF.read_text())
    assert all("max_fails=" in s and "fail_timeout=" in s for s in directives("server"))
    # retried on another replica only when the request could not be handed over: never after a replica answered
    (next_upstream,) = directives("proxy_next_upstream")
    assert set(next_upstream.split()) <= {"error", "timeout"}, next_upstream
    assert directives("proxy_intercept_errors") == ["off"]


def test_render_substitutes_only_addresses_and_listen_port():
    rendered = render.render(["127.0.0.1:1", "127.0.0.1:2"], "127.0.0.1:3")
    original = NGINX_CONF.read_text().splitlines()
    changed = [(a, b) for a, b in zip(original, rendered.splitlines(), strict=True) if a != b]
    assert [b.strip() for _, b in changed] == [
        "server 127.0.0.1:1 max_fails=3 fail_timeout=10s;",
        "server 127.0.0.1:2 max_fails=3 fail_timeout=10s;",
        "listen 127.0.0.1:3;",
    ]
    with pytest.raises(ValueError):
        render.render(["127.0.0.1:1"], "3")


# ------------------------------------------------------------------------------------------- nginx on loopback ports


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, deadline: float, process: subprocess.Popen, log: Path) -> None:
    while True:
        if process.poll() is not None:
            pytest.fail(
                f"{process.args[0]} exited with {process.returncode} before {url} answered 200:\n"
                f"{log.read_text()[-3000:]}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer 200 within the test's {BUDGET_S:g} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture
def spawn(tmp_path):
    """Start a process (output to a log file); every one still running is stopped at teardown."""
    started: list[subprocess.Popen] = []

    def start(name: str, argv: list[str], **kwargs) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)
        started.append(process)
        return process, log

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture
def start_nginx(spawn, tmp_path):
    """Run deploy/nginx/facegen.conf with the given upstream addresses on a free loopback port; returns its URL."""

    def start(servers: list[str], deadline: float) -> str:
        prefix = tmp_path / f"nginx-{len(list(tmp_path.glob('nginx-*')))}"
        prefix.mkdir()
        port = free_port()
        conf = render.write_standalone(prefix, servers, f"127.0.0.1:{port}")
        if os.geteuid() == 0:
            # as root the workers would run as nobody, who cannot enter pytest's private tmp folder
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
            conf.write_text(user + conf.read_text())
        argv = [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"), "-g", "daemon off;"]
        check = subprocess.run([*argv[:-2], "-t"], capture_output=True, text=True, timeout=10)
        assert check.returncode == 0, check.stderr
        process, log = spawn(prefix.name, argv)
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/nginx-health", deadline, process, prefix / "error.log")
        return url

    return start


def start_replica(spawn, weights: Path, port: int, name: str):
    env = {key: value for key, value in os.environ.items() if not key.startswith("FACEGEN_")}
    env.update(
        FACEGEN_DEVICE="cpu", FACEGEN_WEIGHTS_DIR=str(weights), FACEGEN_TORCH_THREADS="1", FACEGEN_REQUIRED="dcgan"
    )
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--timeout-graceful-shutdown",
        "5",
    ]
    return spawn(name, argv, cwd=ROOT, env=env)


def generated(replica_url: str) -> float:
    """How many POST /generate/dcgan this replica answered with a 2xx, from its /metrics."""
    text = httpx.get(f"{replica_url}/metrics", timeout=5).text
    total = 0.0
    for labels, value in re.findall(r"^facegen_requests_total\{([^}]*)\} (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if found.get("route") == "/generate/dcgan" and found.get("method") == "POST" and found.get("status") == "2xx":
            total += float(value)
    return total


@needs_nginx
def test_proxy_balances_over_replicas_and_routes_around_a_stopped_one(spawn, start_nginx, tiny_weights):
    deadline = time.monotonic() + BUDGET_S
    ports = [free_port(), free_port()]
    processes = [start_replica(spawn, tiny_weights, port, f"replica-{i}") for i, port in enumerate(ports)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    for url, (process, log) in zip(urls, processes):
        wait_for(f"{url}/ready", deadline, process, log)
    proxy = start_nginx([f"127.0.0.1:{port}" for port in ports], deadline)

    with httpx.Client(base_url=proxy, timeout=10) as client:
        answers = [client.post("/generate/dcgan", json={"n": 1, "seed": 1}) for _ in range(20)]
        assert [a.status_code for a in answers] == [200] * 20, answers[0].text
        assert {a.headers["content-type"] for a in answers} == {"image/png"}
        assert {a.headers["x-seed"] for a in answers} == {"1"}
        # stateless replicas: the same request gives the same bytes, whichever replica drew it
        assert len({a.content for a in answers}) == 1
        counts = [generated(url) for url in urls]
        assert sum(counts) == 20 and min(counts) > 0, f"least_conn should spread requests over both: {counts}"

        stopped, _ = processes[0]
        stopped.send_signal(signal.SIGTERM)
        stopped.wait(timeout=10)
        answers = [client.post("/generate/dcgan", json={"n": 1, "seed": 1}) for _ in range(10)]
        assert [a.status_code for a in answers] == [200] * 10, answers[0].text
        assert generated(urls[1]) == counts[1] + 10


class FakeReplica(BaseHTTPRequestHandler):
    """Answers every request 503 with Retry-After, as a replica whose inference timed out; counts the requests."""

    hits = 0
    lock = threading.Lock()
    body = json.dumps({"detail": "inference took longer than 60 s"}).encode()

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with FakeReplica.lock:
            FakeReplica.hits += 1
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "7")
        self.send_header("X-Seed", "123")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = answer

    def log_message(self, *args) -> None:
        pass


@needs_nginx
def test_proxy_passes_a_replica_503_through_unchanged_and_does_not_retry_it(start_nginx):
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), FakeReplica) for _ in range(2)]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        proxy = start_nginx([f"127.0.0.1:{s.server_address[1]}" for s in servers], time.monotonic() + 10)
        FakeReplica.hits = 0
        with httpx.Client(base_url=proxy, timeout=10) as client:
            answers = [client.post("/generate/dcgan", json={"n": 1}) for _ in range(6)]
        for answer in answers:
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "7" and answer.headers["x-seed"] == "123"
            assert answer.headers["content-type"] == "application/json"
            assert answer.content == FakeReplica.body
        assert FakeReplica.hits == 6, "a replica's 503 must not be retried on another replica"
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@needs_nginx
def test_proxy_answers_json_when_no_replica_is_up_or_the_body_is_too_large(start_nginx):
    proxy = start_nginx([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"], time.monotonic() + 10)
    answer = httpx.post(f"{proxy}/generate/dcgan", json={"n": 1}, timeout=10)
    assert answer.status_code == 503 and answer.headers["retry-after"].isdigit()
    assert "detail" in answer.json()
    # over the app's cap: refused from the Content-Length header, before any body is sent
    connection = http.client.HTTPConnection("127.0.0.1", int(proxy.rsplit(":", 1)[1]), timeout=10)
    try:
        connection.putrequest("POST", "/vae/reconstruct")
        connection.putheader("Content-Length", str(int(Settings().max_upload_mb * 1024 * 1024) + 1))
        connection.endheaders()
        answer = connection.getresponse()
        assert answer.status == 413
        assert "10 MiB" in json.loads(answer.read())["detail"]
    finally:
        connection.close()
