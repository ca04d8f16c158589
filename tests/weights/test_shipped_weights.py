"""The checkpoints committed in weights/: they load strictly, and the service makes varied, non-degenerate faces
from them."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from app.models.attributes import LABEL_VECTORS_KEY, attribute_source, unpack_label_vectors
from app.models.checkpoint import load_checkpoint
from app.models.preprocess import pil_to_unit_range, preprocess
from tests.conftest import ATTRIBUTE_NAMES
from tests.families.gans import binomial_bounds

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
SHIPPED = sorted(WEIGHTS.glob("*.safetensors"))
SHIPPED_FAMILIES = {path.stem for path in SHIPPED}
# Floors for the shipped GANs, well under what was measured, so that sampling error passes and a broken model or a
# regression in the code does not. ACGAN (all 40 attributes) agreement: 0.85 here, where every attribute is drawn
# independently from its frequency (as the service draws open ones; combinations real faces rarely show), against
# docs/results.md's 0.924 on the validation split's real label vectors. Smiling toggle 0.98 here at the service's
# default strength 1.5, 0.86 at strength 1 (docs/results.md: 0.972 and 0.832 over 500 pairs), InfoGAN Q accuracy
# 0.55 (docs/results.md).
# Since the pairs' other attributes are drawn jointly (from real faces, not conditioned on Smiling), about half of
# the pairs carry a smiler's High_Cheekbones and Mouth_Slightly_Open, which the "off" row must overcome: 200 pairs of
# this test measured 0.93 at 1.5 and 0.69 at strength 1 (independent draws: 0.97 and 0.83); hence the served 1.75
# (docs/results.md: 0.972 over 500 pairs).
ACGAN_MIN_AGREEMENT = 0.8
ACGAN_MIN_TOGGLE_SUCCESS = 0.93  # at the service's default toggle strength
ACGAN_MIN_TOGGLE_SUCCESS_AS_TRAINED = 0.6  # at strength 1
INFOGAN_MIN_Q_ACCURACY = 0.4
# Glow, one attribute requested (docs/results.md, 200 samples each: 0.975-1.0 for Smiling, Male, Eyeglasses and Young)
GLOW_MIN_CONDITION_OBEYED = 0.8
GLOW_MIN_MANIPULATION_FLIP = 0.9  # each of Smiling, Male, Eyeglasses, Young: the goal (the 3-epoch model: 0.28)
GLOW_MIN_MANIPULATION_KEEP = 0.85  # the other 39 calls, each of the four: the goal
# The request that makes a batch of images for each sampling family, and where the images are in its JSON.
SAMPLE_REQUESTS = {
    "vae": ({"n": 16, "seed": 0, "format": "json"}, "images"),
    "dcgan": ({"n": 16, "seed": 0, "format": "json"}, "images"),
    "acgan": ({"n": 16, "seed": 0, "format": "json"}, "images"),
    "glow": ({"n": 16, "seed": 0, "format": "json", "temperature": 0.7}, "images"),
    "infogan": ({"rows": 2, "code": 0, "seed": 0, "format": "json"}, "rows"),
}


def decode_all(encoded: list) -> torch.Tensor:
    flat = [item for row in encoded for item in (row if isinstance(row, list) else [row])]
    return torch.stack([pil_to_unit_range(Image.open(io.BytesIO(base64.b64decode(item)))) for item in flat])


@pytest.fixture(scope="module")
def shipped_client():
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    with TestClient(create_app(Settings(weights_dir=WEIGHTS, device="cpu"))) as client:
        yield client


def test_the_foundation_families_are_shipped():
    assert {"vae", "dcgan"} <= SHIPPED_FAMILIES


@pytest.mark.parametrize("path", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_shipped_checkpoint_loads_small_and_documented(path):
    checkpoint = load_checkpoint(path)
    assert checkpoint.family == path.stem and path.stat().st_size < 40 * 1024 * 1024
    assert (
        checkpoint.preprocess.size == 64
        and checkpoint.attributes
        and set(checkpoint.attributes) <= set(ATTRIBUTE_NAMES)
    )
    assert checkpoint.training["train_images"] > 10_000, "shipped weights are trained on real CelebA faces"


@pytest.mark.parametrize("family", sorted(SHIPPED_FAMILIES & set(SAMPLE_REQUESTS)))
def test_shipped_samples_are_not_degenerate(family, shipped_client):
    body, key = SAMPLE_REQUESTS[family]
    response = shipped_client.post(f"/generate/{family}", json=body)
    assert response.status_code == 200, response.text
    images = decode_all(response.json()[key])
    assert images.shape[1:] == (3, 64, 64) and len(images) >= 16
    assert images.std(dim=0).mean() > 0.05, "samples differ from one another"
    assert images.std(dim=(1, 2, 3)).min() > 0.05, "no sample is a flat colour"
    assert -0.9 < images.mean() < 0.9, "not saturated to black or white"


def test_shipped_vae_reconstructs_real_faces(face_paths):
    checkpoint = load_checkpoint(WEIGHTS / "vae.safetensors")
    faces = torch.stack([preprocess(Image.open(path), checkpoint.preprocess) for path in face_paths])
    with torch.inference_mode():
        errors = ((checkpoint.model.reconstruct(faces) - faces) ** 2).flatten(1).mean(1)
    # Far better than painting each face its own mean colour: the model has learned faces.
    flat_colour_error = faces.flatten(2).var(dim=2, unbiased=False).mean(1)
    assert errors.mean() < 0.5 * flat_colour_error.mean(), (errors, flat_colour_error)
    assert errors.mean() < 0.05, errors  # the shipped model: 0.034 on these four
    # the model-quality floors, as `training evaluate` measured them on the validation split
    assert checkpoint.metrics["valid_mse"] <= 0.025 and checkpoint.metrics["fid_samples"] <= 110


@pytest.mark.skipif(not {"acgan", "classifier"} <= SHIPPED_FAMILIES, reason="needs the shipped acgan and classifier")
def test_shipped_acgan_obeys_attributes_and_the_smiling_toggle():
    """The shipped classifier judges fresh samples of the shipped ACGAN (a smaller draw than the results page's figures,
    with another seed, so the bounds leave room for sampling error)."""
    from training.attribute_judge import load_judge
    from training.evaluate_gans import acgan_scores

    torch.set_num_threads(2)
    acgan = load_checkpoint(WEIGHTS / "acgan.safetensors")
    judge = load_judge(WEIGHTS / "classifier.safetensors", torch.device("cpu"))
    frequencies = acgan.extras["attribute_frequencies"]
    conditions = (torch.rand((200, len(frequencies)), generator=torch.Generator().manual_seed(1)) < frequencies).float()
    source = attribute_source(acgan.attributes, acgan.extras)
    metrics, _ = acgan_scores(acgan.model.eval(), judge, conditions, source, toggle="Smiling", pairs=200, seed=1)
    assert metrics["classifier_agreement"] > ACGAN_MIN_AGREEMENT, metrics
    assert metrics["toggle_success"] > ACGAN_MIN_TOGGLE_SUCCESS, metrics
    assert metrics["toggle_success_by_strength"]["1"] > ACGAN_MIN_TOGGLE_SUCCESS_AS_TRAINED, metrics
    assert metrics["toggle_probability_on"] - metrics["toggle_probability_off"] > 0.5, metrics


@pytest.mark.parametrize("family", ["acgan", "glow"])
def test_shipped_model_draws_a_mans_open_attributes_as_celebas_men_have_them(family):
    """1,000 ``Male: true`` draws turn on lipstick and heavy make-up at the rate among the men of the training faces'
    label vectors the checkpoint carries (CelebA: under 2 %; independent draws gave about half of them lipstick),
    within a binomial 99 % interval."""
    from app.models.pipelines import build_pipeline

    if family not in SHIPPED_FAMILIES:
        pytest.skip(f"needs the shipped {family}")
    pipeline = build_pipeline(load_checkpoint(WEIGHTS / f"{family}.safetensors"))
    assert pipeline.attribute_source.joint, (
        f"the shipped {family} carries no training label vectors: python -m training label-vectors "
        f"weights/{family}.safetensors --data ../shared/data/celeba-mini"
    )
    labels = unpack_label_vectors(pipeline.checkpoint.extras[LABEL_VECTORS_KEY], len(pipeline.attributes))
    assert len(labels) == pipeline.checkpoint.training["train_images"]
    names, men = pipeline.attributes, labels[:, pipeline.attributes.index("Male")]
    drawn = pipeline.prepare_samples(1000, 2026, {"Male": True}).drawn_attributes().vectors
    for attribute in ("Wearing_Lipstick", "Heavy_Makeup"):
        rate = labels[men, names.index(attribute)].float().mean().item()
        low, high = binomial_bounds(rate, 1000)
        assert rate < 0.02 and low <= int(drawn[:, names.index(attribute)].sum()) <= high, attribute


@pytest.mark.skipif(not {"glow", "classifier"} <= SHIPPED_FAMILIES, reason="needs the shipped glow and classifier")
def test_shipped_glow_obeys_requested_attributes_at_the_served_temperature():
    """As a user asks: one attribute on or off, the others drawn, at the service's default temperature and strength;
    judged by the shipped classifier on a smaller draw than the evaluator's, with other seeds."""
    from app.models.pipelines import build_pipeline
    from training.attribute_judge import load_judge

    torch.set_num_threads(2)
    glow = build_pipeline(load_checkpoint(WEIGHTS / "glow.safetensors"))
    judge = load_judge(WEIGHTS / "classifier.safetensors", torch.device("cpu"))
    columns = judge.columns(glow.attributes)
    for attribute in ("Smiling", "Male", "Eyeglasses", "Young"):
        column = glow.attributes.index(attribute)
        for value in (False, True):
            images = glow.sample(24, 100 + int(value), attributes={attribute: value})
            called = judge.probabilities(images)[:, columns][:, column] > 0.5
            assert (called == value).float().mean() >= GLOW_MIN_CONDITION_OBEYED, (attribute, value)
    assert glow.checkpoint.metrics["fid_samples"] <= 180  # as `training evaluate` measured it at this temperature


