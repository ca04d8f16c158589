"""``python -m training calibrate-glow``: per-attribute manipulation units, written into the checkpoint."""

from __future__ import annotations

import pytest
import torch

from app.models import build_model
from app.models.attributes import FREQUENCIES_KEY
from app.models.checkpoint import load_checkpoint
from app.models.glow import DIRECTIONS_KEY, INVERSE_BOUNDS_KEY, MANIPULATION_LEVELS_KEY, MANIPULATION_UNITS_KEY
from app.models.pipelines import build_pipeline
from tests.conftest import TINY_CONFIGS, write_tiny_checkpoint
from training.__main__ import main
from training.glow_calibration import LADDER, latent_profiles


def tiny_glow(tmp_path):
    torch.manual_seed(0)
    latent_dim = build_model("glow", TINY_CONFIGS["glow"]).latent_dim
    generator = torch.Generator().manual_seed(1)
    extras = {
        DIRECTIONS_KEY: 0.05 * torch.randn(40, latent_dim, generator=generator),
        FREQUENCIES_KEY: torch.rand(40, generator=generator),
    }
    return write_tiny_checkpoint(tmp_path / "glow", "glow", extras=extras)


def test_calibration_writes_a_unit_per_attribute_from_the_ladder(tiny_celeba, tmp_path):
    glow = tiny_glow(tmp_path)
    classifier = write_tiny_checkpoint(tmp_path / "judge", "classifier")
    arguments = ["calibrate-glow", str(glow), "--data", str(tiny_celeba), "--classifier", str(classifier)]
    main([*arguments, "--faces", "6", "--threads", "1"])
    checkpoint = load_checkpoint(glow)
    units = checkpoint.extras[MANIPULATION_UNITS_KEY]
    assert units.shape == (40,) and all(unit in LADDER for unit in units.tolist())
    report = checkpoint.metrics["manipulation_calibration"]
    assert report["faces"] == 6 and "calibrate-glow" in report["command"]
    per_attribute = report["per_attribute"]
    assert list(per_attribute) == build_pipeline(checkpoint).attributes
    assert all(0 <= entry["flip"] <= 1 and 0 <= entry["keep"] <= 1 for entry in per_attribute.values())
    pipeline = build_pipeline(checkpoint)
    assert torch.equal(pipeline.manipulation_units, units.float())
    # each attribute's direction moves the latents of the profile its report names
    profiles = latent_profiles(pipeline.latent_count)
    levels = checkpoint.extras[MANIPULATION_LEVELS_KEY]
    assert levels.shape == (40, 2) and set(profiles) == {"all", "no-top"}
    for row, entry in zip(levels, per_attribute.values()):
        assert torch.equal(row, profiles[entry["latents"]])
    assert torch.equal(pipeline.manipulation_levels, levels.float())
    # the inverse's envelope over the training faces, measured first and applied by the pipeline
    bounds = checkpoint.extras[INVERSE_BOUNDS_KEY]
    assert bounds.shape == (len(pipeline.model.couplings),) and bool((bounds > 0).all())
    assert [c.inverse_bound for c in pipeline.model.couplings] == pytest.approx(bounds.tolist())
    assert report["envelope_faces"] == 18  # --envelope-faces 4000, capped at the 18 training faces


def test_a_malformed_inverse_bound_is_refused_at_start_up(tmp_path):
    from app.models.checkpoint import CheckpointError, amend_checkpoint

    glow = tiny_glow(tmp_path)
    amend_checkpoint(glow, extras={INVERSE_BOUNDS_KEY: torch.ones(3)})
    with pytest.raises(CheckpointError, match="inverse_bounds.*positive numbers"):
        build_pipeline(load_checkpoint(glow))


