"""Calibrate the Glow's manipulation strength per attribute: ``python -m training calibrate-glow CHECKPOINT``.

The service moves a face by ``strength x unit x`` the attribute's partial direction. One unit for every attribute
made +-1 a different change for each (some attributes flip at 2 partial directions, others need 4). This finds,
per attribute, the smallest unit on a fixed ladder at which the classifier's call flips on ``--flip`` of the
calibration faces (training faces, never the evaluated split), stopping before the other 39 calls kept fall under
``--keep`` or more than ``--refused`` of the frames diverge (the service refuses those); an attribute that never
gets there keeps the last unit that held. It climbs the ladder twice, with the direction on every latent and with
the top latent left alone (:func:`latent_profiles`), and keeps the better. The units and latent weights go into the
checkpoint (extras ``manipulation_units`` and ``manipulation_levels``), so strength 1 means "on" (-1 "off") for most
faces.

First, unless ``--envelope-faces 0``, it encodes and decodes that many training faces and stores the largest
|activation| each coupling's inverse produces (extra ``inverse_bounds``): decoding then clamps there. Faces stay
inside, so they still reconstruct exactly (figures in docs/results.md), but a latent pushed far along a direction
saturates a few values instead of cascading into a frame of noise, which is what used to stop glasses and age from
showing.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from app.models.artefacts import ARTEFACT_LIMITS_KEY, ArtefactLimits, colour_noise
from app.models.checkpoint import amend_checkpoint, load_checkpoint
from app.models.glow import INVERSE_BOUNDS_KEY, MANIPULATION_LEVELS_KEY, MANIPULATION_UNITS_KEY
from app.models.pipelines import build_pipeline
from app.models.pipelines.glow import GlowPipeline

from .attribute_judge import AttributeJudge, attribute_calls, batched, load_judge
from .data import load_split
from .evaluate_glow import decode_checked, manipulation_rates
from .registry import register_trainer
from .runtime import resolve_device

# Units tried, in partial directions. The top of the ladder is for attributes carried mostly by the top latent
# (Male): left alone there, they need many moves on the split latents, which stay clean far out.
LADDER = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 14.0, 16.0, 20.0)


def latent_profiles(latents: int) -> dict[str, torch.Tensor]:
    """The latents a direction may move, tried per attribute: all of them, or all but the top one (a push there
    passes through every coupling's inverse; without it Eyeglasses changes on more faces before frames diverge)."""
    profiles = {"all": torch.ones(latents)}
    if latents > 1:
        profiles["no-top"] = torch.cat([torch.ones(latents - 1), torch.zeros(1)])
    return profiles


def ladder(
    flip_and_keep_at: Callable[[float], tuple[float, float, float]],
    flip_target: float,
    keep_floor: float,
    refused_ceiling: float,
) -> tuple[float, float, float, float]:
    """(unit, flip, keep, refused): the first unit of :data:`LADDER` that flips ``flip_target`` of the faces, or the
    last one before the other calls kept fall under ``keep_floor`` or too many frames diverge."""
    chosen: tuple[float, float, float, float] | None = None
    for unit in LADDER:
        flip, keep, refused = flip_and_keep_at(unit)
        if (keep < keep_floor or refused > refused_ceiling) and chosen is not None:
            break  # further drags the other attributes along or breaks frames: keep the last unit that did not
        chosen = (unit, flip, keep, refused)
        if flip >= flip_target:
            break
    assert chosen is not None
    return chosen


def flip_and_keep(
    pipeline: GlowPipeline,
    calls: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    push: torch.Tensor,
    before: torch.Tensor,
    index: int,
    reference_scores: torch.Tensor,
    unit: float,
) -> tuple[float, float, float]:
    """Moving each face by ``unit`` x its ``push`` (attribute ``index``'s effect, signed towards its other value): the
    share whose call of it flips, the share of the other calls that stay, and the share of frames that diverge
    (refused by the service; they count as neither flipped nor kept). ``calls``: images -> (N, A) 0/1 calls;
    ``reference_scores``: the colour noise of each face's reconstruction, for the artefact check."""
    images, refused = decode_checked(pipeline, latents + unit * push, reference_scores)
    return manipulation_rates(before, calls(images), refused, index)


def calibrate(
    pipeline: GlowPipeline,
    judge: AttributeJudge,
    faces: torch.Tensor,
    flip_target: float,
    keep_floor: float,
    attributes: list[str] | None = None,
    refused_ceiling: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, dict[str, Any]]]:
    """(A,) units and (A, latents) latent weights (those of ``attributes``, default all, calibrated; the others as
    the pipeline has them), and per calibrated attribute the chosen profile and unit with its flip, keep and refusal
    rates on ``faces``. Per attribute, each of :func:`latent_profiles` climbs the ladder; the one that reaches
    ``flip_target`` keeping the most of the other calls wins (none reaching it: the one flipping the most)."""
    columns = judge.columns(pipeline.attributes)

    def calls(images: torch.Tensor) -> torch.Tensor:
        return attribute_calls(judge, images, columns, pipeline.device)

    latents = batched(lambda x: pipeline.run("encode", (x,))[0], faces)
    reconstructions = batched(lambda z: pipeline.run("decode", (z,))[0], latents)
    before, reference_scores = calls(reconstructions), colour_noise(reconstructions)
    units, levels, report = pipeline.manipulation_units.clone(), pipeline.manipulation_levels.clone(), {}
    profiles = latent_profiles(pipeline.latent_count)
    for name in attributes or pipeline.attributes:
        index = pipeline.attributes.index(name)
        sign = 1 - 2 * before[:, index]  # +1 towards having it, -1 towards lacking it
        best: tuple[tuple[bool, float], str, tuple[float, float, float, float]] | None = None
        for profile, weights in profiles.items():
            push = sign[:, None] * pipeline.directions_on_latents(index, weights).to(latents.dtype)
            result = ladder(
                functools.partial(flip_and_keep, pipeline, calls, latents, push, before, index, reference_scores),
                flip_target,
                keep_floor,
                refused_ceiling,
            )
            reached = result[1] >= flip_target
            rank = (reached, result[2] if reached else result[1])
            if best is None or rank > best[0]:
                best = (rank, profile, result)
        assert best is not None
        _, profile, (unit, flip, keep, refused) = best
        units[index], levels[index] = unit, profiles[profile]
        report[name] = {
            "latents": profile,
            "unit": unit,
            "flip": round(flip, 3),
            "keep": round(keep, 3),
            "refused": round(refused, 3),
        }
        print(
            f"{name:>20}: {profile:>6} unit {unit:4.2f}  flip {flip:.3f}  keep {keep:.3f}  refused {refused:.3f}",
            flush=True,
        )
    return units, levels, report


