"""How open attributes are drawn: packed label vectors, the joint draw, its fallback and the old independent draw."""

from __future__ import annotations

import logging

import pytest
import torch

from app.models import build_model
from app.models.attributes import (
    FREQUENCIES_KEY,
    LABEL_VECTORS_KEY,
    MIN_MATCHES,
    AttributeSourceError,
    IndependentAttributes,
    InvalidRequest,
    JointAttributes,
    attribute_source,
    pack_label_vectors,
    unpack_label_vectors,
)
from app.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from app.models.pipelines import build_pipeline
from app.models.pipelines.base import Pipeline
from app.models.preprocess import PreprocessSpec
from app.models.sampling import seeded_generator
from tests.conftest import ATTRIBUTE_NAMES, TINY_CONFIGS
from tests.families.attributes import MAKE_UP_RATES, make_up_labels
from tests.families.gans import (
    ACGAN_NAMES,
    binomial_bounds,
    joint_labels,
    write_acgan_weights,
    write_joint_acgan_weights,
)
from tests.families.glow import tiny_glow_pipeline

torch.set_num_threads(1)


def test_label_vectors_pack_to_bits_and_back():
    labels = torch.randint(0, 2, (37, 40), generator=seeded_generator(0))
    packed = pack_label_vectors(labels)
    assert packed.dtype == torch.uint8 and packed.shape == (37, 5)
    assert torch.equal(unpack_label_vectors(packed, 40), labels.bool())
    # numpy's packbits order: the first attribute is the high bit of the first byte
    assert pack_label_vectors(torch.tensor([[1] + [0] * 9])).tolist() == [[128, 0]]
    # checkpoint extras load as float: the same bytes as floats unpack the same
    assert torch.equal(unpack_label_vectors(packed.float(), 40), labels.bool())
    three = torch.tensor([[1, 0, 1], [0, 1, 1]])
    assert torch.equal(unpack_label_vectors(pack_label_vectors(three), 3), three.bool())


@pytest.mark.parametrize(
    "packed, fragment",
    [
        (torch.zeros(4, 4, dtype=torch.uint8), r"\(faces, 5\)"),  # 40 attributes need 5 bytes per face
        (torch.zeros(0, 5, dtype=torch.uint8), r"\(faces, 5\)"),  # no face at all
        (torch.full((2, 5), 1.5), "not bytes"),
        (torch.full((2, 5), 300.0), "not bytes"),
        (torch.full((2, 5), -1.0), "not bytes"),
    ],
)
def test_malformed_label_vectors_are_refused(packed, fragment):
    with pytest.raises(AttributeSourceError, match=fragment):
        unpack_label_vectors(packed, 40)


def test_padding_bits_beyond_the_attributes_are_refused():
    with pytest.raises(AttributeSourceError, match="beyond its 3 attributes"):
        unpack_label_vectors(torch.tensor([[0b11110000]], dtype=torch.uint8), 3)


def test_the_joint_draw_follows_the_labels_given_the_request():
    source = JointAttributes(ACGAN_NAMES, joint_labels().bool())
    drawn = source.draw({"Male": True}, 500, seeded_generator(0))
    assert drawn.warning is None
    # every man of these labels smiles and none is blond: so does every drawn vector
    assert drawn.vectors.tolist() == [[1.0, 1.0, 0.0]] * 500
    women = source.draw({"Male": False}, 500, seeded_generator(1)).vectors
    assert women[:, 0].sum() == 0 and women[:, 1].sum() == 0
    assert 200 < women[:, 2].sum() < 300  # half of the women are blond
    # nothing requested: whole vectors of the data, so never a blond man
    anything = source.draw({}, 500, seeded_generator(2)).vectors
    assert not ((anything[:, 1] == 1) & (anything[:, 2] == 1)).any() and 0 < anything[:, 1].mean() < 1


