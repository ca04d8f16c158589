"""Glow training: smoke runs the service serves, attribute directions, non-finite losses."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from app.models.attributes import FREQUENCIES_KEY
from app.models.checkpoint import load_checkpoint
from app.models.glow import DIRECTIONS_KEY, Glow
from tests.conftest import cli, flags

torch.set_num_threads(1)


# ---- training ----------------------------------------------------------------------------------------------------


def tiny_glow_argv(data, out, run, **options: object) -> list[str]:
    """A seconds-long Glow run's command line; ``options`` come last, so they override (argparse keeps the last
    value)."""
    return [
        *cli(
            "glow",
            data=data,
            out=out,
            run_dir=run,
            image_size=16,
            levels=2,
            steps=1,
            hidden=4,
            epochs=1,
            batch_size=6,
            warmup=1,
            threads=1,
            direction_images=10,
        ),
        *flags(**options),
    ]


def test_training_smoke_run_is_served(tiny_celeba, tmp_path, monkeypatch, make_client, face_bytes):
    from training.__main__ import main

    monkeypatch.chdir(tmp_path)  # the pack cache goes under .cache/ of the working directory
    out = tmp_path / "weights" / "glow.safetensors"
    main(
        tiny_glow_argv(
            tiny_celeba, out, tmp_path / "run", steps=2, hidden=8, coupling="additive", n_bits=5, epochs=2, warmup=2
        )
    )
    run = tmp_path / "run"
    assert (run / "curves.png").exists() and (run / "losses.csv").exists()
    assert {f"samples_epoch002_t{t}.png" for t in ("0.5", "0.7", "1.0")} <= {p.name for p in run.iterdir()}

    checkpoint = load_checkpoint(out)
    assert (
        checkpoint.family == "glow" and checkpoint.config["coupling"] == "additive" and checkpoint.config["n_bits"] == 5
    )
    assert checkpoint.extras[DIRECTIONS_KEY].shape == (40, 768) and checkpoint.extras[DIRECTIONS_KEY].abs().sum() > 0
    assert checkpoint.extras[FREQUENCIES_KEY].shape == (40,)
    assert 0 < checkpoint.metrics["valid_bits_per_dim"] < 20 and checkpoint.metrics["n_bits"] == 5
    assert checkpoint.training["epochs"] == 2
    with safe_open(str(out), framework="pt") as handle:
        assert handle.get_tensor("levels.0.steps.0.invconv.lower").dtype == torch.float32
        assert bool(handle.get_tensor("levels.0.steps.0.actnorm.initialized"))

    client = make_client(weights_dir=out.parent, device="cpu")
    assert client.post("/generate/glow", json={"n": 4, "seed": 0, "attributes": {"Smiling": True}}).status_code == 200
    manipulated = client.post(
        "/glow/manipulate",
        files={"face": ("f.jpg", face_bytes[0], "image/jpeg")},
        data={"attribute": "Smiling", "strengths": "0,1", "format": "json"},
    )
    assert manipulated.status_code == 200 and len(manipulated.json()["images"]) == 2
    assert (
        client.post("/glow/likelihood", files=[("images", ("f.jpg", face_bytes[0], "image/jpeg"))]).status_code == 200
    )
    card = client.get("/models/glow").json()
    assert card["metrics"]["valid_bits_per_dim"] == checkpoint.metrics["valid_bits_per_dim"]


def test_non_finite_loss_stops_with_the_step(tiny_celeba, tmp_path, monkeypatch):
    from training.__main__ import main

    monkeypatch.chdir(tmp_path)
    original = Glow.loss

    def poisoned(self, images, y, generator=None):
        loss, bits, class_bits = original(self, images, y, generator)
        return loss * float("nan"), bits, class_bits

    monkeypatch.setattr(Glow, "loss", poisoned)
    with pytest.raises(FloatingPointError, match="at step 1 "):
        main(tiny_glow_argv(tiny_celeba, tmp_path / "g.safetensors", tmp_path / "run", batch_size=4))


def test_init_from_continues_a_checkpoint(tiny_celeba, tmp_path, monkeypatch):
    """--init-from starts from the checkpoint's weights (actnorm not re-initialised: at lr 0 nothing moves), records
    where it started, and refuses a checkpoint of another architecture, naming the field."""
    from app.models.checkpoint import file_sha256
    from training.__main__ import main

    monkeypatch.chdir(tmp_path)
    first = tmp_path / "first.safetensors"
    main(tiny_glow_argv(tiny_celeba, first, tmp_path / "run1"))
    second = tmp_path / "second.safetensors"
    main(tiny_glow_argv(tiny_celeba, second, tmp_path / "run2", init_from=first, lr=0))

    before, after = load_checkpoint(first), load_checkpoint(second)
    for name, tensor in before.model.state_dict().items():
        assert torch.equal(tensor, after.model.state_dict()[name]), name
    record = after.training["init_from"]
    assert record["checkpoint"] == "first.safetensors" and record["sha256"] == file_sha256(first)[:12]
    assert record["epochs"] == 1 and record["steps"] == before.training["steps"]
    assert after.metrics["valid_bits_per_dim"] == pytest.approx(before.metrics["valid_bits_per_dim"], abs=1e-4)

    with pytest.raises(SystemExit, match=r"differs in hidden \(hidden=4\)"):
        main(tiny_glow_argv(tiny_celeba, tmp_path / "third.safetensors", tmp_path / "run3", hidden=8, init_from=first))


def test_mirrored_faces_are_chosen_per_face_and_epoch():
    """About half the faces are mirrored, the same ones whatever batch or rank they travel in, others next epoch."""
    from training.glow import mirrored

    faces = torch.arange(200 * 3 * 4 * 4, dtype=torch.float32).reshape(200, 3, 4, 4)
    indices = torch.arange(200)
    out = mirrored(faces, indices, 200, epoch=1, seed=0)
    flipped = (out != faces).flatten(1).any(1)
    assert torch.equal(out[flipped], faces[flipped].flip(3)) and torch.equal(out[~flipped], faces[~flipped])
    assert 70 < int(flipped.sum()) < 130
    part = torch.tensor([5, 150, 17])
    assert torch.equal(mirrored(faces[part], part, 200, epoch=1, seed=0), out[part])
    assert not torch.equal(mirrored(faces, indices, 200, epoch=2, seed=0), out)


def test_hflip_recipe_switch_trains(tiny_celeba, tmp_path, monkeypatch):
    from training.__main__ import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "g.safetensors"
    main([*tiny_glow_argv(tiny_celeba, out, tmp_path / "run"), "--hflip"])
    checkpoint = load_checkpoint(out, "cpu")
    assert checkpoint.training["hflip"] is True and 0 < checkpoint.metrics["valid_bits_per_dim"] < 20
