"""The Glow evaluator, plugged into ``python -m training evaluate`` (:mod:`.evaluate`).

- **bits/dim** of the evaluated split under p(x | y) with its true attributes (the training's validation bound).
- **condition obeyed**: for each of CONDITIONED, samples requested with it on and with it off (the other attributes
  left open, drawn as the service draws them), as a user asks; the share the classifier judges as requested.
- **conditional agreement**: samples requested with the attribute vectors of real faces of the split, drawn through
  the pipeline at the service's default temperature, judged by the attribute classifier (``--classifier``); the
  classifier's agreement with the same labels on the real faces is the ceiling beside it. Course report 2's c-Glow
  scored under 0.2 here ("the condition failed completely").
- **single-attribute requests** (:mod:`.attribute_requests`, as the ACGAN's evaluator measures them): every
  attribute requested alone, on and off (``--single-attribute-samples`` each), beside the same pipeline given real
  faces' whole label vectors with that value and the classifier's balanced accuracy on the split's faces; and how
  often a ``Male: true`` request's open attributes turn on lipstick and heavy make-up, beside the rate among the
  split's men.
- **manipulation flip and keep rates** for the attributes the model-quality targets name (Smiling, Male,
  Eyeglasses, Young): each face is moved along the attribute's direction by the pipeline (+1 where the classifier
  says the face lacks it, -1 where it has it); *flip* is the share whose classifier call for that attribute
  changes, *keep* the share of the other 39 calls that stay as they were on the unmoved reconstruction (the report
  found every other attribute dragged towards the mean); a frame that diverged, which the service refuses, counts
  as neither.
- **FID** of pipeline samples at the served temperature with ``--fid`` (added by ``evaluate``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from app.models.artefacts import colour_noise
from app.models.checkpoint import Checkpoint
from app.models.glow import Glow
from app.models.pipelines.glow import GlowPipeline

from .attribute_judge import attribute_calls, batched, classifier_path, load_judge
from .attribute_requests import attribute_request_metrics
from .evaluation import EvaluationError, load_eval_split, register_evaluator
from .glow import validation_bits_per_dim
from .runtime import save_grid

MANIPULATED = ("Smiling", "Male", "Eyeglasses", "Young")  # the attributes the model-quality targets name
CONDITIONED = ("Smiling", "Male", "Eyeglasses", "Blond_Hair", "Young")  # asked on and off, the others left open
CONDITION_SAMPLES = 100  # per attribute and value
AGREEMENT_SAMPLES = 200
MANIPULATED_FACES = 100
STRENGTH = 1.0  # the service's unit: 1 towards the attribute on, -1 towards off (GlowPipeline.manipulation_latents)


def decode_checked(
    pipeline: GlowPipeline, latents: torch.Tensor, reference_scores: torch.Tensor | None = None, batch_size: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded images and whether each failed as the service judges a frame: diverged, or (with the checkpoint's
    artefact limits) pixel noise beyond its reference's (``reference_scores``, the faces' reconstructions' colour
    noise, one per row). The service never serves such a frame."""
    parts = [pipeline.run("decode", (latents[i : i + batch_size],)) for i in range(0, len(latents), batch_size)]
    images, unusable = torch.cat([p[0].cpu() for p in parts]), torch.cat([p[1].cpu() for p in parts])
    return images, unusable | pipeline.speckled(images, reference_scores)


def manipulation_rates(
    before: torch.Tensor, after: torch.Tensor, refused: torch.Tensor, index: int
) -> tuple[float, float, float]:
    """(N, A) 0/1 calls on the unmoved and the moved faces, and whether each moved frame diverged -> the share whose
    call of attribute ``index`` flipped, the share of the other calls that stayed, and the share of frames refused.
    A refused frame (the service answers 422) counts as neither flipped nor kept."""
    others = [k for k in range(before.shape[1]) if k != index]
    flip = ((after[:, index] != before[:, index]) & ~refused).float().mean().item()
    keep = ((after[:, others] == before[:, others]) & ~refused[:, None]).float().mean().item()
    return flip, keep, refused.float().mean().item()


def run_prepared(pipeline: Any, prepared: list[Any], batch_size: int = 100) -> torch.Tensor:
    """Images of several prepared requests, batched as the batcher would (their inputs concatenated)."""
    inputs = tuple(torch.cat(parts) for parts in zip(*(p.inputs for p in prepared)))
    operation = prepared[0].operation
    return batched(lambda *chunk: pipeline.run(operation, chunk)[0], *inputs, batch_size=batch_size)


