"""Attribute conditions shared by every attribute-aware family (ACGAN, Glow).

A request names some attributes (``{"Male": true}``); the others are *open*, and each image draws them with the
request's seed. CelebA's attributes are strongly correlated (under 2 % of its men wear lipstick, half of its women
do), so open attributes drawn one by one from their frequencies ask the model for faces no one has. A checkpoint that
carries its training faces' label vectors (tensor ``extra.label_vectors``, 1 bit per attribute, packed) draws them
jointly instead (:class:`JointAttributes`): each image takes the whole vector of a training face that has every
requested value, so the open attributes follow CelebA's joint distribution conditioned on the request. A combination
that fewer than ``MIN_MATCHES`` training faces have is served from the faces nearest to it on the requested
attributes, the requested values kept, with a warning. A checkpoint without the vectors keeps the old independent
draw from the training frequencies (``extra.attribute_frequencies``, :class:`IndependentAttributes`). The full
vector used is reported back either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch

FREQUENCIES_KEY = "attribute_frequencies"
LABEL_VECTORS_KEY = "label_vectors"
# Fewer training faces than this with the requested values, and the draw widens to the nearest ones: a handful of
# faces would repeat their few vectors in every image (and a combination no face has cannot be drawn at all).
MIN_MATCHES = 20


class InvalidRequest(ValueError):
    """A request the model cannot serve as asked (e.g. an attribute it was not trained on). The service answers 422
    naming ``field``; offline callers get an ordinary ValueError."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class AttributeSourceError(ValueError):
    """Label vectors or frequencies in a checkpoint that do not fit its attributes (the loader refuses the file)."""


def check_attribute_names(names: list[str], valid: list[str], field: str = "attributes") -> None:
    """:class:`InvalidRequest` listing the valid names when any requested name is not one the model was trained on."""
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise InvalidRequest(field, f"unknown or untrained attribute(s) {unknown}; valid: {valid}")


def resolve_attributes(
    requested: dict[str, bool], valid: list[str], frequencies: torch.Tensor | None, n: int, generator: torch.Generator
) -> torch.Tensor:
    """(n, len(valid)) 0/1 float matrix on the CPU: requested values fixed, others ~ Bernoulli(training frequency),
    independently. What a checkpoint without label vectors serves, and the Glow's fixed likelihood draws."""
    check_attribute_names(list(requested), valid)
    probabilities = frequencies.float().cpu() if frequencies is not None else torch.full((len(valid),), 0.5)
    vectors = (torch.rand((n, len(valid)), generator=generator) < probabilities).float()
    for name, value in requested.items():
        vectors[:, valid.index(name)] = float(value)
    return vectors


# --- label vectors, packed ------------------------------------------------------------------------------------------


