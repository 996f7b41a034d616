"""The shared encoder factory: a timm backbone plus a projection head, identical for every method."""

from __future__ import annotations

import timm
import torch
from lightly.models.modules import MoCoProjectionHead, SimCLRProjectionHead
from torch import nn

from harness.errors import ConfigError
from methods.base import MethodContext


def build_backbone(context: MethodContext) -> tuple[nn.Module, int]:
    """`timm.create_model(context.backbone, pretrained=False, num_classes=0)` and its feature width."""
    try:
        model = timm.create_model(context.backbone, pretrained=False, num_classes=0)
    except RuntimeError as err:  # timm raises RuntimeError("Unknown model ...")
        raise ConfigError(f"backbone: unknown timm model {context.backbone!r} ({err})") from None
    return model, int(model.num_features)


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


class Encoder(nn.Module):
    """Backbone followed by a projection head; `forward` returns L2-normalized embeddings."""

    def __init__(self, context: MethodContext):
        super().__init__()
        check_embedding_dim(context)
        self.backbone, self.feature_dim = build_backbone(context)
        self.head = build_head(
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
