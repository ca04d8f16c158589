"""``python -m training evaluate CHECKPOINT --data DIR --out DIR``: metrics and figures for a trained checkpoint.

One evaluator interface: each family registers, with :func:`.evaluation.register_evaluator`, a function
``(checkpoint, args, out_dir) -> metrics`` that writes its figures into ``out_dir``, and declares the metrics it
reports and how its samples are scored by FID (``fid="pipeline"``: the FID of samples drawn through the family's
pipeline as the service draws them, run by ``evaluate`` itself, with ``--fid`` or always; ``"own"``: the evaluator
measures its own FIDs under ``--fid``; ``None``: the family does not sample). ``evaluate`` runs them.

The command checks the family and the attribute before any heavy work, writes ``metrics.json`` beside the figures
(with ``evaluate_command``, the command line that measured them) and, unless ``--no-write-metrics``, merges the
metrics into the checkpoint's ``metrics`` metadata (so the service's model cards show them). The real faces'
Inception statistics are cached per split under ``--fid-cache``.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

import torch

from app.models.checkpoint import CheckpointError, load_checkpoint, read_metadata, update_metrics

from . import evaluate_gans, evaluate_glow, evaluate_vae  # noqa: F401
from .data import SPLITS
from .evaluation import EVALUATORS, EvaluationError, attribute_names, check_attribute, evaluator_for
from .fid import pipeline_fid
from .registry import register_trainer
from .runtime import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the .safetensors checkpoint to evaluate")
    parser.add_argument("--data", required=True, help="CelebA folder in the official layout")
    parser.add_argument("--out", required=True, help="folder for the figures and metrics.json")
    parser.add_argument("--split", default="valid", choices=sorted(SPLITS), help="split to evaluate on (default valid)")
    parser.add_argument("--limit", type=int, help="use only the first N images of the split")
    parser.add_argument(
        "--classifier",
        help="attribute classifier checkpoint that judges acgan/infogan samples "
        "(default: classifier.safetensors beside CHECKPOINT)",
    )
    parser.add_argument("--attribute", default="Male", help="CelebA attribute that colours the t-SNE (default Male)")
    parser.add_argument("--tsne-points", type=int, default=500, help="latents in the t-SNE (0 = no t-SNE)")
    parser.add_argument(
        "--fid",
        action="store_true",
        help="also the FID of samples against the split's real faces, for every sampling family (acgan: and of "
        "toggle pairs; dcgan: always); slow on a CPU, about 0.1-0.2 s per image",
    )
    parser.add_argument(
        "--fid-samples",
        type=int,
        default=1000,
        help="generated images per FID figure (FID grows as counts shrink: compare equal counts)",
    )
    parser.add_argument(
        "--single-attribute-samples",
        type=int,
        default=200,
        help="acgan, glow: images per attribute and value (on, off) requested with that attribute alone, and as many "
        "given real faces' label vectors with it (0 = not measured); 200 for the model card",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--cache-dir", default=".cache/packs", help="where decoded splits are packed for reuse")
    parser.add_argument(
        "--fid-cache", default=".cache/fid", help="where the real faces' Inception statistics are kept per split"
    )
    parser.add_argument(
        "--no-write-metrics", action="store_true", help="do not merge the metrics into the checkpoint's metadata"
    )


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation of ``args.checkpoint``; returns the metrics. Raises :class:`EvaluationError` or
    :class:`CheckpointError`."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.checkpoint).is_file():
        raise CheckpointError(f"{args.checkpoint}: no such file")
    family = read_metadata(args.checkpoint).get("family")
    if family is None:
        raise CheckpointError(f"{args.checkpoint}: metadata names no family; is this a facegen checkpoint?")
    evaluator = evaluator_for(family)  # before loading anything: an unknown family fails fast
    if args.fid_samples < 2:
        raise EvaluationError(f"--fid-samples must be at least 2, got {args.fid_samples}")
    check_attribute(args.attribute, attribute_names(args.data))
    checkpoint = load_checkpoint(args.checkpoint, resolve_device(args.device))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluator.function(checkpoint, args, out_dir)
    if evaluator.fid == "pipeline" and (args.fid or evaluator.always_fid):
        metrics.update(pipeline_fid(checkpoint, args, out_dir))
    metrics["evaluate_command"] = evaluate_command(args, family)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if not args.no_write_metrics:
        update_metrics(args.checkpoint, metrics)
    print(f"{family} {args.checkpoint}:")
    for key, value in sorted(metrics.items()):
        print(f"  {key}: {value}")
    print(f"figures and metrics.json in {out_dir}" + ("" if args.no_write_metrics else "; checkpoint metrics updated"))
    return metrics


def evaluate_command(args: argparse.Namespace, family: str) -> str:
    """The command line that measured these metrics (the model cards show it beside them)."""
    words = ["python", "-m", "training", "evaluate", str(args.checkpoint), "--data", str(args.data)]
    words += ["--split", args.split, "--seed", str(args.seed)]
    if args.limit:
        words += ["--limit", str(args.limit)]
    if getattr(args, "classifier", None):
        words += ["--classifier", str(args.classifier)]
    spec = EVALUATORS[family]
    if spec.fid and (args.fid or spec.always_fid):
        words += [*(["--fid"] if args.fid else []), "--fid-samples", str(args.fid_samples)]
    if spec.single_attribute:
        words += ["--single-attribute-samples", str(getattr(args, "single_attribute_samples", 0))]
    return shlex.join(words)


@register_trainer("evaluate", add_arguments)
def run(args: argparse.Namespace) -> None:
    try:
        evaluate(args)
    except (EvaluationError, CheckpointError, FileNotFoundError) as error:
        raise SystemExit(f"evaluate: {error}") from None
