"""Adding a family is registering it in one place (tests/families/toy.py): the toy is then trained through the trainer
registry (from its recipe), evaluated through the evaluator registry, served over HTTP, described in the model report,
built from its tiny config and benchmarked from bench's scenario list, with no list edited anywhere else."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import shutil
import socket
import threading
import time

import pytest
import uvicorn
from PIL import Image

from app.main import create_app
from app.models import build_model
from app.models.checkpoint import load_checkpoint
from app.settings import Settings
from bench import e2e, raw_forward
from bench.scenarios import all_scenarios, choose_scenarios
from tests.conftest import tiny_configs
from tests.families import toy
from training.__main__ import main


@pytest.fixture
def toy_family():
    with toy.registered():
        yield


@pytest.fixture
def trained(toy_family, tiny_celeba, tmp_path):
    """The toy trained one step by `python -m training run` from its recipe: the checkpoint's path."""
    recipe = tmp_path / "toy.toml"
    recipe.write_text(toy.RECIPE)
    main(["run", str(recipe), "--runs", str(tmp_path / "runs"), "--set", f"data={tiny_celeba}"])
    return tmp_path / "runs" / "toy-00000" / "toy.safetensors"


def test_the_toy_is_in_no_registry_outside_its_block():
    with toy.registered():
        assert "toy" in tiny_configs() and "toy" in [s.family for s in all_scenarios()]
    assert "toy" not in tiny_configs() and "toy" not in [s.family for s in all_scenarios()]


def test_its_tiny_config_comes_from_its_registration(toy_family):
    assert tiny_configs()["toy"] == toy.TINY
    model = build_model("toy", tiny_configs()["toy"])
    assert model.generate(model.layer.weight.new_zeros(2, 4)).shape == (2, 3, 8, 8)


def test_it_trains_one_step_from_its_recipe_through_the_trainer_registry(trained, tiny_celeba, tmp_path):
    checkpoint = load_checkpoint(trained)
    assert checkpoint.family == "toy" and checkpoint.config == toy.TINY
    assert checkpoint.training["steps"] == 1 and len(checkpoint.training["losses"]) == 1
    assert checkpoint.training["recipe"]["family"] == "toy"
    # the step moved the weights: the same seed's untrained model differs
    untrained = tmp_path / "untrained.safetensors"
    main(["toy", "--data", str(tiny_celeba), "--out", str(untrained), "--latent-dim", "4", "--image-size", "8",
          "--steps", "0"])  # fmt: skip
    assert not load_checkpoint(untrained).model.layer.bias.equal(checkpoint.model.layer.bias)


def test_it_is_evaluated_through_the_evaluator_registry(trained, tiny_celeba, tmp_path, capsys):
    untrained = tmp_path / "untrained.safetensors"
    main(["toy", "--data", str(tiny_celeba), "--out", str(untrained), "--latent-dim", "4", "--image-size", "8",
          "--steps", "0"])  # fmt: skip
    errors = {}
    for path in (trained, untrained):
        out = tmp_path / f"eval-{path.stem}"
        main(["evaluate", str(path), "--data", str(tiny_celeba), "--out", str(out), "--cache-dir", str(tmp_path)])
        written = json.loads((out / "metrics.json").read_text())
        assert load_checkpoint(path).metrics["mean_face_mse"] == written["mean_face_mse"]
        assert written["evaluate_command"].startswith("python -m training evaluate")
        errors[path.stem] = written["mean_face_mse"]
    assert 0 < errors["toy"] < errors["untrained"]  # its one step was towards the mean face
    assert "mean_face_mse" in capsys.readouterr().out


def test_it_is_served_over_http_and_described_in_the_report(trained, make_client, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(trained, weights / "toy.safetensors")
    client = make_client(weights_dir=weights, device="cpu")

    response = client.post("/generate/toy", json={"n": 3, "seed": 5})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "5"
    assert client.post("/generate/toy", json={"n": 3, "seed": 5}).content == response.content
    assert Image.open(io.BytesIO(response.content)).size[1] > 8  # a grid of 8 px faces, padded
    answer = client.post("/generate/toy/json", json={"n": 2, "seed": 1}).json()
    assert answer["model"] == "toy" and len(answer["images"]) == 2
    refused = client.post("/generate/toy", json={"n": 0})
    assert refused.status_code == 422
    (card,) = client.get("/models").json()
    assert (card["family"], card["capabilities"]) == ("toy", ["sample"])
    assert "/generate/toy" in client.get("/openapi.json").json()["paths"]
    assert "['toy']" in client.post("/generate/nothing", json={}).json()["detail"]

    main(["report", "--weights", str(weights)])
    assert toy.SUMMARY in (weights / "README.md").read_text()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_it_is_benchmarked_from_bench_scenario_list(trained, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(trained, weights / "toy.safetensors")
    # In this process, where the toy is registered: a server started as a subprocess would not know it.
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(Settings(weights_dir=weights, device="cpu")), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started

        async def measure():
            async with e2e.make_client(f"http://127.0.0.1:{port}", None, 2, 30.0) as client:
                chosen, skipped = choose_scenarios(await e2e.fetch_models(client))
                assert [s.name for s in chosen] == ["toy"]
                assert "no loaded dcgan model" in skipped["dcgan"]
                return await e2e.run_cell(client, chosen[0], 2, 0.3, 0.0, None, itertools.count(1))

        row = asyncio.run(measure())
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert row["scenario"] == "toy" and row["rows_per_request"] == 4
    assert row["ok"] >= 1 and row["errors"] == 0 and row["images_per_s"] > 0

    (forward,) = raw_forward.measure_raw(weights / "toy.safetensors", "cpu", batches=(4,), repeats=1)
    assert (forward["family"], forward["operation"], forward["batch"]) == ("toy", "sample", 4)
    assert forward["images_per_s"] > 0
