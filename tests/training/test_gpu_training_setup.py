"""Set-up for training on GPUs, checked on the CPU: channels_last is applied before DistributedDataParallel wraps the
module, and ``make train-gpu`` runs each recipe on as many GPUs as divide its batch size, saying when that is fewer
than the host has, and fails loudly (not silently) when a recipe errors."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import runtime

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_plan  # noqa: E402  (a script, imported from its folder)


def test_channels_last_is_applied_before_ddp_wraps(monkeypatch):
    seen = []

    def recording_wrap(module, world, device):
        seen.append(module[0].weight.is_contiguous(memory_format=torch.channels_last))
        return module

    monkeypatch.setattr(runtime, "wrap", recording_wrap)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3))
    args = argparse.Namespace(channels_last=True, compile=False)
    called = runtime.prepare_for_training(module, runtime.get_world(), torch.device("cpu"), args)
    assert seen == [True] and called is module


@pytest.mark.parametrize(
    ("gpus", "batch_size", "expected"),
    [(1, 64, 1), (2, 64, 2), (3, 64, 2), (5, 64, 4), (6, 64, 4), (7, 64, 4), (8, 64, 8), (6, 32, 4), (3, 48, 3)],
)
def test_the_largest_gpu_count_that_divides_the_batch(gpus, batch_size, expected):
    assert gpu_plan.usable_processes(batch_size, gpus) == expected


def test_the_plan_covers_every_shipped_recipe_and_says_when_gpus_stay_idle(capsys):
    recipes = sorted((ROOT / "training" / "recipes").glob("*.toml"))
    assert gpu_plan.main(["6", *map(str, recipes)]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [word for recipe in recipes for word in (recipe.stem, "4")]
    assert "glow: batch-size 32 does not divide over 6 GPUs; using 4" in err
    assert gpu_plan.main(["0", str(recipes[0])]) == 2


def fake_python(directory: Path, gpus: int, failing: str | None) -> Path:
    """A stand-in interpreter: answers the GPU count, runs scripts/gpu_plan.py for real, and plays torchrun (exiting
    1 for the ``failing`` recipe)."""
    script = directory / "python"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = -c ]; then echo {gpus}; exit 0; fi\n'
        f'if [ "$1" = scripts/gpu_plan.py ]; then exec {sys.executable} "$@"; fi\n'
        'echo "torchrun $*" >> "$(dirname "$0")/calls"\n'
        f'case "$*" in *recipes/{failing}.toml*) exit 1;; esac\n'
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def run_train_gpu(tmp_path: Path, gpus: int, failing: str | None = None) -> subprocess.CompletedProcess:
    faces = tmp_path / "faces.safetensors"
    faces.write_bytes(b"")
    env = {**os.environ, "PYTHON": str(fake_python(tmp_path, gpus, failing)), "FACES": str(faces)}
    return subprocess.run(
        ["bash", "scripts/train_gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_train_gpu_runs_each_recipe_on_the_usable_count(tmp_path):
    result = run_train_gpu(tmp_path, gpus=6)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert len(calls) == 6 and all("--nproc_per_node 4" in call for call in calls)
    assert "on 4 of 6 GPU(s)" in result.stdout and "does not divide over 6 GPUs" in result.stderr


def test_train_gpu_fails_loudly_when_a_recipe_errors_or_no_gpu_is_visible(tmp_path):
    result = run_train_gpu(tmp_path, gpus=2, failing="dcgan")
    assert result.returncode == 1 and "dcgan FAILED (exit 1)" in result.stderr
    assert "failed: dcgan" in result.stderr
    assert len((tmp_path / "calls").read_text().splitlines()) == 6, "the other recipes still ran"
    none = run_train_gpu(tmp_path, gpus=0)
    assert none.returncode == 1 and "no CUDA GPU is visible" in none.stderr


@pytest.fixture
def kernel_flags():
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
    )
    saved_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2])
    if saved_env is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved_env


def test_deterministic_kernels_on_cuda_only(kernel_flags, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True
    runtime.deterministic_kernels(torch.device("cpu"))
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    runtime.deterministic_kernels(torch.device("cuda", 0))
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
