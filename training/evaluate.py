"""``python -m training evaluate CHECKPOINT --data DIR --out DIR``: metrics and figures for a trained checkpoint.

One evaluator interface: each family registers, with :func:`register_evaluator`, a function
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
import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from app.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_metadata, update_metrics
from app.models.sampling import draw_noise, seeded_generator
from app.models.vae import VAE

from .common import resolve_device, save_grid
from .data import SPLITS, PackedSplit, load_split
from .plots import saved_figure
from .registry import register_trainer

Evaluator = Callable[[Checkpoint, argparse.Namespace, Path], dict[str, Any]]


@dataclass(frozen=True)
class EvaluatorSpec:
    """What ``evaluate`` runs for one family."""

    function: Evaluator
    metrics: tuple[str, ...]  # the headline metrics it reports (model cards, the README table), FID's included
    fid: str | None = None  # "pipeline": evaluate adds the FID of pipeline samples; "own": the function does it
    always_fid: bool = False  # FID is the family's only quality score: measured without --fid
    single_attribute: bool = False  # measures single-attribute requests (--single-attribute-samples)


EVALUATORS: dict[str, EvaluatorSpec] = {}


class EvaluationError(ValueError):
    """A request the evaluation cannot honour (unknown family, unknown attribute, bad data folder)."""


def register_evaluator(
    family: str,
    *,
    metrics: tuple[str, ...],
    fid: str | None = None,
    always_fid: bool = False,
    single_attribute: bool = False,
) -> Callable[[Evaluator], Evaluator]:
    """Make ``function`` the evaluator of checkpoints of ``family``, reporting ``metrics``."""
    if fid not in (None, "pipeline", "own"):
        raise ValueError(f"fid must be None, 'pipeline' or 'own', got {fid!r}")

    def decorate(function: Evaluator) -> Evaluator:
        if family in EVALUATORS:
            raise ValueError(f"family {family!r} has two evaluators")
        EVALUATORS[family] = EvaluatorSpec(function, metrics, fid, always_fid, single_attribute)
        return function

    return decorate


def evaluator_for(family: str) -> EvaluatorSpec:
    try:
        return EVALUATORS[family]
    except KeyError:
        raise EvaluationError(
            f"no evaluator for family {family!r}; families with evaluators: {', '.join(sorted(EVALUATORS))}"
        ) from None


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


def attribute_names(data: str | Path) -> list[str]:
    """The 40 names: the second line of a folder's ``list_attr_celeba.txt`` (without reading the 200k rows), or an
    archive's metadata."""
    if Path(data).is_file():
        with safe_open(str(data), framework="pt") as handle:
            names = (handle.metadata() or {}).get("attribute_names")
        if names is None:
            raise EvaluationError(f"{data} is not a faces archive written by `python -m training pack`")
        return list(json.loads(names))
    table = Path(data) / "list_attr_celeba.txt"
    if not table.is_file():
        raise EvaluationError(
            f"{data} is not a CelebA folder (no list_attr_celeba.txt inside) nor a faces archive "
            "(python -m training pack)"
        )
    with open(table) as handle:
        handle.readline()
        return handle.readline().split()


def check_attribute(attribute: str, names: list[str]) -> int:
    if attribute not in names:
        raise EvaluationError(f"unknown attribute {attribute!r}; valid attributes: {', '.join(names)}")
    return names.index(attribute)


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
        from .fid import pipeline_fid

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


# --- shared pieces --------------------------------------------------------------------------------------------------


def load_eval_split(checkpoint: Checkpoint, args: argparse.Namespace) -> PackedSplit:
    """The evaluated split, preprocessed exactly as the checkpoint was trained."""
    try:
        return load_split(args.data, args.split, checkpoint.preprocess, args.limit, cache_dir=args.cache_dir)
    except ValueError as error:
        raise EvaluationError(str(error)) from None


def tsne_figure(
    points: torch.Tensor,
    labels: torch.Tensor,
    attribute: str,
    path: Path,
    *,
    seed: int,
    title: str,
    threads: int | None = None,
) -> int:
    """t-SNE of ``points`` (N, D) coloured by 0/1 ``labels``, saved to ``path``; returns N, or 0 when N < 3."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    data = points.detach().double().cpu().numpy()
    count = data.shape[0]
    if count < 3:
        return 0
    # perplexity must stay below the number of points; 30 is the usual value for hundreds of them.
    perplexity = min(30.0, (count - 1) / 3)
    tsne = TSNE(
        n_components=2, perplexity=perplexity, init="pca" if data.shape[1] >= 2 else "random", random_state=seed
    )
    with threadpool_limits(limits=threads):
        embedded = tsne.fit_transform(data)
    label_values = labels.bool().cpu().numpy()
    with saved_figure(path, size=(6, 5.4), dpi=100) as (_, (axis,)):
        for value, colour, name in ((False, "tab:orange", f"not {attribute}"), (True, "tab:blue", attribute)):
            chosen = label_values == value
            axis.scatter(
                embedded[chosen, 0],
                embedded[chosen, 1],
                s=8,
                alpha=0.7,
                c=colour,
                label=f"{name} ({int(chosen.sum())})",
            )
        axis.set_title(title)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.legend(loc="best")
    return count


# --- VAE ------------------------------------------------------------------------------------------------------------


@register_evaluator("vae", metrics=("valid_mse", "fid_samples"), fid="pipeline")
@torch.inference_mode()
def evaluate_vae(checkpoint: Checkpoint, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Pixel MSE of posterior-mean reconstructions, 10 faces over their reconstructions, 32 prior samples, t-SNE."""
    from .vae import validation_mse

    model = checkpoint.model_as(VAE)
    device = next(model.parameters()).device
    split = load_eval_split(checkpoint, args)
    attribute = check_attribute(args.attribute, split.attribute_names)

    mse = validation_mse(model, split, device)
    model.eval()  # validation_mse hands the model back in train mode (it serves the training loop)
    if not math.isfinite(mse):
        raise EvaluationError(f"{args.split} MSE is {mse}: the checkpoint produces non-finite images")

    shown = min(10, len(split))
    images, _ = split.batch(torch.arange(shown))
    images = images.to(device)
    save_grid(torch.cat([images, model.reconstruct(images)]), out_dir / "reconstructions.png", nrow=shown)

    noise = draw_noise(model.latent_shape, 32, seeded_generator(args.seed))
    save_grid(model.generate(noise.to(device)), out_dir / "samples.png", nrow=8)

    tsne_count = 0
    wanted = min(max(args.tsne_points, 0), len(split))
    if wanted:
        order = torch.randperm(len(split), generator=seeded_generator(args.seed))[:wanted].sort().values
        means = []
        for start in range(0, wanted, 256):
            batch, _ = split.batch(order[start : start + 256])
            means.append(model.encode(batch.to(device))[0].float().cpu())
        tsne_count = tsne_figure(
            torch.cat(means),
            split.attributes[order, attribute],
            args.attribute,
            out_dir / "tsne.png",
            seed=args.seed,
            threads=args.threads,
            title=f"t-SNE of {wanted} {args.split} latent means by {args.attribute}",
        )
        print(f"t-SNE of {tsne_count} latent means" if tsne_count else f"t-SNE skipped: {wanted} point(s) are too few")

    return {
        f"{args.split}_mse": round(mse, 6),
        f"{args.split}_images": len(split),
        "evaluated_split": args.split,
    }
