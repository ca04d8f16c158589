"""The pipeline interface (diffusers' habit): the model plus everything needed to go from a request's plain inputs
to outputs.

A pipeline does two things, kept apart so that a batcher can sit between them:

* ``prepare_*`` turns plain inputs (n, seed, attributes, code, temperature, uploaded images) into a
  :class:`Prepared`: the tensors of one request, on the CPU, every one with the request's rows as its first
  dimension. All random draws happen here, from the request's own seeded CPU generator, in an order written once in
  code, so a request gives the same inputs whatever batch or device it later runs in.
* ``run(operation, inputs)`` runs one batched forward over inputs that may be the concatenation of many requests'
  and returns outputs with the same rows, so a batcher can split them back. Operations are row-wise: row i of the
  output depends only on row i of the inputs.

Routes, ``training evaluate``, the benchmark and the tests all go through pipelines; nothing else draws noise or
calls a model's forward for serving.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

from ..attributes import AttributeDraw
from ..checkpoint import Checkpoint, CheckpointError
from ..registry import FamilyModule

Tensors = tuple[torch.Tensor, ...]

# What a family can do; code that needs "every sampling family" asks for a capability, never for a list of names.
SAMPLE = "sample"  # draws new images from a seed (POST /generate/<family>)
ENCODE = "encode"  # maps uploaded images to latents and back
SCORE = "score"  # scores uploaded images (attribute probabilities, bits per dimension)
CAPABILITIES = (SAMPLE, ENCODE, SCORE)

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class BenchRequest:
    """The HTTP request that benchmarks a family: ``bench/scenarios.py`` makes one scenario of each registered one, so
    a new family is benchmarked without a list to edit there. JSON bodies are ``fields`` plus ``count_field: rows``
    and ``seed``; without a ``count_field`` the request uploads one face instead."""

    path: str  # e.g. "/generate/dcgan"
    rows: int = 1  # images (InfoGAN: sweeps, a row of images) one request asks for: what images/s counts
    count_field: str | None = "n"  # the body field that asks for ``rows`` images; None: an upload
    fields: Mapping[str, Any] = field(default_factory=dict)  # the body's other fixed fields
    capability: str = SAMPLE  # the card capability a served model needs for the scenario to run
    name: str = ""  # the scenario's name; empty: the family's
    expect: str = "image/png"  # the Content-Type a 200 must have to count
    max_rows: int | None = None  # the most rows one request may ask for, where below the benchmark's large request


@dataclass
class Prepared:
    """One request's model inputs for ``operation`` (CPU tensors sharing their first dimension) and, for the
    conditional samplers, the attribute vectors drawn, which the response reports beside the images."""

    operation: str
    inputs: Tensors
    attribute_draw: AttributeDraw | None = None  # per image, the full attribute vector used, and any warning

    def drawn_attributes(self) -> AttributeDraw:
        """The attribute vectors drawn for the images (only a conditional sampler's samples carry them)."""
        if self.attribute_draw is None:
            raise ValueError(f"a prepared {self.operation!r} request draws no attributes")
        return self.attribute_draw

    @property
    def rows(self) -> int:
        return int(self.inputs[0].shape[0])


def finite_images(images: torch.Tensor) -> torch.Tensor:
    """Images safe to encode: NaN becomes mid-grey and infinities the range's ends, then [-1, 1]. A flow decoding a
    latent far off its training distribution can overflow; a black or garbage frame must never be what comes back
    silently, and the clamp makes the PNG exact for in-range pixels."""
    return torch.nan_to_num(images.float(), nan=0.0, posinf=1.0, neginf=-1.0).clamp_(-1.0, 1.0)


def implausible_images(outputs: Tensors) -> str | None:
    """Why a warm-up's outputs cannot be served, or None. Checks the image outputs ((N, 3, H, W) floats in [-1, 1]):
    finite, no image a single flat colour, and not saturated. A checkpoint whose tensors were scaled (tampered or
    broken, but finite) drives tanh outputs to +-1: over 99 % of their pixels, where trained models have under 4 %
    (and even untrained tiny test models under 60 %)."""
    for output in outputs:
        if not output.is_floating_point():
            continue
        if not torch.isfinite(output).all():
            return "non-finite outputs"
        if output.dim() != 4 or output.shape[1] != 3:
            continue
        flat = output.flatten(1)
        if (flat.std(dim=1) < 1e-6).any():
            return "a constant image (every pixel the same)"
        saturated = float((flat.abs() > 0.99).float().mean())
        if saturated > 0.9:
            return f"saturated images ({saturated:.0%} of pixels at -1 or +1): are the weights scaled?"
    return None


class Pipeline:
    """Base class: subclasses set ``family`` and ``capabilities`` (via :func:`register_pipeline`) and implement
    :meth:`operations` and :meth:`warmup`. A subclass narrows ``model`` to its family's module class with a class-level
    annotation (the registry guarantees that is what a checkpoint of its family holds)."""

    model: FamilyModule
    family: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    # Whether autocast may run this family's forwards in bfloat16/float16. A flow's log-determinants and its exact
    # inverse need float32, so Glow says no.
    reduced_precision: ClassVar[bool] = True

    def __init__(self, checkpoint: Checkpoint, precision: str = "float32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.precision = precision
        self.validate()

    # ---- what a family supplies ----------------------------------------------------------------------------------
    def validate(self) -> None:
        """Refuse (:class:`CheckpointError`) a checkpoint this pipeline cannot serve; called once, at load."""

    def operations(self) -> dict[str, Callable[..., Any]]:
        """Operation name -> batched forward over device tensors, returning a tensor or a tuple of tensors whose
        first dimension is the inputs' rows."""
        raise NotImplementedError

    def warmup(self) -> Prepared:
        """A small request run once at start-up, so the first user does not pay for lazy initialisation."""
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        tensor: torch.Tensor | None = next(iter(self.model.parameters()), None)
        if tensor is None:
            tensor = next(iter(self.model.buffers()))
        return tensor.device

    @property
    def attributes(self) -> list[str]:
        return self.checkpoint.attributes

    def run(self, operation: str, inputs: Tensors) -> Tensors:
        """One batched forward of ``operation`` on the model's device; CPU outputs (float32 for floating point)."""
        forward = self.operations().get(operation)
        if forward is None:
            raise ValueError(f"{self.family} has no operation {operation!r}; it has {sorted(self.operations())}")
        device = self.device
        with torch.inference_mode(), self.autocast(device):
            outputs = forward(*(tensor.to(device, non_blocking=True) for tensor in inputs))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return tuple(output.float().cpu() if output.is_floating_point() else output.cpu() for output in outputs)

    def __call__(self, prepared: Prepared) -> Tensors:
        """Run one prepared request directly (no batcher): what offline callers use."""
        return self.run(prepared.operation, prepared.inputs)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.precision == "float32" or not self.reduced_precision:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=PRECISIONS[self.precision])

    def sample(self, n: int, seed: int, **options: Any) -> torch.Tensor:
        """Images of a sampling family's ``prepare_samples(n, seed, **options)``, run directly."""
        if SAMPLE not in self.capabilities:
            raise ValueError(f"{self.family} does not sample")
        return self(self.prepare_samples(n, seed, **options))[0]

    def prepare_samples(self, n: int, seed: int, *args: Any, **options: Any) -> Prepared:
        """A sampling family's request: ``n`` and ``seed``, then the family's own options (its override's signature)."""
        raise NotImplementedError(f"{self.family} does not sample")

    def check_attributes_match_outputs(self, count: int, what: str) -> None:
        """A checkpoint must name exactly the attributes its model has inputs or outputs for."""
        if len(self.attributes) != count:
            raise CheckpointError(
                f"the {self.family} checkpoint names {len(self.attributes)} attributes for a model "
                f"with {count} {what}; it cannot be served"
            )


_PIPELINES: dict[str, type[Pipeline]] = {}
_BENCH: dict[str, BenchRequest] = {}
PipelineT = TypeVar("PipelineT", bound=type[Pipeline])


def register_pipeline(
    family: str, *capabilities: str, bench: BenchRequest | None = None
) -> Callable[[PipelineT], PipelineT]:
    """Class decorator: ``cls`` is the pipeline of ``family`` and can do ``capabilities``; ``bench`` is the request
    the benchmark measures it with (None: not benchmarked)."""
    unknown = set(capabilities) - set(CAPABILITIES)
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {CAPABILITIES}")

    def decorate(cls: PipelineT) -> PipelineT:
        if family in _PIPELINES:
            raise ValueError(f"pipeline of {family!r} is registered twice")
        cls.family = family
        cls.capabilities = frozenset(capabilities)
        _PIPELINES[family] = cls
        if bench is not None:
            add_bench_request(family, bench)
        return cls

    return decorate


def add_bench_request(family: str, bench: BenchRequest) -> None:
    """Benchmark family ``family`` with ``bench`` (what :func:`register_pipeline`'s ``bench`` does)."""
    capabilities = pipeline_class(family).capabilities
    if bench.capability not in capabilities:
        raise ValueError(f"{family} cannot be benchmarked for {bench.capability!r}: it can do {sorted(capabilities)}")
    _BENCH[family] = bench


def bench_requests() -> dict[str, BenchRequest]:
    """Family -> the request that benchmarks it, for every family registered with one, sorted by family."""
    return dict(sorted(_BENCH.items()))


def unregister_pipeline(family: str) -> None:
    """Forget the pipeline of ``family`` and its bench request (a test's toy family, once the test is done)."""
    _PIPELINES.pop(family, None)
    _BENCH.pop(family, None)


def pipeline_class(family: str) -> type[Pipeline]:
    try:
        return _PIPELINES[family]
    except KeyError:
        raise CheckpointError(f"no pipeline serves family {family!r}; pipelines: {sorted(_PIPELINES)}") from None


def families_with(capability: str) -> list[str]:
    """Registered families that can do ``capability``, sorted."""
    return sorted(name for name, cls in _PIPELINES.items() if capability in cls.capabilities)


def build_pipeline(checkpoint: Checkpoint, precision: str = "float32") -> Pipeline:
    return pipeline_class(checkpoint.family)(checkpoint, precision)
