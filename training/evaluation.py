"""What every evaluator shares, below the metrics and the family evaluators: the registry that ``python -m training
evaluate`` (:mod:`.evaluate`) reads, the error an evaluation raises, the evaluated split and the t-SNE figure.

The evaluation is layered, each layer importing only those below it:

1. this module (on :mod:`.data` and :mod:`.plots`);
2. the shared metrics: :mod:`.fid` (Fréchet Inception Distance), :mod:`.attribute_judge` (attribute agreement, judged
   by the project's classifier) and the trainers' validation measures (bits/dim in :mod:`.glow`, MSE in :mod:`.vae`);
3. one evaluator per family: :mod:`.evaluate_vae`, :mod:`.evaluate_gans` (dcgan, acgan, infogan),
   :mod:`.evaluate_glow`;
4. the commands: :mod:`.evaluate`, :mod:`.report`, :mod:`.glow_calibration`, :mod:`.glow_targets`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from app.models.checkpoint import Checkpoint

from .data import PackedSplit, load_split
from .plots import saved_figure

Evaluator = Callable[[Checkpoint, argparse.Namespace, Path], dict[str, Any]]


@dataclass(frozen=True)
class EvaluatorSpec:
    """What ``evaluate`` runs for one family."""

    function: Evaluator
    metrics: tuple[str, ...]  # the headline metrics it reports (model cards, the results tables), FID's included
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


# --- the evaluated split and shared figures ---------------------------------------------------------------------------


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
    # optional heavy dependencies (the training extras), imported only when a t-SNE is drawn
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
