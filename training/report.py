"""Model cards from the checkpoints themselves: ``python -m training report``.

Writes ``weights/README.md`` (one card per checkpoint: what it is, its recipe, data, steps, wall time, hardware,
every metric with the command that measured it, CelebA's licence) and, with ``--docs docs/results.md``, rewrites the
documentation page's generated tables: every family's metrics between ``<!-- metrics:start -->`` and
``<!-- metrics:end -->``, and the ACGAN's per-attribute agreement between its own markers when the page has them.
``--check`` writes nothing and fails when either file disagrees with the checkpoints (the test suite runs it on the
shipped weights), so figures live in one place: the checkpoints' metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.models.checkpoint import file_sha256, read_metadata
from app.models.registry import UnknownFamilyError, family_class

from .evaluate import EVALUATORS
from .registry import register_trainer

START, END = "<!-- metrics:start -->", "<!-- metrics:end -->"
# The attribute-conditioned families' (ACGAN, Glow) per-attribute agreement, written between these when the page
# has them (the markers keep their first name).
ATTRIBUTES_START, ATTRIBUTES_END = "<!-- acgan-attributes:start -->", "<!-- acgan-attributes:end -->"
LICENCE = (
    "Trained on CelebA (Liu et al., ICCV 2015), which is available for non-commercial research purposes only; "
    "these weights inherit that restriction (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html)."
)
CALIBRATION = "manipulation_calibration"  # a Glow's metrics entry written by calibrate-glow
SINGLE_ATTRIBUTE = "single_attribute_per_attribute"  # an attribute family's requests that fix one attribute
# Headline metrics of families without an evaluator (the classifier measures itself while training).
TRAINING_HEADLINES = {"classifier": ("valid_mean_accuracy", "majority_mean_accuracy")}


def checkpoints(weights: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every checkpoint in ``weights`` with its metadata (JSON fields decoded), sorted by file name."""
    found = []
    for path in sorted(weights.glob("*.safetensors")):
        metadata = read_metadata(path)
        decoded = {
            key: json.loads(value) if key not in ("family", "format_version") else value
            for key, value in metadata.items()
        }
        found.append((path, decoded))
    return found


def summary(family: str) -> str:
    """The family's own line on what its checkpoints are (its registration's ``summary``); the name if it has none."""
    try:
        return family_class(family).summary or family
    except UnknownFamilyError:
        return family


def headlines(family: str) -> tuple[str, ...]:
    spec = EVALUATORS.get(family)
    return spec.metrics if spec is not None else TRAINING_HEADLINES.get(family, ())


