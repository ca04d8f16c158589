"""The project's CelebA attribute classifier: the evaluator of conditional models and the model behind ``/classify``.

A compact CNN sized to train on one CPU core: per stage a 3x3 stride-2 conv (then optionally more 3x3 stride-1
convs), each with BatchNorm and ReLU, then global average pooling, dropout and one linear layer giving a logit per
attribute (multi-label: the attributes are independent yes/no questions, trained with BCE). Images live in [-1, 1];
the attribute order is the checkpoint's ``attributes`` (CelebA's own order for the 40 names).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .registry import FamilyModule, register_family


@dataclass(frozen=True)
class ClassifierConfig:
    image_size: int = 64  # side of the square RGB inputs it was trained on (pooling accepts other sizes)
    widths: tuple[int, ...] = (32, 64, 128, 256)  # channels per stage; each stage halves the resolution
    convs_per_stage: int = 1  # 3x3 convs per stage: the stride-2 one plus (convs_per_stage - 1) stride-1 ones
    num_attributes: int = 40  # outputs: one logit per attribute, in the checkpoint's `attributes` order
    dropout: float = 0.2  # dropout on the pooled features before the linear head


def _conv_block(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


@register_family(
    "classifier",
    summary="CelebA 40-attribute classifier: judges the generators' samples and serves /classify",
    tiny={"image_size": 16, "widths": [4, 8], "num_attributes": 40, "dropout": 0.0},
)
class AttributeClassifier(FamilyModule):
    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        if not config.widths:
            raise ValueError("widths must name at least one stage")
        if config.image_size < 2 ** len(config.widths):
            raise ValueError(f"image_size {config.image_size} cannot halve {len(config.widths)} times")
        if config.convs_per_stage < 1 or config.num_attributes < 1 or not 0 <= config.dropout < 1:
            raise ValueError("convs_per_stage and num_attributes must be >= 1 and dropout in [0, 1)")

        layers: list[nn.Module] = []
        channels = 3
        for width in config.widths:
            layers += _conv_block(channels, width, 2)
            for _ in range(config.convs_per_stage - 1):
                layers += _conv_block(width, width, 1)
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(channels, config.num_attributes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> logits (N, num_attributes)."""
        return self.head(self.features(images))

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> P(attribute present), (N, num_attributes) in [0, 1]."""
        return torch.sigmoid(self(images))
