"""A detector of pixel-noise artefacts in generated frames: blocks of multicoloured speckles.

A flow's inverse amplifies a latent that is slightly off the faces' distribution; what comes out is not a darker or
blurrier face but patches of pixel-scale noise whose colours change from one pixel to the next (around the mouth and
eyes, where edits push hardest). Real photos at 64x64 have sharp luminance detail (hair, eyelashes, glasses' frames),
but their colour varies smoothly: cameras and JPEG subsample colour. So the detector measures *colour* noise only:

1. the residual of each channel against its 3x3 median (what a pixel differs from its neighbourhood by);
2. its chromatic part (the residual minus its mean over the three channels), summed in absolute value over channels;
3. averaged over blocks of ``BLOCK`` x ``BLOCK`` pixels (stride 2), and the frame's score is its worst block.

A frame fails where its score exceeds an absolute ceiling that no real face reaches, or, for a frame derived from a
reference (an edit of an upload, a frame of an interpolation), where it exceeds the reference's own score by more
than a margin: the edit added colour noise that the face did not have. Both limits are model-independent properties
of images; they are set from real faces (the ceiling) and from speckled and clean edits kept as test fixtures in
``tests/data/artefacts`` (the margin). A Glow checkpoint carries the limits its service applies (extra
:data:`ARTEFACT_LIMITS_KEY`, written by ``python -m training calibrate-glow`` once its own reconstructions of training
faces are checked to pass); one without them is served with the divergence check alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ARTEFACT_LIMITS_KEY = "artefact_limits"  # checkpoint extra: (2,) the ceiling and the margin
BLOCK = 6  # pixels per side of the blocks the colour noise is averaged over: about an eye or the corner of a mouth


@dataclass(frozen=True)
class ArtefactLimits:
    # Over the 780 validation faces of celeba-mini the worst block scores at most 0.22 (median 0.08): 0.30 leaves
    # every real face a margin and catches the frames that are mostly noise.
    ceiling: float = 0.30
    # Clean edits of the fixtures add at most 0.067 to their reconstruction's score (glasses put on: 0.046); the
    # speckled ones add 0.075 to 1.05. A narrow gap: the fixtures' tests hold it.
    margin: float = 0.07

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.ceiling, self.margin])

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> ArtefactLimits:
        if values.shape != (2,) or not bool((torch.isfinite(values) & (values > 0)).all()):
            raise ValueError(f"artefact limits must be 2 positive numbers (ceiling, margin), got {values.tolist()}")
        ceiling, margin = values.tolist()
        return cls(ceiling, margin)


def colour_noise(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) images in [-1, 1] -> (N,) the worst block's mean chromatic residual (see the module's text)."""
    images = images.float()
    n, channels, height, width = images.shape
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    neighbourhoods = F.unfold(padded, 3).view(n, channels, 9, height, width)
    residual = images - neighbourhoods.median(dim=2).values
    chromatic = (residual - residual.mean(dim=1, keepdim=True)).abs().sum(dim=1, keepdim=True)
    block = min(BLOCK, height, width)
    return F.avg_pool2d(chromatic, block, stride=2).flatten(1).amax(dim=1)


def speckled(
    images: torch.Tensor, reference_scores: torch.Tensor | None = None, limits: ArtefactLimits = ArtefactLimits()
) -> torch.Tensor:
    """(N,) bool: which images carry pixel-noise artefacts. ``reference_scores`` ((N,) or one number, broadcast) are
    the :func:`colour_noise` of the frames they were derived from: an image fails where it adds more than the margin
    to its reference, or passes the ceiling that its reference stays under (a photo noisier than any face does not
    sink every edit of it). Without references only the ceiling applies. Non-finite pixels count as artefacts."""
    scores = colour_noise(torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=-1.0))
    if reference_scores is None:
        limit = torch.full_like(scores, limits.ceiling)
    else:
        reference = reference_scores.to(scores).expand_as(scores)
        relative = reference + limits.margin
        limit = torch.where(reference > limits.ceiling, relative, relative.clamp(max=limits.ceiling))
    return (scores > limit) | ~torch.isfinite(images.flatten(1)).all(dim=1)