def show(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def headline_value(metrics: dict[str, Any], name: str) -> Any:
    """``valid_mse`` is stored per split (``valid_mse``, ``test_mse``): the evaluated split's when renamed."""
    if name in metrics:
        return metrics[name]
    split = metrics.get("evaluated_split", "valid")
    return metrics.get(name.replace("valid_", f"{split}_", 1))


def metrics_table(found: list[tuple[Path, dict[str, Any]]]) -> str:
    lines = ["| checkpoint | family | metrics | measured by |", "|---|---|---|---|"]
    for path, metadata in found:
        family, metrics = metadata["family"], metadata.get("metrics", {})
        shown = [f"{name} {show(headline_value(metrics, name))}" for name in headlines(family)]
        command = metrics.get("evaluate_command")
        if command is None:
            command = "the training run" if family == "classifier" else "not recorded (evaluated before commands were)"
        else:
            command = f"`{command}`"
        lines.append(f"| `{path.name}` | {family} | {', '.join(shown) or '–'} | {command} |")
    return "\n".join(lines)


def attribute_block(name: str, metrics: dict[str, Any]) -> str | None:
    """Per conditioned attribute of one checkpoint (any attribute-conditioned family): how often the classifier agrees
    with the requested value on samples, and with the true labels on real faces (its own ceiling); where measured,
    requests that fix that attribute alone, beside the model given real faces' label vectors with it and the
    classifier's balanced accuracy. None when the checkpoint has no per-attribute figures."""
    samples = metrics.get("classifier_agreement_per_attribute")
    if not samples:
        return None
    real = metrics.get("classifier_agreement_real_per_attribute", {})
    # requests that fix one attribute (what users send), when the evaluator measured them
    single = metrics.get(SINGLE_ATTRIBUTE, {})
    extra_header = (
        " requested alone (on/off mean) | given real faces' label vectors | relative | classifier's balanced "
        "accuracy (real) |"
        if single
        else ""
    )
    lines = [
        f"| `{name}`: attribute | classifier agrees with the request (samples) | with the labels (real) |"
        + extra_header,
        "|---|---|---|" + ("---|---|---|---|" if single else ""),
    ]
    for attribute, value in samples.items():
        row = single.get(attribute, {})
        columns = ("requested_alone", "real_label_vectors", "relative", "classifier_balanced_accuracy")
        extra = "".join(f" {show(row.get(key))} |" for key in columns) if single else ""
        lines.append(f"| {attribute} | {show(value)} | {show(real.get(attribute))} |{extra}")
    mean_extra = f" **{show(metrics.get('single_attribute_agreement'))}** | | | |" if single else ""
    lines.append(
        f"| **mean** | **{show(metrics.get('classifier_agreement'))}** | "
        f"**{show(metrics.get('classifier_agreement_real'))}** |{mean_extra}"
    )
    return "\n".join(lines)


def attribute_table(found: list[tuple[Path, dict[str, Any]]]) -> str:
    """:func:`attribute_block` of every checkpoint that has per-attribute figures (ACGAN, Glow)."""
    blocks = [attribute_block(path.name, metadata.get("metrics", {})) for path, metadata in found]
    return "\n\n".join(block for block in blocks if block) or "(no checkpoint with per-attribute figures)"


def measured_by(family: str, metrics: dict[str, Any]) -> str:
    if "evaluate_command" in metrics:
        return f"`{metrics['evaluate_command']}`; `train_*` figures by the training run"
    if family == "classifier":
        return "the training run"
    return "evaluate, before checkpoints recorded the command (see docs/results.md, Shipped weights)"


def model_card(path: Path, metadata: dict[str, Any]) -> str:
    family, training, metrics = metadata["family"], metadata.get("training", {}), metadata.get("metrics", {})
    recipe = training.get("recipe")
    recipe_text = (
        f"`{recipe['source']}` (run folder `{recipe['run_dir']}`), resolved options: `{json.dumps(recipe['options'])}`"
        if recipe
        else (
            f"command-line options `{json.dumps(training['options'])}`"
            if training.get("options")
            else "recorded before recipes existed; see training/recipes/" + family + ".toml"
        )
    )
    lines = [
        f"## `{path.name}` — {family}",
        "",
        f"- **What**: {summary(family)}",
        f"- **Config**: `{json.dumps(metadata.get('config', {}), sort_keys=True)}`",
        f"- **Recipe**: {recipe_text}",
        f"- **Data**: `{training.get('data', '?')}`, {training.get('train_images', '?')} training images, "
        f"preprocess `{json.dumps(metadata.get('preprocess', {}), sort_keys=True)}`",
        f"- **Training**: {training.get('epochs', '?')} epochs, {training.get('steps', '?')} steps, batch "
        f"{training.get('batch_size', '?')}, {show(training.get('seconds'))} s wall time, hardware "
        f"{training.get('hardware', 'not recorded (2-core CPU runs)')}, {training.get('processes', 1)} process(es), "
        f"precision {training.get('precision', 'fp32')}, code `{training.get('code_version', '?')}`",
        f"- **sha256**: `{file_sha256(path)}`",
        f"- **Metrics** (measured by {measured_by(family, metrics)}):",
        "",
    ]
    for name, value in sorted(metrics.items()):
        if name == "evaluate_command":
            continue
        if name == CALIBRATION and isinstance(value, dict):  # its per-attribute part is the table below
            value = {key: entry for key, entry in value.items() if key != "per_attribute"}
        if name == SINGLE_ATTRIBUTE:  # the attribute table below shows it
            continue
        text = json.dumps(value) if isinstance(value, (dict, list)) else show(value)
        lines.append(f"  - `{name}`: {text if len(text) <= 300 else text[:297] + '...'}")
    lines += calibration_table(metrics)
    block = attribute_block(path.name, metrics)
    if block:
        lines += [
            "",
            "Per attribute (`training evaluate`, judged by the classifier on the evaluated split):",
            "",
            block,
        ]
    lines += ["", f"- **Licence**: {LICENCE}", ""]
    return "\n".join(lines)


def calibration_table(metrics: dict[str, Any]) -> list[str]:
    """A Glow's manipulation calibration per attribute (``calibrate-glow``), as the card's table."""
    per_attribute = metrics.get(CALIBRATION, {}).get("per_attribute")
    if not per_attribute:
        return []
    lines = [
        "",
        "Manipulation calibration (`calibrate-glow`, on training faces): strength 1 moves `unit` partial directions "
        "on the latents named; the share of faces whose classifier call flipped, of the other calls kept, and of "
        "frames refused at that unit.",
        "",
        "| attribute | latents | unit | flipped | others kept | refused |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in per_attribute.items():
        cells = [entry.get("latents", "all"), *(show(entry.get(key)) for key in ("unit", "flip", "keep", "refused"))]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


def cards(found: list[tuple[Path, dict[str, Any]]]) -> str:
    header = [
        "# Shipped weights",
        "",
        "Generated by `python -m training report` from the checkpoints' own metadata; do not edit by hand.",
        "",
        "## Metrics",
        "",
        metrics_table(found),
        "",
    ]
    return "\n".join(header + [model_card(path, metadata) for path, metadata in found])


def replace_between_markers(text: str, table: str, start: str = START, end: str = END, page: str = "the page") -> str:
    if start not in text or end not in text:
        raise SystemExit(f"report: {page} has no {start} ... {end} markers to write the table between")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{table}\n{end}{after}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default="weights", help="folder of the checkpoints (default weights)")
    parser.add_argument("--cards", help="model cards file to write (default WEIGHTS/README.md)")
    # --readme: the option's name from when the tables were in README.md; kept so older commands still work.
    parser.add_argument(
        "--docs",
        "--readme",
        dest="docs",
        metavar="PAGE",
        help="also rewrite the generated tables between the markers of this page (docs/results.md)",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file disagrees")


@register_trainer("report", add_arguments)
def report(args: argparse.Namespace) -> None:
    weights = Path(args.weights)
    found = checkpoints(weights)
    if not found:
        raise SystemExit(f"report: no checkpoints in {weights}")
    outputs = {Path(args.cards) if args.cards else weights / "README.md": cards(found) + "\n"}
    if args.docs:
        page = Path(args.docs)
        if not page.is_file():
            raise SystemExit(f"report: {page} does not exist (the generated tables live in docs/results.md)")
        text = replace_between_markers(page.read_text(), metrics_table(found), page=str(page))
        if ATTRIBUTES_START in text:
            text = replace_between_markers(text, attribute_table(found), ATTRIBUTES_START, ATTRIBUTES_END, str(page))
        outputs[page] = text
    stale = [path for path, text in outputs.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        if stale:
            print(
                f"out of date with the checkpoints: {', '.join(map(str, stale))}; run python -m training report "
                f"--weights {weights}" + (f" --docs {args.docs}" if args.docs else ""),
                file=sys.stderr,
            )
            raise SystemExit(1)
        return
    for path in stale:
        path.write_text(outputs[path])
        print(f"wrote {path}")