def test_calibrating_some_attributes_keeps_the_others_units(tiny_celeba, tmp_path):
    from app.models.pipelines.glow import MANIPULATION_UNIT

    glow = tiny_glow(tmp_path)
    classifier = write_tiny_checkpoint(tmp_path / "judge", "classifier")
    arguments = ["calibrate-glow", str(glow), "--data", str(tiny_celeba), "--classifier", str(classifier)]
    main([*arguments, "--faces", "4", "--threads", "1", "--attributes", "Male,Smiling"])
    checkpoint = load_checkpoint(glow)
    units = checkpoint.extras[MANIPULATION_UNITS_KEY]
    names = build_pipeline(checkpoint).attributes
    assert list(checkpoint.metrics["manipulation_calibration"]["per_attribute"]) == ["Male", "Smiling"]
    others = [i for i, name in enumerate(names) if name not in ("Male", "Smiling")]
    assert torch.all(units[others] == MANIPULATION_UNIT)
    with pytest.raises(SystemExit, match="unknown attribute.*Dimples"):
        main([*arguments, "--attributes", "Dimples"])


def test_calibration_refuses_another_family(tiny_celeba, tmp_path):
    dcgan = write_tiny_checkpoint(tmp_path / "dcgan", "dcgan")
    with pytest.raises(SystemExit, match="is a dcgan checkpoint, not glow"):
        main(["calibrate-glow", str(dcgan), "--data", str(tiny_celeba)])


class Passthrough:
    """A stand-in pipeline and judge: latents are the faces, and every call is "off"."""

    attributes = ["Reaches", "DragsOthers", "NeverFlips", "Diverges"]
    manipulation_units = torch.full((4,), 2.0)
    manipulation_levels = torch.ones(4, 2)
    latent_count = 2
    device = torch.device("cpu")

    def directions_on_latents(self, index, weights):
        return weights[-1:]  # a one-number "latent": 1 when the profile moves the top latent, else 0

    def run(self, operation, inputs):
        return (inputs[0],)

    def columns(self, names):
        return [0, 1, 2, 3]

    def probabilities(self, images):
        return torch.zeros(len(images), 4)


def test_the_ladder_stops_at_enough_flips_and_before_the_others_drift(monkeypatch):
    import training.glow_calibration as calibration

    def rates(pipeline, calls, latents, push, before, index, reference_scores, unit):
        return [(unit / 3, 1.0, 0.0), (0.5, 1 - unit / 20, 0.0), (0.0, 1.0, 0.0), (0.5, 1.0, unit / 100)][index]

    monkeypatch.setattr(calibration, "flip_and_keep", rates)
    stub = Passthrough()
    units, levels, report = calibration.calibrate(stub, stub, torch.zeros(4, 3, 8, 8), flip_target=0.9, keep_floor=0.85)
    # 3 / 3 flips enough; 1 - 3.5 / 20 < 0.85; nothing flips: the top; 2.5 / 100 > 0.02 of the frames diverge
    assert units.tolist() == [3.0, 3.0, LADDER[-1], 2.0]
    assert report["Reaches"] == {"latents": "all", "unit": 3.0, "flip": 1.0, "keep": 1.0, "refused": 0.0}
    assert report["DragsOthers"]["keep"] == 0.85
    assert torch.equal(levels, torch.ones(4, 2))  # both profiles alike: the first, every latent, wins the tie


def test_the_profile_that_flips_while_keeping_the_most_wins(monkeypatch):
    import training.glow_calibration as calibration

    def rates(pipeline, calls, latents, push, before, index, reference_scores, unit):
        moves_top = bool(push[0, 0] != 0)
        if index == 0:  # every latent diverges from 2 on; without the top it flips at 5, keeping 0.9
            return (0.5, 1.0, 0.1 * (unit >= 2)) if moves_top else (unit / 5, 0.9, 0.0)
        if index == 1:  # both reach the target at 1; every latent keeps more
            return (1.0, 0.95, 0.0) if moves_top else (1.0, 0.9, 0.0)
        return (0.2, 1.0, 0.0) if moves_top else (0.4, 1.0, 0.0)  # neither reaches it: the one flipping more

    monkeypatch.setattr(calibration, "flip_and_keep", rates)
    stub = Passthrough()
    units, levels, report = calibration.calibrate(stub, stub, torch.zeros(4, 3, 8, 8), flip_target=0.9, keep_floor=0.85)
    assert [entry["latents"] for entry in report.values()] == ["no-top", "all", "no-top", "no-top"]
    assert units.tolist() == [5.0, 1.0, LADDER[-1], LADDER[-1]]
    assert levels.tolist() == [[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]
