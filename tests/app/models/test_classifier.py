"""The attribute classifier: model, checkpoint round trip, a training smoke run, and ``POST /classify``."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from app.models import build_model
from app.models.checkpoint import load_checkpoint
from app.models.classifier import AttributeClassifier, ClassifierConfig
from tests.conftest import ATTRIBUTE_NAMES, TINY_CONFIGS, cli, png_of, write_tiny_checkpoint
from training.__main__ import main


def upload(names: list[str], payloads: list[bytes], content_type: str = "image/jpeg") -> list[tuple]:
    return [("images", (name, data, content_type)) for name, data in zip(names, payloads)]


def check_classification(body: dict, filenames: list[str]) -> None:
    assert body["model"] == "classifier"
    assert [item["filename"] for item in body["images"]] == filenames
    for item in body["images"]:
        assert list(item["attributes"]) == ATTRIBUTE_NAMES
        for value in item["attributes"].values():
            assert 0.0 <= value <= 1.0 and round(value, 4) == value


def test_probabilities_shapes_and_ranges():
    torch.manual_seed(0)
    model = build_model("classifier", TINY_CONFIGS["classifier"]).eval()
    assert isinstance(model, AttributeClassifier)
    images = torch.rand(5, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        logits, probabilities = model(images), model.probabilities(images)
    assert logits.shape == probabilities.shape == (5, 40)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    torch.testing.assert_close(probabilities, torch.sigmoid(logits))


def test_default_config_takes_64px_faces():
    model = AttributeClassifier(ClassifierConfig()).eval()
    with torch.no_grad():
        assert model.probabilities(torch.zeros(2, 3, 64, 64)).shape == (2, 40)


@pytest.mark.parametrize(
    "bad", [{"image_size": 8, "widths": [4, 8, 16, 32]}, {"widths": []}, {"dropout": 1.0}, {"convs_per_stage": 0}]
)
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        build_model("classifier", bad)


def test_checkpoint_round_trip(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "classifier", dtype=None, metrics={"valid_mean_accuracy": 0.5})
    torch.manual_seed(0)  # write_tiny_checkpoint seeds 0 before building: the same weights again
    original = build_model("classifier", TINY_CONFIGS["classifier"]).eval()
    checkpoint = load_checkpoint(path)
    assert checkpoint.family == "classifier" and isinstance(checkpoint.model, AttributeClassifier)
    assert checkpoint.attributes == ATTRIBUTE_NAMES and checkpoint.metrics == {"valid_mean_accuracy": 0.5}
    assert checkpoint.model.config == original.config
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(checkpoint.model.probabilities(images), original.probabilities(images))


def test_training_smoke_run_then_serving(tiny_celeba, tmp_path, monkeypatch, make_client, face_paths, face_bytes):
    monkeypatch.chdir(tmp_path)  # the split packs (.cache/) land here, not in the repository
    out, run = tmp_path / "weights" / "classifier.safetensors", tmp_path / "run"
    main(
        cli(
            "classifier",
            data=tiny_celeba,
            out=out,
            run_dir=run,
            image_size=16,
            widths=[4, 8],
            dropout=0.1,
            weight_decay="1e-4",
            batch_size=4,
            epochs=2,
            threads=1,
        )
    )

    checkpoint = load_checkpoint(out)
    assert checkpoint.family == "classifier" and checkpoint.preprocess.size == 16
    assert checkpoint.model.config == ClassifierConfig(image_size=16, widths=(4, 8), num_attributes=40, dropout=0.1)
    assert checkpoint.attributes == ATTRIBUTE_NAMES
    metrics = checkpoint.metrics
    assert metrics["valid_images"] == 6
    assert list(metrics["valid_accuracy"]) == ATTRIBUTE_NAMES
    for value in [
        metrics["valid_mean_accuracy"],
        metrics["majority_mean_accuracy"],
        *metrics["valid_accuracy"].values(),
    ]:
        assert math.isfinite(value) and 0.0 <= value <= 1.0
    assert metrics["valid_mean_accuracy"] == pytest.approx(sum(metrics["valid_accuracy"].values()) / 40, abs=1e-3)
    assert checkpoint.training["epochs"] == 2 and checkpoint.training["train_images"] == 18
    with open(run / "losses.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * (18 // 4) and all(math.isfinite(float(row["loss"])) for row in rows)
    with open(run / "valid.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]
    assert (run / "curves.png").stat().st_size > 0

    client = make_client(weights_dir=out.parent, device="cpu")
    names = [path.name for path in face_paths]
    response = client.post("/classify", files=upload(names, face_bytes))
    assert response.status_code == 200, response.text
    check_classification(response.json(), names)


@pytest.fixture
def classifier_client(tmp_path, make_client):
    write_tiny_checkpoint(tmp_path, "classifier")
    return make_client(weights_dir=tmp_path, device="cpu")


def test_classify_one_png(classifier_client):
    # A plain colour, not a face: align=none takes it as already aligned (align=auto would find no face, 422).
    files = upload(["a.png"], [png_of((40, 50))], "image/png")
    response = classifier_client.post("/classify", files=files, data={"align": "none"})
    assert response.status_code == 200, response.text
    check_classification(response.json(), ["a.png"])


def test_classify_is_deterministic(classifier_client, face_bytes):
    files = upload(["x.jpg", "y.jpg"], face_bytes[:2])
    first, second = (classifier_client.post("/classify", files=files).json() for _ in range(2))
    assert first == second


def test_classify_without_images_field(classifier_client):
    assert classifier_client.post("/classify").status_code == 422
    assert classifier_client.post("/classify", data={"format": "json"}).status_code == 422


def test_classify_too_many_images(classifier_client):
    response = classifier_client.post(
        "/classify", files=upload([f"{i}.png" for i in range(33)], [png_of((8, 8))] * 33, "image/png")
    )
    assert response.status_code == 422
    assert "between 1 and 32" in response.text


def test_classify_refuses_a_non_image(classifier_client, face_bytes):
    response = classifier_client.post(
        "/classify", files=upload(["face.jpg", "notes.txt"], [face_bytes[0], b"just some text"], "text/plain")
    )
    assert response.status_code in (400, 415)
    assert "notes.txt" in response.json()["detail"]


def test_classify_refuses_a_truncated_image(classifier_client, face_bytes):
    response = classifier_client.post("/classify", files=upload(["cut.jpg"], [face_bytes[0][:300]]))
    assert 400 <= response.status_code < 500
    assert "cut.jpg" in response.json()["detail"]
