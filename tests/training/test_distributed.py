"""torchrun on CPU: two processes on the gloo backend train a recipe unchanged, and their losses match a
one-process run with the same global batch.

Tolerance: the global batch, the batch order and G's noise are the one-process run's exactly (see
training/distributed.py), so the runs differ only where each process normalises its own half batch (BatchNorm:
SyncBatchNorm exists for GPUs only) and draws its own reparameterisation noise (VAE). Over these few steps that
moves each logged loss by well under ``TOLERANCE`` of its size (observed: about 0.005 for the DCGAN's losses near
1.4). Not compared: accuracies (a logit near 0 on either side flips them by 1/batch) and the VAE's KL (it enters the
loss at 3e-6 x, so training does not hold it; an untrained encoder's KL swings 5-10 % with the BatchNorm batch).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.models.checkpoint import load_checkpoint
from tests.conftest import make_celeba_folder
from training.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 0.05  # relative (absolute below 1), per logged loss and step
LOSSES = {"dcgan": ["loss_d_real", "loss_d_fake", "loss_d", "loss_g"], "vae": ["loss", "mse"]}
TINY = {
    "dcgan": {"latent-dim": "8", "g-width": "4", "d-width": "4"},
    "vae": {"widths": "[4, 8]", "latent-dim": "6"},
}


def write_recipe(tmp_path: Path, data: Path, family: str) -> Path:
    lines = [f'family = "{family}"', f'data = "{data}"', "image-size = 16", "batch-size = 16", "epochs = 2"]
    lines += ["threads = 1", 'device = "cpu"', *(f"{key} = {value}" for key, value in TINY[family].items())]
    path = tmp_path / f"{family}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def read_rows(path: Path) -> list[dict[str, float]]:
    with open(path) as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


@pytest.mark.parametrize("family", ["dcgan", "vae"])
def test_two_gloo_processes_match_one_process(family, tmp_path):
    # 34 training faces: global batches of 16, 8 per process (BatchNorm over 4 would be too noisy to compare)
    recipe = write_recipe(tmp_path, make_celeba_folder(tmp_path / "celeba", count=40, valid=6), family)
    main(["run", str(recipe), "--runs", str(tmp_path / "one")])
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # Each rank's stdout and stderr also in its own file (--redirects 3 --tee 3), to see which rank printed what.
    command += ["--log-dir", str(tmp_path / "logs"), "--redirects", "3", "--tee", "3"]
    command += ["-m", "training", "run", str(recipe), "--runs", str(tmp_path / "two")]
    result = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rank_output = {
        int(path.parent.name): path.read_text() + path.with_name("stderr.log").read_text()
        for path in (tmp_path / "logs").rglob("stdout.log")
    }
    assert sorted(rank_output) == [0, 1]
    # Only rank 0 prints the run folder and draws progress bars (tqdm's "NN%|" and "it/s"); rank 1 says nothing.
    assert rank_output[0].count("run folder") == 1 and "%|" in rank_output[0]
    assert "run folder" not in rank_output[1] and "%|" not in rank_output[1] and "it/s" not in rank_output[1]

    one, two = tmp_path / "one" / f"{family}-00000", tmp_path / "two" / f"{family}-00000"
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == [f"{family}-00000"]  # rank 0's folder only
    checkpoint = load_checkpoint(two / f"{family}.safetensors")
    assert checkpoint.training["processes"] == 2 and checkpoint.training["batch_size"] == 16
    rows_one, rows_two = read_rows(one / "losses.csv"), read_rows(two / "losses.csv")
    assert len(rows_one) == len(rows_two) == 2 * (34 // 16)
    for first, second in zip(rows_one, rows_two):
        for column in LOSSES[family]:
            assert abs(first[column] - second[column]) <= TOLERANCE * max(1, abs(first[column])), (
                column,
                first[column],
                second[column],
            )


def torchrun(arguments: list[str], tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*command, "-m", "training", *arguments],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_resume_step_for_step(tmp_path):
    """Rank 1 draws its own reparameterisation noise: its streams are saved beside the train state, so a run of two
    processes stopped after epoch 1 and resumed logs exactly the losses of the uninterrupted run."""
    recipe = write_recipe(tmp_path, make_celeba_folder(tmp_path / "celeba", count=40, valid=6), "vae")
    torchrun(["run", str(recipe), "--runs", str(tmp_path / "whole")], tmp_path)
    torchrun(["run", str(recipe), "--runs", str(tmp_path / "parts"), "--set", "stop-after=1"], tmp_path)
    stopped = tmp_path / "parts" / "vae-00000"
    assert (stopped / "train_state.rank1.safetensors").is_file()
    torchrun(["run", "--resume", str(stopped)], tmp_path)
    whole, parts = read_rows(tmp_path / "whole" / "vae-00000" / "losses.csv"), read_rows(stopped / "losses.csv")
    assert len(whole) == len(parts) == 2 * (34 // 16)
    assert [row["loss"] for row in parts] == [row["loss"] for row in whole]
