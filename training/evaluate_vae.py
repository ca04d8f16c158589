"""The VAE evaluator, plugged into ``python -m training evaluate`` (:mod:`.evaluate`): the pixel MSE of posterior-mean
reconstructions of the evaluated split, figures of reconstructions, prior samples and a t-SNE of the latent means;
the FID of samples is added by ``evaluate`` with ``--fid``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from app.models.checkpoint import Checkpoint
from app.models.sampling import draw_noise, seeded_generator
from app.models.vae import VAE

from .evaluation import EvaluationError, check_attribute, load_eval_split, register_evaluator, tsne_figure
from .runtime import save_grid
from .vae import validation_mse


@register_evaluator("vae", metrics=("valid_mse", "fid_samples"), fid="pipeline")
@torch.inference_mode()
def evaluate_vae(checkpoint: Checkpoint, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Pixel MSE of posterior-mean reconstructions, 10 faces over their reconstructions, 32 prior samples, t-SNE."""
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