def pack_label_vectors(labels: torch.Tensor) -> torch.Tensor:
    """(N, A) 0/1 labels -> (N, ceil(A / 8)) uint8: attribute k is bit ``7 - k % 8`` of byte ``k // 8`` (numpy's
    ``packbits`` order); the padding bits of the last byte are 0. CelebA's 14,283 training faces take 71 KB."""
    if labels.dim() != 2:
        raise ValueError(f"labels must be (faces, attributes), got shape {tuple(labels.shape)}")
    bits = labels.to(torch.bool)
    padding = -bits.shape[1] % 8
    bits = torch.cat([bits, bits.new_zeros(bits.shape[0], padding)], 1).view(bits.shape[0], -1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
    return (bits.to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


def unpack_label_vectors(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The inverse of :func:`pack_label_vectors`: (N, ceil(count / 8)) bytes -> (N, count) bool.

    Checkpoint extras load as float, so ``packed`` may be float; anything that is not N rows of whole bytes, or that
    sets a padding bit, is refused (:class:`AttributeSourceError`)."""
    expected = (count + 7) // 8
    if packed.dim() != 2 or packed.shape[1] != expected or packed.shape[0] == 0:
        raise AttributeSourceError(
            f"{LABEL_VECTORS_KEY} must be (faces, {expected}) packed bytes for {count} attributes, "
            f"got shape {tuple(packed.shape)}"
        )
    values = packed.cpu()
    if values.is_floating_point() and not bool(((values >= 0) & (values <= 255) & (values == values.round())).all()):
        raise AttributeSourceError(f"{LABEL_VECTORS_KEY} holds values that are not bytes (0..255)")
    values = values.to(torch.int64)
    if not bool(((values >= 0) & (values <= 255)).all()):
        raise AttributeSourceError(f"{LABEL_VECTORS_KEY} holds values that are not bytes (0..255)")
    shifts = torch.arange(7, -1, -1)
    bits = ((values[..., None] >> shifts) & 1).flatten(1).to(torch.bool)
    if bits[:, count:].any():
        raise AttributeSourceError(f"{LABEL_VECTORS_KEY} sets bits beyond its {count} attributes")
    return bits[:, :count]


# --- the draw -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeDraw:
    """``vectors`` (n, A) 0/1 float on the CPU, and why they may not be what was asked (``warning``), else None."""

    vectors: torch.Tensor
    warning: str | None = None


class AttributeSource(Protocol):
    """How a checkpoint draws the attributes a request leaves open."""

    joint: bool  # whether open attributes follow the training faces' joint distribution

    def draw(self, requested: dict[str, bool], n: int, generator: torch.Generator) -> AttributeDraw: ...


@dataclass(frozen=True)
class IndependentAttributes:
    """Each open attribute ~ Bernoulli(its training frequency), independently: checkpoints without label vectors."""

    names: list[str]
    frequencies: torch.Tensor | None
    joint = False

    def draw(self, requested: dict[str, bool], n: int, generator: torch.Generator) -> AttributeDraw:
        return AttributeDraw(resolve_attributes(requested, self.names, self.frequencies, n, generator))


@dataclass(frozen=True)
class JointAttributes:
    """Open attributes from the label vector of a training face: one uniform draw per image among the faces with
    every requested value, or, when fewer than ``MIN_MATCHES`` have them, among the nearest faces (fewest requested
    values differing, widened until ``MIN_MATCHES``), their vectors then given the requested values."""

    names: list[str]
    labels: torch.Tensor  # (faces, A) bool, the training faces' label vectors
    joint = True

    def draw(self, requested: dict[str, bool], n: int, generator: torch.Generator) -> AttributeDraw:
        check_attribute_names(list(requested), self.names)
        columns = torch.tensor([self.names.index(name) for name in requested], dtype=torch.long)
        wanted = torch.tensor([float(value) for value in requested.values()])
        # (faces,) how many requested values each face lacks: sum of x + w - 2xw over the requested columns, as one
        # product (a request naming all 40 attributes is a few milliseconds over CelebA's training faces)
        differing = (self.numeric.index_select(1, columns) @ (1 - 2 * wanted) + wanted.sum()).round().long()
        pool = torch.nonzero(differing == 0).flatten()
        warning = None
        if len(pool) < MIN_MATCHES:
            # The smallest distance that reaches MIN_MATCHES faces: every face at most that far is in the pool.
            found = len(pool)
            reach = int(differing.kthvalue(min(MIN_MATCHES, len(differing))).values)
            pool = torch.nonzero(differing <= reach).flatten()
            asked = ", ".join(f"{name}={str(value).lower()}" for name, value in requested.items())
            warning = (
                f"{found} of the {len(self.labels)} training faces have {asked} (fewer than {MIN_MATCHES}): "
                f"the other attributes were drawn from the {len(pool)} faces that differ from it on at most "
                f"{reach} requested attribute(s), and the requested values kept"
            )
        picks = pool[torch.randint(len(pool), (n,), generator=generator)]
        vectors = self.numeric[picks]
        vectors[:, columns] = wanted
        return AttributeDraw(vectors, warning)

    @cached_property
    def numeric(self) -> torch.Tensor:
        """The label vectors as 0/1 floats, converted once."""
        return self.labels.float()


def attribute_source(names: list[str], extras: dict[str, torch.Tensor]) -> AttributeSource:
    """The draw a checkpoint's extras allow: joint from its label vectors, else independent from its frequencies.
    Refuses (:class:`AttributeSourceError`) label vectors or frequencies that do not fit ``names``."""
    frequencies = extras.get(FREQUENCIES_KEY)
    if frequencies is not None and tuple(frequencies.shape) != (len(names),):
        raise AttributeSourceError(
            f"{FREQUENCIES_KEY} must hold one frequency per attribute ({len(names)}), "
            f"got shape {tuple(frequencies.shape)}"
        )
    packed = extras.get(LABEL_VECTORS_KEY)
    if packed is None:
        return IndependentAttributes(list(names), None if frequencies is None else frequencies.float().cpu())
    return JointAttributes(list(names), unpack_label_vectors(packed, len(names)))
