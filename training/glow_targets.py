"""``python -m training glow-targets CHECKPOINT --data D --out DIR``: the Glow figures that the FID of samples and
the evaluator's rates do not give, each measured as a user meets it.

- **diversity**: mean pairwise cosine distance of the FID Inception's pool features over samples drawn at the
  served temperature, divided by the same over the split's real faces (1: as varied as real faces); beside it the
  samples' FID against the split's faces. ``--temperatures`` gives both at other temperatures too (a flow trained
  otherwise, on 5-bit pixels say, may sample best elsewhere than the served temperature).
- **interpolation**: disjoint pairs of the split's faces; the FID of the latent path's midpoint frames against the
  faces used in no pair, divided by the FID of the pixel cross-fade (the average of the two faces) of the same pairs
  against the same faces. Under 1: the path passes through faces rather than double exposures.
- **manipulation guard**: every face of the sample moved by -1 and +1 along each of MANIPULATED through the
  pipeline's guarded manipulation (the service's path): the share of frames served at the requested strength,
  served at a reduced one, and refused (a grey tile), and the share of requests with any frame refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import torch

from app.models.checkpoint import load_checkpoint
from app.models.pipelines import build_pipeline
from app.models.pipelines.glow import DEFAULT_TEMPERATURE, MAX_TEMPERATURE, GlowPipeline

from .attribute_judge import batched
from .data import load_split
from .evaluate_glow import MANIPULATED
from .fid import FrechetInception, pipeline_samples
from .registry import register_trainer
from .runtime import resolve_device, save_grid


def mean_pairwise_cosine_distance(features: torch.Tensor) -> float:
    unit = torch.nn.functional.normalize(features.double(), dim=1)
    similarity = unit @ unit.T
    n = len(unit)
    return float(1 - (similarity.sum() - similarity.diagonal().sum()) / (n * (n - 1)))


def manipulation_guard(pipeline: GlowPipeline, faces: torch.Tensor) -> dict[str, Any]:
    latents = batched(lambda x: pipeline.run("encode", (x,))[0], faces)

    async def decode(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, unusable = pipeline.run("decode", (batch,))
        return images.cpu(), unusable.cpu()

    statuses: dict[str, list[str]] = {}
    requests_refused: dict[str, float] = {}
    for attribute in [name for name in MANIPULATED if name in pipeline.attributes]:
        per_request = [asyncio.run(pipeline.manipulate(z, attribute, [-1.0, 1.0], decode)).statuses() for z in latents]
        statuses[attribute] = [status for request in per_request for status in request]
        requests_refused[attribute] = sum("refused" in request for request in per_request) / len(per_request)
    every = [status for values in statuses.values() for status in values]
    return {
        "manipulation_frames": len(every),
        "manipulation_frames_ok": round(every.count("ok") / len(every), 4),
        "manipulation_frames_reduced": round(every.count("reduced") / len(every), 4),
        "manipulation_frames_refused": round(every.count("refused") / len(every), 4),
        "manipulation_requests_with_a_refused_frame": {k: round(v, 4) for k, v in requests_refused.items()},
    }


def temperature_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if any(not 0 <= value <= MAX_TEMPERATURE for value in values):
        raise argparse.ArgumentTypeError(f"temperatures must be between 0 and {MAX_TEMPERATURE}, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a glow checkpoint")
    parser.add_argument("--data", required=True, help="the CelebA folder or faces archive")
    parser.add_argument("--out", type=Path, required=True, help="folder for targets.json and the figures")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--samples", type=int, default=1000, help="samples for the diversity and FID figures")
    parser.add_argument(
        "--temperatures",
        type=temperature_list,
        default=(),
        help=f"comma-separated sampling temperatures to measure FID and diversity at besides the served one "
        f"({DEFAULT_TEMPERATURE})",
    )
    parser.add_argument(
        "--pairs", type=int, default=200, help="disjoint face pairs for the interpolation figure (0: not measured)"
    )
    parser.add_argument("--faces", type=int, default=200, help="faces manipulated for the guard figures (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cpu")


@register_trainer("glow-targets", add_arguments)
@torch.inference_mode()
def run(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.checkpoint, device)
    pipeline = build_pipeline(checkpoint)
    if not isinstance(pipeline, GlowPipeline):
        raise SystemExit(f"glow-targets: {args.checkpoint} is a {checkpoint.family} checkpoint, not glow")
    split = load_split(args.data, args.split, checkpoint.preprocess)
    if 2 * args.pairs >= len(split):
        raise SystemExit(f"glow-targets: {args.pairs} disjoint pairs need more than {2 * args.pairs} faces")
    args.out.mkdir(parents=True, exist_ok=True)
    fid = FrechetInception(device)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(args.seed))
    real = split.batch(order)[0]
    real_features = fid.features(real)
    targets: dict[str, Any] = {"checkpoint": str(args.checkpoint), "split": args.split}
    real_diversity = mean_pairwise_cosine_distance(real_features)
    every_face = fid.statistics_of(real_features)
    sweep, served_diversity = [], 0.0
    for temperature in sorted({DEFAULT_TEMPERATURE, *args.temperatures}):
        samples = pipeline_samples(pipeline, args.samples, args.seed, temperature=temperature)
        features = fid.features(samples)
        diversity = mean_pairwise_cosine_distance(features)
        sweep.append(
            {
                "temperature": temperature,
                "fid_samples": round(fid.distance_between(every_face, fid.statistics_of(features)), 2),
                "diversity_ratio": round(diversity / real_diversity, 4),
            }
        )
        save_grid(samples[:64], args.out / f"samples-t{temperature:g}.png", 8)
        if temperature == DEFAULT_TEMPERATURE:
            served_diversity = diversity
    served = next(row for row in sweep if row["temperature"] == DEFAULT_TEMPERATURE)
    targets |= {
        "sample_fid": served["fid_samples"],
        "diversity_samples": round(served_diversity, 4),
        "diversity_real": round(real_diversity, 4),
        "diversity_ratio": served["diversity_ratio"],
        "diversity_sample_count": args.samples,
        "sample_reference_faces": len(split),
    }
    if args.temperatures:
        targets["temperature_sweep"] = sweep
    if args.pairs:
        targets |= interpolation(pipeline, fid, real, real_features, args.pairs, args.out)
    if args.faces:
        targets |= manipulation_guard(pipeline, real[: args.faces])
    (args.out / "targets.json").write_text(json.dumps(targets, indent=2) + "\n")
    print(json.dumps(targets, indent=2))


def interpolation(
    pipeline: GlowPipeline,
    fid: FrechetInception,
    real: torch.Tensor,
    real_features: torch.Tensor,
    pairs: int,
    out: Path,
) -> dict[str, Any]:
    """Latent midpoints of ``pairs`` disjoint pairs of ``real`` against their pixel cross-fades, each scored by FID
    against the faces in no pair; the first 8 pairs saved as a figure."""
    first, second = real[:pairs], real[pairs : 2 * pairs]
    reference = fid.statistics_of(real_features[2 * pairs :])
    latents = batched(lambda x: pipeline.run("encode", (x,))[0], torch.cat([first, second]))
    midpoints = batched(lambda z: pipeline.run("decode", (z,))[0], (latents[:pairs] + latents[pairs:]) / 2)
    crossfades = (first + second) / 2
    latent_fid = fid.distance_between(reference, fid.statistics_of(fid.features(midpoints)))
    pixel_fid = fid.distance_between(reference, fid.statistics_of(fid.features(crossfades)))
    save_grid(torch.cat([first[:8], midpoints[:8].cpu(), crossfades[:8], second[:8]]), out / "midpoints.png", 8)
    return {
        "interpolation_midpoint_fid": round(latent_fid, 2),
        "interpolation_crossfade_fid": round(pixel_fid, 2),
        "interpolation_fid_ratio": round(latent_fid / pixel_fid, 4),
        "interpolation_pairs": pairs,
        "interpolation_reference_faces": len(real) - 2 * pairs,
    }
