"""A toy family, whole, in one place: what adding a family takes. A real (if tiny) model, its pipeline, its route, its
trainer, its evaluator and its recipe; every list elsewhere (the tests' tiny configs, the bench scenarios, the report's
descriptions, the page's sampler list) comes from these registrations.

Nothing registers at import: :func:`registered` does it and undoes it, so the toy is in no other test's family list.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter
from fastapi.responses import Response
from torch import nn
from torch.nn import functional as F

from app.api.deps import ServingDep
from app.api.routes import register_router, unregister_router
from app.api.routes.generate import IMAGE_RESPONSES, sample_unconditional
from app.models.checkpoint import Checkpoint, save_checkpoint
from app.models.pipelines import SAMPLE, BenchRequest, build_pipeline, register_pipeline, unregister_pipeline
from app.models.pipelines.unconditional import NoisePipeline
from app.models.preprocess import PreprocessSpec
from app.models.registry import FamilyModule, register_family, unregister_family
from app.schemas import GenerateRequest
from training.data import load_split
from training.evaluation import EVALUATORS, load_eval_split, register_evaluator
from training.registry import TRAINERS, register_trainer

FAMILY = "toy"
SUMMARY = "one-layer toy generator: samples that learn the mean face"
TINY = {"latent_dim": 4, "image_size": 8}
RECIPE = """\
family = "toy"
latent-dim = 4     # a handful of inputs is enough to vary the samples
image-size = 8     # the smallest size the shared preprocessing serves
steps = 1          # one step: the test checks that a step is taken, not what it reaches
lr = 0.05          # large, so one step moves the mean face measurably
"""


# ---- model --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyConfig:
    latent_dim: int = 16  # noise inputs
    image_size: int = 16  # side of the square RGB output


class ToyGenerator(FamilyModule):
    """One linear layer from noise to every pixel, squashed into [-1, 1]."""

    config_class = ToyConfig

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.layer = nn.Linear(config.latent_dim, 3 * config.image_size**2)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.latent_dim,)

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        return torch.tanh(self.layer(noise)).view(-1, 3, size, size)


# ---- pipeline (sampling from noise is what DCGAN's pipeline already does) ------------------------------------------
class ToyPipeline(NoisePipeline):
    model: ToyGenerator  # type: ignore[assignment]


# ---- route --------------------------------------------------------------------------------------------------------
router = APIRouter(prefix="/generate", tags=["generate"])


@router.post(f"/{FAMILY}", responses=IMAGE_RESPONSES, response_class=Response)
async def generate_toy(request: GenerateRequest, serving: ServingDep) -> Response:
    """``n`` toy samples."""
    return await sample_unconditional(FAMILY, request, serving)


# ---- trainer ------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="CelebA folder in the official layout")
    parser.add_argument("--out", required=True, help="the checkpoint to write")
    parser.add_argument("--run-dir", help="the run folder (`python -m training run` gives one)")
    parser.add_argument("--latent-dim", type=int, default=ToyConfig.latent_dim)
    parser.add_argument("--image-size", type=int, default=ToyConfig.image_size)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)


def mean_face_error(images: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Squared distance between the mean of ``images`` and the mean real face: what the toy learns to shrink."""
    return F.mse_loss(images.mean(0), real.mean(0))


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    spec = PreprocessSpec(size=args.image_size)
    split = load_split(args.data, "train", spec, cache_dir=None)
    model = ToyGenerator(ToyConfig(latent_dim=args.latent_dim, image_size=args.image_size))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses = []
    for _ in range(args.steps):
        real, _ = split.batch(torch.randint(len(split), (args.batch_size,)))
        loss = mean_face_error(model.generate(torch.randn(args.batch_size, args.latent_dim)), real)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    recipe = getattr(args, "recipe", None)
    training = {"steps": args.steps, "losses": losses, **({"recipe": recipe} if recipe else {})}
    save_checkpoint(args.out, model, preprocess=spec, attributes=split.attribute_names, training=training)


# ---- evaluator ----------------------------------------------------------------------------------------------------
def evaluate_toy(checkpoint: Checkpoint, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """The mean-face error of 64 samples drawn through the pipeline, as the service draws them."""
    split = load_eval_split(checkpoint, args)
    real, _ = split.batch(torch.arange(len(split)))
    samples = build_pipeline(checkpoint).sample(64, args.seed)
    return {"mean_face_mse": float(mean_face_error(samples, real))}


# ---- registration: the one place ----------------------------------------------------------------------------------
@contextlib.contextmanager
def registered() -> Iterator[None]:
    """The toy family in every registry while the block runs; gone after it."""
    undo: list[Callable[[], None]] = []
    try:
        register_family(FAMILY, summary=SUMMARY, tiny=TINY)(ToyGenerator)
        undo.append(lambda: unregister_family(FAMILY))
        register_pipeline(FAMILY, SAMPLE, bench=BenchRequest(f"/generate/{FAMILY}", rows=4))(ToyPipeline)
        undo.append(lambda: unregister_pipeline(FAMILY))
        register_router(router)
        undo.append(lambda: unregister_router(router))
        register_trainer(FAMILY, add_arguments)(train)
        undo.append(lambda: TRAINERS.pop(FAMILY, None))
        register_evaluator(FAMILY, metrics=("mean_face_mse",))(evaluate_toy)
        undo.append(lambda: EVALUATORS.pop(FAMILY, None))
        yield
    finally:
        for step in reversed(undo):
            step()