@register_evaluator(
    "glow",
    metrics=(
        "valid_bits_per_dim",
        "condition_obeyed_min",
        "classifier_agreement",
        "manipulation_flip",
        "manipulation_keep",
        "fid_samples",
    ),
    fid="pipeline",
    single_attribute=True,
)
@torch.inference_mode()
def evaluate_glow(checkpoint: Checkpoint, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    model, pipeline = checkpoint.model_as(Glow), GlowPipeline(checkpoint)
    device = pipeline.device
    split = load_eval_split(checkpoint, args)
    bits = validation_bits_per_dim(model, split, device, args.seed)
    model.eval()
    metrics: dict[str, Any] = {f"{args.split}_bits_per_dim": round(bits, 5), "evaluated_split": args.split}
    save_grid(pipeline.sample(32, args.seed), out_dir / "samples.png", nrow=8)

    path = classifier_path(args)
    if path is None:
        print("no classifier (--classifier PATH): conditional agreement and manipulation are not measured")
        return metrics
    judge = load_judge(path, device)
    names = checkpoint.attributes
    columns = judge.columns(names)

    def calls(images: torch.Tensor) -> torch.Tensor:
        return attribute_calls(judge, images, columns, device)

    # one attribute requested on or off, the others open: what a user of the service asks
    obeyed = {}
    for attribute in [name for name in CONDITIONED if name in names]:
        column = names.index(attribute)
        right = 0
        for value in (False, True):
            request = pipeline.prepare_samples(CONDITION_SAMPLES, args.seed + 7 + int(value), {attribute: value})
            right += int((calls(run_prepared(pipeline, [request]))[:, column] == float(value)).sum())
        obeyed[attribute] = round(right / (2 * CONDITION_SAMPLES), 4)
    metrics["condition_obeyed_per_attribute"] = obeyed
    metrics["condition_obeyed_min"] = min(obeyed.values()) if obeyed else None
    metrics["condition_samples"] = 2 * CONDITION_SAMPLES

    # conditional agreement: request real faces' attribute vectors, one request per vector (as clients would)
    rng = torch.Generator().manual_seed(args.seed)
    picks = torch.randint(len(split), (AGREEMENT_SAMPLES,), generator=rng)
    labels = split.attributes[picks]
    requests = [
        pipeline.prepare_samples(1, args.seed + i, {name: bool(v) for name, v in zip(names, row.tolist())})
        for i, row in enumerate(labels)
    ]
    samples = run_prepared(pipeline, requests)
    agree = (calls(samples) == labels).float()
    real_images = split.batch(picks)[0]
    metrics["classifier_agreement"] = round(agree.mean().item(), 4)
    metrics["classifier_agreement_per_attribute"] = {n: round(v, 4) for n, v in zip(names, agree.mean(0).tolist())}
    real_agree = (calls(real_images) == labels).float()
    metrics["classifier_agreement_real"] = round(real_agree.mean().item(), 4)
    # the ceiling per attribute, beside the samples' in the report's attribute table
    metrics["classifier_agreement_real_per_attribute"] = {
        n: round(v, 4) for n, v in zip(names, real_agree.mean(0).tolist())
    }
    metrics["agreement_samples"] = AGREEMENT_SAMPLES
    metrics["classifier"] = judge.source
    save_grid(samples[:32], out_dir / "conditional_samples.png", nrow=8)

    # what users send: one attribute fixed, the others drawn as the service draws them
    split_columns = [split.attribute_names.index(name) for name in names]
    split_labels = split.attributes[:, split_columns]
    metrics.update(
        attribute_request_metrics(
            pipeline,
            lambda x: judge.probabilities(x.to(device))[:, columns],
            split_labels,
            split.batch(torch.arange(len(split)))[0],
            split_labels,
            samples=getattr(args, "single_attribute_samples", 0),
            seed=args.seed,
        )
    )

    # manipulation: move each face along one attribute's direction, towards the other value
    faces = split.batch(torch.arange(min(MANIPULATED_FACES, len(split))))[0]
    latents = batched(lambda x: pipeline.run("encode", (x,))[0], faces)
    reconstructions = batched(lambda z: pipeline.run("decode", (z,))[0], latents)
    before = calls(reconstructions)
    flip, keep, refusals, shown = {}, {}, {}, []
    for attribute in [name for name in MANIPULATED if name in names]:
        index = names.index(attribute)
        sign = 1 - 2 * before[:, index]  # +1 towards having it, -1 towards lacking it
        moved = torch.stack(
            [
                pipeline.manipulation_latents(latent, attribute, [STRENGTH * s.item()])[0]
                for latent, s in zip(latents, sign)
            ]
        )
        images, refused = decode_checked(pipeline, moved, colour_noise(reconstructions))
        rates = manipulation_rates(before, calls(images), refused, index)
        flip[attribute], keep[attribute], refusals[attribute] = (round(rate, 4) for rate in rates)
        shown += [reconstructions[:8], images[:8]]
    if not flip:
        raise EvaluationError(f"the checkpoint has none of the manipulated attributes {MANIPULATED}")
    metrics["manipulation_flip"] = round(sum(flip.values()) / len(flip), 4)
    metrics["manipulation_keep"] = round(sum(keep.values()) / len(keep), 4)
    metrics["manipulation_flip_per_attribute"] = flip
    metrics["manipulation_keep_per_attribute"] = keep
    metrics["manipulation_refused_per_attribute"] = refusals
    metrics["manipulation_faces"] = len(faces)
    metrics["manipulation_strength"] = STRENGTH
    save_grid(torch.cat(shown), out_dir / "manipulation.png", nrow=8)
    return metrics