@pytest.mark.skipif("infogan" not in SHIPPED_FAMILIES, reason="needs the shipped infogan")
def test_shipped_infogan_codes_are_recoverable():
    """Q recovers the categorical codes from fresh samples far above chance (1 in n_categories)."""
    from app.models.infogan import recognizer_from_extras
    from training.evaluate_gans import q_accuracy

    infogan = load_checkpoint(WEIGHTS / "infogan.safetensors")
    recognizer = recognizer_from_extras(infogan.model.config, infogan.extras)
    overall, per_code = q_accuracy(infogan.model.eval(), recognizer, samples=500, seed=1)
    assert overall > INFOGAN_MIN_Q_ACCURACY and min(per_code) > 2 / infogan.model.n_categories, per_code
    # as `training evaluate` measured it: every code moves some attribute by the goal's 0.15
    assert len(infogan.metrics["meaningful_codes"]) >= 3, infogan.metrics["meaningful_codes"]


def test_shipped_glow_decodes_latents_pushed_far_off_the_distribution_to_finite_images():
    """Pushed three times along Eyeglasses, most samples used to decode to inf/NaN (the inverse coupling divided by a
    near-zero scale); the bounded inverse keeps every one finite."""
    from app.models.glow import DIRECTIONS_KEY
    from app.models.pipelines import build_pipeline

    glow = build_pipeline(load_checkpoint(WEIGHTS / "glow.safetensors"))
    direction = glow.checkpoint.extras[DIRECTIONS_KEY][glow.attributes.index("Eyeglasses")]
    vectors, eps, temperature, _ = glow.prepare_samples(16, 3).inputs
    with torch.inference_mode():
        raw = glow.model.sample_from_noise(vectors, eps, temperature, (3.0 * direction).expand(16, -1))
    assert torch.isfinite(raw).all()