def test_a_combination_no_face_has_is_drawn_from_the_nearest_faces_with_a_warning():
    source = JointAttributes(ACGAN_NAMES, joint_labels().bool())
    drawn = source.draw({"Male": True, "Blond_Hair": True}, 400, seeded_generator(0))
    assert drawn.warning is not None and drawn.warning.startswith("0 of the 200 training faces have Male=true")
    assert "at most 1 requested attribute" in drawn.warning and "requested values kept" in drawn.warning
    # requested values are kept; the open one comes from the 130 faces one step away (60 smiling men, 70 blond women)
    assert (drawn.vectors[:, 1] == 1).all() and (drawn.vectors[:, 2] == 1).all()
    assert 0.3 < drawn.vectors[:, 0].mean() < 0.6


def test_a_rare_combination_widens_the_pool_to_at_least_min_matches():
    labels = torch.zeros(100, 3, dtype=torch.bool)
    labels[:5] = torch.tensor([True, True, True])  # 5 faces with all three, fewer than MIN_MATCHES
    labels[5:50, 0] = True  # 45 with the first only
    source = JointAttributes(ACGAN_NAMES, labels)
    drawn = source.draw({"Smiling": True, "Male": True}, 200, seeded_generator(0))
    assert MIN_MATCHES > 5 and drawn.warning is not None and drawn.warning.startswith("5 of the 100")
    assert (drawn.vectors[:, :2] == 1).all()
    # the 5 exact faces are blond, the 45 one step away are not: both are in the pool
    assert 0 < drawn.vectors[:, 2].mean() < 0.5
    common = source.draw({"Smiling": True}, 10, seeded_generator(0))
    assert common.warning is None


def test_joint_draws_are_deterministic_given_the_seed():
    source = JointAttributes(ACGAN_NAMES, joint_labels().bool())
    first = source.draw({"Blond_Hair": False}, 50, seeded_generator(7)).vectors
    assert torch.equal(first, source.draw({"Blond_Hair": False}, 50, seeded_generator(7)).vectors)
    assert not torch.equal(first, source.draw({"Blond_Hair": False}, 50, seeded_generator(8)).vectors)


def test_unknown_names_are_refused_by_either_draw():
    for source in (JointAttributes(ACGAN_NAMES, joint_labels().bool()), IndependentAttributes(ACGAN_NAMES, None)):
        with pytest.raises(InvalidRequest, match="Sparkly"):
            source.draw({"Sparkly": True}, 1, seeded_generator(0))


def test_the_source_follows_the_extras():
    labels = joint_labels()
    joint = attribute_source(ACGAN_NAMES, {LABEL_VECTORS_KEY: pack_label_vectors(labels).float()})
    assert joint.joint and isinstance(joint, JointAttributes) and torch.equal(joint.labels, labels.bool())
    independent = attribute_source(ACGAN_NAMES, {FREQUENCIES_KEY: torch.tensor([0.9, 0.1, 0.5])})
    assert not independent.joint and isinstance(independent, IndependentAttributes)
    with pytest.raises(AttributeSourceError, match="one frequency per attribute"):
        attribute_source(ACGAN_NAMES, {FREQUENCIES_KEY: torch.ones(4)})


def test_the_acgan_pipeline_draws_jointly_from_a_checkpoint_with_label_vectors(tmp_path):
    pipeline = build_pipeline(load_checkpoint(write_joint_acgan_weights(tmp_path) / "acgan.safetensors"))
    prepared = pipeline.prepare_samples(64, 3, {"Male": True})
    assert prepared.drawn_attributes().warning is None
    assert prepared.drawn_attributes().vectors.tolist() == [[1.0, 1.0, 0.0]] * 64


def test_a_checkpoint_without_label_vectors_draws_independently_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="facegen.models"):
        pipeline = build_pipeline(load_checkpoint(write_acgan_weights(tmp_path) / "acgan.safetensors"))
    assert not pipeline.attribute_source.joint
    assert any("no label_vectors" in record.getMessage() for record in caplog.records)
    vectors = pipeline.prepare_samples(400, 0, {"Male": True}).drawn_attributes().vectors
    assert 0.85 < vectors[:, 0].mean() < 0.95  # Smiling ~ its frequency 0.9, whatever Male is


