"""`none`: the backbone as initialised, untrained; the reference row of every table."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from methods.backbone import build_backbone
from methods.base import Method, MethodConfig, MethodContext
from methods.registry import register_method

PROJECTIONS = ("random", "identity")


@dataclass
class NoneConfig(MethodConfig):
    # Our choice: backbone features are wider than the ISC limit (512 for resnet18), so by default
    # a fixed Gaussian random projection (drawn from the run seed, saved with the model) maps them
    # to embedding_dim; "identity" keeps the raw pooled features.
    projection: str = "random"


@register_method("none", NoneConfig, display_name="untrained backbone")
class NoTraining(Method):
    """No training: the backbone as initialised (random, or model.weights / model.pretrained) plus a
    fixed random projection, as the descriptor."""

    views_per_image = 0

    def __init__(self, config: NoneConfig, context: MethodContext):
        super().__init__(config, context)
        if config.projection not in PROJECTIONS:
            raise ConfigError(
                f"none.projection must be one of {PROJECTIONS}, got {config.projection!r}"
            )
        self.backbone, feature_dim = build_backbone(context)
        if config.projection == "random":
            generator = context.generator("none.projection")
            matrix = torch.randn(feature_dim, context.embedding_dim, generator=generator)
            self.register_buffer("projection", matrix / context.embedding_dim**0.5)
        else:
            self.projection = None

    def trains(self) -> bool:
        return False

    def training_step(self, batch, step):
        raise RuntimeError(
            "the `none` method is not trained; the trainer must skip it (trains() is False)"
        )

    @torch.no_grad()
    def describe(self, images, role):
        features = self.backbone(images)
        if self.projection is not None:
            features = features @ self.projection
        return F.normalize(features.float(), dim=1)

    def negatives_per_step(self, batch_size: int | None = None) -> int:
        return 0