# Reconstructions of training faces over the artefact ceiling beyond which the limits are not written: the detector
# is then not measuring what it was set on (real faces at 64x64 stay under it).
MAX_FLAGGED_RECONSTRUCTIONS = 0.005


def pipeline_latents(pipeline: GlowPipeline, faces: torch.Tensor) -> torch.Tensor:
    return batched(lambda x: pipeline.run("encode", (x,))[0], faces)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a glow checkpoint; rewritten in place with its units")
    parser.add_argument("--data", required=True, help="the CelebA folder or faces archive it was trained on")
    parser.add_argument("--classifier", type=Path, default=Path("weights/classifier.safetensors"))
    parser.add_argument(
        "--attributes",
        default="all",
        help="comma-separated attributes to calibrate (default all; about a minute each "
        "on one CPU core); the others keep their units",
    )
    parser.add_argument("--faces", type=int, default=100, help="training faces, drawn with --seed")
    parser.add_argument("--flip", type=float, default=0.9, help="share of faces strength 1 must flip")
    parser.add_argument(
        "--keep",
        type=float,
        default=0.88,
        help="share of the other calls that must stay on the calibration faces (the goal is 0.85 on unseen faces: "
        "units picked at the edge of 0.85 kept 0.80-0.84 of them on the validation faces)",
    )
    parser.add_argument(
        "--refused",
        type=float,
        default=0.02,
        help="largest share of frames that may diverge (the service refuses them)",
    )
    parser.add_argument(
        "--envelope-faces",
        type=int,
        default=4000,
        help="training faces whose decoding sets each coupling's inverse bound (0: keep the checkpoint's bounds)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu")


