"""Model cards and the generated tables of docs/results.md come from the checkpoints (``python -m training report``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import write_tiny_checkpoint
from training.__main__ import main
from training.report import END, LICENCE, START

ROOT = Path(__file__).resolve().parents[2]


RESULTS = ROOT / "docs" / "results.md"


def test_the_results_page_and_the_model_cards_agree_with_the_shipped_checkpoints():
    """Fails when a shipped checkpoint changed (new weights, new metrics) and nobody ran
    ``python -m training report --docs docs/results.md``."""
    main(["report", "--weights", str(ROOT / "weights"), "--docs", str(RESULTS), "--check"])


def test_the_results_page_holds_both_generated_tables_and_the_readme_none():
    """The tables moved from README.md to docs/results.md: the page has both pairs of markers, the README neither (a
    table left in both would be regenerated in one and go stale in the other)."""
    from training.report import ATTRIBUTES_END, ATTRIBUTES_START

    page = RESULTS.read_text()
    for marker in (START, END, ATTRIBUTES_START, ATTRIBUTES_END):
        assert page.count(marker) == 1, marker
    assert page.index(START) < page.index(END) and page.index(ATTRIBUTES_START) < page.index(ATTRIBUTES_END)
    readme = (ROOT / "README.md").read_text()
    assert not any(marker in readme for marker in (START, END, ATTRIBUTES_START, ATTRIBUTES_END))


def test_readme_is_the_older_name_of_docs(tmp_path):
    """``--readme PAGE`` (the option's name before the tables moved) writes the same page as ``--docs PAGE``."""
    weights = tmp_path / "weights"
    write_tiny_checkpoint(weights, "classifier", metrics={"valid_mean_accuracy": 0.9})
    page = tmp_path / "results.md"
    page.write_text(f"{START}\nold\n{END}\n")
    main(["report", "--weights", str(weights), "--readme", str(page)])
    assert "| `classifier.safetensors` | classifier | valid_mean_accuracy 0.9" in page.read_text()
    main(["report", "--weights", str(weights), "--docs", str(page), "--check"])


def test_a_page_without_markers_or_missing_is_refused_naming_it(tmp_path):
    weights = tmp_path / "weights"
    write_tiny_checkpoint(weights, "classifier", metrics={"valid_mean_accuracy": 0.9})
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nno markers here\n")
    with pytest.raises(SystemExit, match=re.escape(f"{page} has no {START}")):
        main(["report", "--weights", str(weights), "--docs", str(page)])
    assert page.read_text() == "# Results\n\nno markers here\n"
    with pytest.raises(SystemExit, match="missing.md does not exist"):
        main(["report", "--weights", str(weights), "--docs", str(tmp_path / "missing.md")])


def test_report_writes_cards_and_the_table_between_the_markers(tmp_path):
    weights = tmp_path / "weights"
    write_tiny_checkpoint(
        weights, "vae", metrics={"valid_mse": 0.5, "evaluate_command": "python -m training evaluate x"}
    )
    write_tiny_checkpoint(weights, "classifier", metrics={"valid_mean_accuracy": 0.9})
    page = tmp_path / "results.md"
    page.write_text(f"# x\n\n{START}\nold\n{END}\n\nafter\n")
    with pytest.raises(SystemExit):
        main(["report", "--weights", str(weights), "--docs", str(page), "--check"])
    main(["report", "--weights", str(weights), "--docs", str(page)])
    text = page.read_text()
    assert "old" not in text and text.endswith(f"{END}\n\nafter\n")
    assert "| `vae.safetensors` | vae | valid_mse 0.5, fid_samples – | `python -m training evaluate x` |" in text
    cards = (weights / "README.md").read_text()
    assert cards.count(LICENCE) == 2 and "## `classifier.safetensors` — classifier" in cards
    main(["report", "--weights", str(weights), "--docs", str(page), "--check"])  # now up to date


def test_the_acgan_attribute_table_is_written_between_its_markers(tmp_path):
    from training.report import ATTRIBUTES_END, ATTRIBUTES_START

    weights = tmp_path / "weights"
    metrics = {
        "classifier_agreement": 0.9,
        "classifier_agreement_per_attribute": {"Smiling": 0.95, "Male": 0.85},
        "classifier_agreement_real": 0.88,
        "classifier_agreement_real_per_attribute": {"Smiling": 0.9, "Male": 0.86},
    }
    write_tiny_checkpoint(weights, "acgan", metrics=metrics)
    page = tmp_path / "results.md"
    page.write_text(f"{START}\n{END}\n\n{ATTRIBUTES_START}\nold\n{ATTRIBUTES_END}\n")
    main(["report", "--weights", str(weights), "--docs", str(page)])
    text = page.read_text()
    assert "old" not in text
    assert "| Smiling | 0.95 | 0.9 |" in text and "| Male | 0.85 | 0.86 |" in text
    assert "| **mean** | **0.9** | **0.88** |" in text
    main(["report", "--weights", str(weights), "--docs", str(page), "--check"])


def test_a_glows_manipulation_calibration_is_a_table_in_its_card(tmp_path):
    weights = tmp_path / "weights"
    per_attribute = {
        "Eyeglasses": {"latents": "no-top", "unit": 6.0, "flip": 0.95, "keep": 0.911, "refused": 0.0},
        "Smiling": {"unit": 2.5, "flip": 0.92, "keep": 0.9, "refused": 0.01},  # calibrated before profiles: all
    }
    calibration = {"command": "python -m training calibrate-glow x", "faces": 100, "per_attribute": per_attribute}
    write_tiny_checkpoint(weights, "glow", metrics={"manipulation_calibration": calibration})
    main(["report", "--weights", str(weights)])
    cards = (weights / "README.md").read_text()
    assert "| Eyeglasses | no-top | 6 | 0.95 | 0.911 | 0 |" in cards
    assert "| Smiling | all | 2.5 | 0.92 | 0.9 | 0.01 |" in cards
    dumped = next(line for line in cards.splitlines() if "`manipulation_calibration`" in line)
    assert '"faces": 100' in dumped and "per_attribute" not in dumped


def test_single_attribute_requests_join_the_acgan_attribute_table_when_measured(tmp_path):
    from training.report import ATTRIBUTES_END, ATTRIBUTES_START

    weights = tmp_path / "weights"
    single = {
        name: {
            "requested_alone": alone,
            "real_label_vectors": real,
            "relative": round(alone / real, 4),
            "classifier_balanced_accuracy": accuracy,
        }
        for name, alone, real, accuracy in (("Smiling", 0.96, 0.98, 0.84), ("Male", 0.97, 0.98, 0.98))
    }
    metrics = {
        "classifier_agreement": 0.9,
        "classifier_agreement_per_attribute": {"Smiling": 0.95, "Male": 0.85},
        "classifier_agreement_real": 0.88,
        "classifier_agreement_real_per_attribute": {"Smiling": 0.9, "Male": 0.86},
        "single_attribute_agreement": 0.965,
        "single_attribute_per_attribute": single,
    }
    write_tiny_checkpoint(weights, "acgan", metrics=metrics)
    page = tmp_path / "results.md"
    page.write_text(f"{START}\n{END}\n\n{ATTRIBUTES_START}\nold\n{ATTRIBUTES_END}\n")
    main(["report", "--weights", str(weights), "--docs", str(page)])
    text = page.read_text()
    assert "requested alone (on/off mean) | given real faces' label vectors | relative |" in text
    assert "| Smiling | 0.95 | 0.9 | 0.96 | 0.98 | 0.9796 | 0.84 |" in text
    assert "| **mean** | **0.9** | **0.88** | **0.965** | | | |" in text


def test_a_glows_single_attribute_figures_join_the_attribute_table_and_its_card(tmp_path):
    """Every attribute-conditioned family's per-attribute figures are tabled, in the README and in the model card (the
    Glow's beside the ACGAN's); the card's metric list leaves the per-attribute dump to the table."""
    from training.report import ATTRIBUTES_END, ATTRIBUTES_START

    weights = tmp_path / "weights"
    single = {
        "Smiling": {
            "requested_alone": 0.9,
            "requested_alone_off_on": [0.95, 0.85],
            "real_label_vectors": 0.92,
            "relative": 0.9783,
            "classifier_balanced_accuracy": 0.84,
        }
    }
    metrics = {
        "classifier_agreement": 0.7,
        "classifier_agreement_per_attribute": {"Smiling": 0.8},
        "classifier_agreement_real": 0.9,
        "single_attribute_agreement": 0.9,
        "single_attribute_per_attribute": single,
    }
    write_tiny_checkpoint(weights, "glow", metrics=metrics)
    write_tiny_checkpoint(
        weights, "acgan", metrics={"classifier_agreement": 0.9, "classifier_agreement_per_attribute": {"Male": 0.85}}
    )
    write_tiny_checkpoint(weights, "vae", metrics={"valid_mse": 0.5})
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n\n{ATTRIBUTES_START}\nold\n{ATTRIBUTES_END}\n")
    main(["report", "--weights", str(weights), "--readme", str(readme)])
    text = readme.read_text()
    glow_row = "| Smiling | 0.8 | – | 0.9 | 0.92 | 0.9783 | 0.84 |"
    assert "| `glow.safetensors`: attribute |" in text and glow_row in text
    assert "| `acgan.safetensors`: attribute |" in text and "| Male | 0.85 | – |" in text
    assert "vae.safetensors`: attribute" not in text
    cards = (weights / "README.md").read_text()
    glow_card = cards[cards.index("## `glow.safetensors`") : cards.index("## `vae.safetensors`")]
    assert glow_row in glow_card and "| **mean** | **0.7** | **0.9** | **0.9** | | | |" in glow_card
    assert "`single_attribute_per_attribute`" not in cards and "`single_attribute_agreement`: 0.9" in glow_card
    vae_card = cards[cards.index("## `vae.safetensors`") :]
    assert "Per attribute" not in vae_card
    main(["report", "--weights", str(weights), "--readme", str(readme), "--check"])
