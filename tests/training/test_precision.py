"""Training under the speed options (``--precision bf16|fp16``, ``--channels-last``, ``--compile``): each trains the
same steps as fp32 would, close to its losses, and writes a float32 checkpoint that loads."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from app.models.checkpoint import load_checkpoint
from training.__main__ import main
from training.runtime import cpu_has_native_bf16

TINY_DCGAN = ["--image-size", "16", "--latent-dim", "8", "--g-width", "4", "--d-width", "4", "--batch-size", "4"]
# The first step's losses under reduced precision, against fp32's: the same batch and weights, so they differ only by
# the autocast rounding (bf16 keeps 8 bits of mantissa: about 0.4 % per value; the logged losses move under 5 %).
TOLERANCE = 0.05


def train(data: Path, out: Path, *options: str) -> list[dict[str, float]]:
    main(
        ["dcgan", "--data", str(data), "--out", str(out / "dcgan.safetensors"), "--run-dir", str(out)]
        + [*TINY_DCGAN, "--epochs", "1", "--max-steps", "3", "--threads", "1", *options]
    )
    with open(out / "losses.csv") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


@pytest.mark.parametrize(
    "options",
    [["--precision", "bf16"], ["--channels-last"], ["--precision", "bf16", "--channels-last"]],
    ids=["bf16", "channels_last", "bf16+channels_last"],
)
def test_speed_options_train_like_fp32(options, tiny_celeba, tmp_path):
    reference = train(tiny_celeba, tmp_path / "fp32")
    rows = train(tiny_celeba, tmp_path / "run", *options)
    assert len(rows) == len(reference) == 3
    for column in ("loss_d", "loss_g"):
        assert all(math.isfinite(row[column]) for row in rows)
        first, expected = rows[0][column], reference[0][column]
        assert abs(first - expected) <= TOLERANCE * max(1.0, abs(expected)), (column, first, expected)
    checkpoint = load_checkpoint(tmp_path / "run" / "dcgan.safetensors")
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in checkpoint.model.parameters())
    assert checkpoint.training["precision"] == (options[1] if options[0] == "--precision" else "fp32")


def test_fp16_is_refused_on_a_cpu_with_what_to_use(tiny_celeba, tmp_path):
    """fp16 needs a GradScaler and CUDA's fp16 kernels; a CPU autocasts to bf16 instead."""
    with pytest.raises(SystemExit, match="fp16 needs CUDA.*bf16"):
        train(tiny_celeba, tmp_path / "fp16", "--precision", "fp16", "--device", "cpu")


def test_compile_trains_the_same_steps(tiny_celeba, tmp_path):
    """torch.compile (inductor, CPU here) traces the modules that train; the state dict saved is the plain module's."""
    reference = train(tiny_celeba, tmp_path / "eager")
    rows = train(tiny_celeba, tmp_path / "compiled", "--compile")
    for column in ("loss_d", "loss_g"):
        assert rows[0][column] == pytest.approx(reference[0][column], rel=1e-3)
    load_checkpoint(tmp_path / "compiled" / "dcgan.safetensors")  # strict: no "_orig_mod." prefixes


# ---- the warning a CPU run in bf16 gets where the CPU emulates bf16 (about 25x slower than fp32 there) ----

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16(AVX2_ONLY) is False
    assert cpu_has_native_bf16(SAPPHIRE_RAPIDS) is True
    assert cpu_has_native_bf16("processor\t: 0\nflags\t\t: avx512f avx512_bf16\n") is True


def test_nothing_is_claimed_without_flags():
    assert cpu_has_native_bf16("") is True  # no flags line (not x86 Linux): no warning