@register_trainer("calibrate-glow", add_arguments)
def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint, device)
    if checkpoint.family != "glow":
        raise SystemExit(f"calibrate-glow: {args.checkpoint} is a {checkpoint.family} checkpoint, not glow")
    pipeline = build_pipeline(checkpoint)
    assert isinstance(pipeline, GlowPipeline)
    judge = load_judge(args.classifier, device)
    chosen = None if args.attributes.strip() == "all" else [a.strip() for a in args.attributes.split(",") if a.strip()]
    unknown = [name for name in chosen or [] if name not in pipeline.attributes]
    if unknown:
        raise SystemExit(f"calibrate-glow: unknown attribute(s) {unknown}; valid: {', '.join(pipeline.attributes)}")
    split = load_split(args.data, "train", checkpoint.preprocess)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(args.seed))
    picks = order[: args.faces]
    extras: dict[str, torch.Tensor] = {}
    if args.envelope_faces:
        envelope = order[: args.envelope_faces]
        bounds = pipeline.model.measure_inverse_bounds(
            split.batch(envelope[start : start + 200])[0] for start in range(0, len(envelope), 200)
        )
        pipeline.model.set_inverse_bounds(bounds)
        extras[INVERSE_BOUNDS_KEY] = bounds
        print(f"inverse bounds over {len(envelope)} faces: {', '.join(f'{b:.1f}' for b in bounds.tolist())}")
    limits = ArtefactLimits()
    with torch.inference_mode():
        checked = order[: max(args.faces, 1000)]
        faces = split.batch(checked)[0]
        scores = colour_noise(batched(lambda z: pipeline.run("decode", (z,))[0], pipeline_latents(pipeline, faces)))
    flagged = float((scores > limits.ceiling).float().mean())
    if flagged > MAX_FLAGGED_RECONSTRUCTIONS:
        raise SystemExit(
            f"calibrate-glow: {flagged:.1%} of {len(checked)} training faces' reconstructions exceed the artefact "
            f"ceiling {limits.ceiling}: the detector's limits do not suit this data; not writing them"
        )
    pipeline.artefact_limits = limits  # the ladder below counts frames the service would refuse as refused
    extras[ARTEFACT_LIMITS_KEY] = limits.as_tensor()
    print(f"artefact limits {limits}: {flagged:.2%} of {len(checked)} training reconstructions over the ceiling")
    with torch.inference_mode():
        units, levels, report = calibrate(
            pipeline, judge, split.batch(picks)[0], args.flip, args.keep, chosen, args.refused
        )
    calibration: dict[str, Any] = {
        "command": f"python -m training calibrate-glow {args.checkpoint} --data {args.data} --classifier "
        f"{args.classifier} --attributes {args.attributes} --faces {args.faces} --flip {args.flip} --keep {args.keep} "
        f"--refused {args.refused} --envelope-faces {args.envelope_faces} --seed {args.seed}",
        "classifier": judge.source,
        "faces": len(picks),
        **({"envelope_faces": min(args.envelope_faces, len(split))} if args.envelope_faces else {}),
        "per_attribute": {**checkpoint.metrics.get("manipulation_calibration", {}).get("per_attribute", {}), **report},
    }
    amend_checkpoint(
        args.checkpoint,
        extras={**extras, MANIPULATION_UNITS_KEY: units.float(), MANIPULATION_LEVELS_KEY: levels.float()},
        metrics={"manipulation_calibration": calibration},
    )
    print(f"{args.checkpoint}: manipulation units calibrated for {len(report)} attributes")
