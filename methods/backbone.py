"""The shared encoder factory: a timm backbone plus a projection head, identical for every method.

The backbone's global pooling is the protocol's (`model.pooling`): timm's average pooling, or GeM
(generalized mean, p = 3; Radenović et al. 2018, SSCD's and the ISC 2021 winner's pooling),
(mean over positions of x^p)^(1/p), which weights the strongest activations more than the mean
does. GeM assumes non-negative features (ReLU CNNs); like SSCD's, it clamps them at 1e-6 first.
"""

from __future__ import annotations

import timm
import torch
from lightly.models.modules import MoCoProjectionHead, SimCLRProjectionHead
from torch import nn

from harness.errors import ConfigError
from harness.weights import load_weights, published_backbone, published_identity
from methods.base import MethodContext

POOLINGS = ("avg", "gem")
GEM_P = 3.0  # SSCD's and the ISC 2021 winner's (training) exponent, fixed, not learned


class GeMPooled(nn.Module):
    """A timm trunk without its pooling, followed by GeM pooling over its (B, C, H, W) map."""

    def __init__(self, trunk: nn.Module, name: str, p: float = GEM_P, eps: float = 1e-6):
        super().__init__()
        self.trunk = trunk
        self.name = name
        self.p = p
        self.eps = eps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.trunk(images)
        if features.ndim != 4:
            raise ConfigError(
                f"model.pooling=gem needs a backbone whose features are a (B, C, H, W) map; "
                f"{self.name} gives shape {tuple(features.shape)}; use model.pooling=avg"
            )
        # float32: x^3 of fp16 activations above ~40 would overflow under mixed precision
        cubes = features.float().clamp(min=self.eps).pow(self.p)
        return cubes.mean(dim=(-2, -1)).pow(1.0 / self.p).to(features.dtype)


def build_backbone(context: MethodContext) -> tuple[nn.Module, int]:
    """`timm.create_model(context.backbone, num_classes=0)` and its feature width, starting from
    the protocol's weights (harness/weights.py); with `context.pooling` "gem" the trunk keeps its
    feature map and GeM pools it. The trunk's `loaded_weights` says what it was loaded from."""
    if context.pooling not in POOLINGS:
        raise ConfigError(f"model.pooling must be one of {POOLINGS}, got {context.pooling!r}")
    pool = {} if context.pooling == "avg" else {"global_pool": ""}
    try:
        if context.pretrained and timm.is_model(context.backbone):  # unknown: the error below
            model = published_backbone(context.backbone, num_classes=0, **pool)
        else:
            model = timm.create_model(context.backbone, pretrained=False, num_classes=0, **pool)
    except RuntimeError as err:  # timm raises RuntimeError("Unknown model ...")
        raise ConfigError(f"backbone: unknown timm model {context.backbone!r} ({err})") from None
    # Loaded here, into every backbone a method builds, so that a second encoder (MoCo's copy,
    # QK's key side) starts from the same weights as the first.
    if context.weights is not None:
        model.loaded_weights = load_weights(
            model, context.weights, strict=context.weights_strict, backbone=context.backbone
        )
    elif context.pretrained:
        model.loaded_weights = published_identity(model)
    width = int(model.num_features)
    if context.pooling == "gem":
        model = GeMPooled(model, context.backbone)
    return model, width


def build_head(
    input_dim: int, output_dim: int, *, hidden_dim: int | None = None, batch_norm: bool = False
) -> nn.Module:
    """Two-layer MLP projection head (lightly's), with BatchNorm after the hidden layer if asked.

    Why the protocol asks for it (`model.head_batch_norm`): a randomly initialised ResNet gives
    every image nearly the same embedding (mean cosine 0.98 between training images on the
    mini-DISC), so at first all logits of a contrastive loss are alike and the large-bank methods
    barely move in a short budget; the head's BatchNorm centres the embeddings from step 0.
    The price: the head's output depends on batch statistics, per rank under multi-process
    training (as the backbone's BatchNorm already does) and, for QK's trainable frozen-side head,
    per chunk of the bank when the whole bank does not fit `head_memory_mb` (methods/losses.py)."""
    hidden_dim = hidden_dim or input_dim
    if batch_norm:
        return SimCLRProjectionHead(input_dim, hidden_dim, output_dim, batch_norm=True)
    return MoCoProjectionHead(input_dim, hidden_dim, output_dim)


def build_linear_head(input_dim: int, output_dim: int, *, batch_norm: bool = False) -> nn.Module:
    """One linear layer (SSCD's projection); with the protocol's head BatchNorm, a bias-free
    linear layer followed by BatchNorm (the ISC 2021 winner's head), which centres the
    embeddings as the MLP head's BatchNorm does (see `build_head`)."""
    if batch_norm:
        return nn.Sequential(
            nn.Linear(input_dim, output_dim, bias=False), nn.BatchNorm1d(output_dim)
        )
    return nn.Linear(input_dim, output_dim)


PROJECTIONS = ("mlp", "linear")


class Encoder(nn.Module):
    """Backbone followed by a projection head; `forward` returns L2-normalized embeddings."""

    def __init__(self, context: MethodContext, projection: str = "mlp"):
        super().__init__()
        check_embedding_dim(context)
        if projection not in PROJECTIONS:  # the methods name the option in their own message
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.backbone, self.feature_dim = build_backbone(context)
        build = build_head if projection == "mlp" else build_linear_head
        self.head = build(
            self.feature_dim, context.embedding_dim, batch_norm=context.head_batch_norm
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(self.backbone(images)), dim=1)


def check_embedding_dim(context: MethodContext) -> None:
    if context.embedding_dim < 1:
        raise ConfigError(f"embedding_dim must be >= 1, got {context.embedding_dim}")


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze: the trainer's optimizer skips parameters whose .grad is None."""
    for param in module.parameters():
        param.requires_grad_(trainable)
        if not trainable:
            param.grad = None