def test_label_vectors_that_do_not_fit_the_attributes_refuse_the_checkpoint(tmp_path):
    from tests.conftest import write_tiny_checkpoint

    extras = {LABEL_VECTORS_KEY: torch.zeros(10, 2, dtype=torch.uint8)}  # 3 attributes fit in 1 byte, not 2
    path = write_tiny_checkpoint(tmp_path, "acgan", attributes=ACGAN_NAMES, extras=extras)
    with pytest.raises(CheckpointError, match="label_vectors must be"):
        build_pipeline(load_checkpoint(path))


def test_the_male_lipstick_rate_is_the_datas_within_a_binomial_bound():
    """1,000 ``Male: true`` draws turn on lipstick and heavy make-up at the rate among the labels' men (a realistic
    correlation: 2 % of the men, 60 % of the women), not at the 35 % overall frequency."""
    names = ["Male", "Wearing_Lipstick", "Heavy_Makeup"]
    rng = seeded_generator(0)
    male = torch.rand(5000, generator=rng) < 0.42
    lipstick = torch.where(male, torch.rand(5000, generator=rng) < 0.02, torch.rand(5000, generator=rng) < 0.6)
    makeup = torch.where(male, torch.rand(5000, generator=rng) < 0.01, torch.rand(5000, generator=rng) < 0.5)
    labels = torch.stack([male, lipstick, makeup], 1)
    drawn = JointAttributes(names, labels).draw({"Male": True}, 1000, seeded_generator(1)).vectors
    for column in (1, 2):
        rate = labels[male, column].float().mean().item()
        low, high = binomial_bounds(rate, 1000)
        assert low <= int(drawn[:, column].sum()) <= high, names[column]
        assert labels[:, column].float().mean() > 0.2  # the independent draw would be far off


def make_up_pipeline(family: str, directory) -> Pipeline:
    """A served tiny ``family`` model whose checkpoint carries :func:`make_up_labels` as its training label vectors
    (the ACGAN on three of the attributes, the Glow on all 40)."""
    if family == "glow":
        labels = make_up_labels(list(ATTRIBUTE_NAMES))
        return tiny_glow_pipeline(directory, extras={LABEL_VECTORS_KEY: pack_label_vectors(labels)})
    names = ["Male", *MAKE_UP_RATES]
    model = build_model("acgan", {**TINY_CONFIGS["acgan"], "attributes": names})
    extras = {LABEL_VECTORS_KEY: pack_label_vectors(make_up_labels(names))}
    path = save_checkpoint(
        directory / "acgan.safetensors", model, preprocess=PreprocessSpec(size=16), attributes=names, extras=extras
    )
    return build_pipeline(load_checkpoint(path))


@pytest.mark.parametrize("family", ["acgan", "glow"])
def test_a_pipelines_male_requests_wear_make_up_at_the_mens_rate_within_a_binomial_bound(family, tmp_path):
    """Through each family's pipeline, as the service draws: 1,000 ``Male: true`` draws turn on lipstick and heavy
    make-up at the rate among the carried labels' men (2 % and 1 %), not at their overall 35 % and 29 %."""
    pipeline = make_up_pipeline(family, tmp_path)
    names = pipeline.attributes
    labels = unpack_label_vectors(pipeline.checkpoint.extras[LABEL_VECTORS_KEY], len(names))
    men = labels[:, names.index("Male")]
    prepared = pipeline.prepare_samples(1000, 7, {"Male": True})
    drawn = prepared.drawn_attributes().vectors
    assert prepared.drawn_attributes().warning is None and bool(drawn[:, names.index("Male")].all())
    for attribute in MAKE_UP_RATES:
        column = names.index(attribute)
        rate = labels[men, column].float().mean().item()
        low, high = binomial_bounds(rate, 1000)
        assert rate < 0.03 and labels[:, column].float().mean() > 0.25, attribute  # independent draws: far off
        assert low <= int(drawn[:, column].sum()) <= high, (attribute, int(drawn[:, column].sum()), low, high)
