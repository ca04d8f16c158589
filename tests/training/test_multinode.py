"""Two nodes: ``torchrun --nnodes 2 --rdzv-backend c10d``, one process per node, is the same run as one node's two
processes. Here both "nodes" are launches on 127.0.0.1 sharing the data and the run folder, as two hosts would share
them (docs/training.md, "Two nodes"). Both worlds have two ranks on gloo, each rank takes the same shard of the
same global batch, and a sum of two values does not depend on the order it is taken in: the runs agree step for
step, exactly, and so do their checkpoints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import make_celeba_folder
from tests.training.test_distributed import read_rows, write_recipe

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(launcher: list[str], recipe: Path, runs: Path, cwd: Path) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "training", "run", str(recipe)]
    return subprocess.Popen(
        [*command, "--runs", str(runs)], cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def finish(process: subprocess.Popen) -> None:
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]


def test_two_nodes_match_one_node_step_for_step(tmp_path):
    recipe = write_recipe(tmp_path, make_celeba_folder(tmp_path / "celeba", count=40, valid=6), "dcgan")
    finish(launch(["--standalone", "--nproc_per_node", "2"], recipe, tmp_path / "one-node", tmp_path))

    # The two-node command of docs/training.md, both ends on loopback: whichever agent binds the endpoint hosts the
    # c10d store.
    endpoint = f"127.0.0.1:{free_port()}"
    node = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]
    node += ["--rdzv-id", "facegen-test", "--max-restarts", "0"]
    nodes = [launch(node, recipe, tmp_path / "two-nodes", tmp_path) for _ in range(2)]
    for process in nodes:
        finish(process)

    one, two = tmp_path / "one-node" / "dcgan-00000", tmp_path / "two-nodes" / "dcgan-00000"
    assert sorted(path.name for path in (tmp_path / "two-nodes").iterdir()) == ["dcgan-00000"]  # one run, rank 0's
    rows_one, rows_two = read_rows(one / "losses.csv"), read_rows(two / "losses.csv")
    assert len(rows_one) == len(rows_two) == 2 * (34 // 16)
    assert rows_two == rows_one
    tensors_one, tensors_two = load_file(one / "dcgan.safetensors"), load_file(two / "dcgan.safetensors")
    assert tensors_one.keys() == tensors_two.keys()
    assert all(torch.equal(tensors_one[name], tensors_two[name]) for name in tensors_one)