def test_shipped_glow_inverse_bounds_keep_faces_exact_and_manipulation_flips(face_paths):
    """The calibrated per-coupling bounds clamp nothing a face produces (the test faces reconstruct as they do without
    them), and faces moved twice Eyeglasses' effect, which the generic bound lets diverge, decode to usable frames."""
    from app.models.glow import INVERSE_BOUNDS_KEY
    from app.models.pipelines import build_pipeline

    glow = build_pipeline(load_checkpoint(WEIGHTS / "glow.safetensors"))
    assert INVERSE_BOUNDS_KEY in glow.checkpoint.extras
    faces = torch.stack([preprocess(Image.open(path), glow.checkpoint.preprocess) for path in face_paths])
    with torch.inference_mode():
        latents = glow.encode(faces)
        bounded, _ = glow.decode(latents)
        glow.model.set_inverse_bounds(None)
        loose, _ = glow.decode(latents)
        pushed = latents + 2 * glow.attribute_effects[glow.attributes.index("Eyeglasses")]
        _, loose_refused = glow.decode(pushed)
        glow.model.set_inverse_bounds(glow.checkpoint.extras[INVERSE_BOUNDS_KEY])
        _, bounded_refused = glow.decode(pushed)
    assert torch.equal(bounded, loose)
    assert loose_refused.any() and not bounded_refused.any()
    # as `training evaluate` measured it on 100 validation faces at strength +-1
    flipped = glow.checkpoint.metrics["manipulation_flip_per_attribute"]
    assert min(flipped.values()) >= GLOW_MIN_MANIPULATION_FLIP, flipped
    kept = glow.checkpoint.metrics["manipulation_keep_per_attribute"]
    assert min(kept.values()) >= GLOW_MIN_MANIPULATION_KEEP, kept


def test_shipped_glow_puts_glasses_on_the_test_faces_without_refusing_a_frame(face_paths):
    """Eyeglasses at strength +1 (none of the test faces wears glasses): every frame decodes, and the classifier sees
    glasses on most. The earlier calibration, which moved every latent, diverged 2 of the 4 frames; this one leaves
    the top latent alone."""
    from app.models.pipelines import build_pipeline
    from training.attribute_judge import load_judge

    glow = build_pipeline(load_checkpoint(WEIGHTS / "glow.safetensors"))
    judge = load_judge(WEIGHTS / "classifier.safetensors", torch.device("cpu"))
    eyeglasses = judge.columns(glow.attributes)[glow.attributes.index("Eyeglasses")]
    faces = torch.stack([preprocess(Image.open(path), glow.checkpoint.preprocess) for path in face_paths])
    with torch.inference_mode():
        latents = glow.encode(faces)
        assert (judge.probabilities(glow.decode(latents)[0])[:, eyeglasses] < 0.5).all()
        moved = torch.cat([glow.manipulation_latents(latent, "Eyeglasses", [1.0]) for latent in latents])
        images, refused = glow.decode(moved)
    assert not refused.any()
    assert (judge.probabilities(images)[:, eyeglasses] > 0.5).sum() >= len(face_paths) - 1
