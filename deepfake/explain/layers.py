"""Where a CAM looks: the target layer per timm family and the reshape of token activations.

pytorch-grad-cam wants a (B, C, h, w) map at the target layer. CNNs give one directly; CvT and
ViT-like models give (B, tokens, C), which the reshape transform turns into a map by dropping the
cls / register tokens and laying the rest out on the patch grid; Swin gives (B, h, w, C), whose
channels the transform moves first.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deepfake.errors import ConfigError
from deepfake.models import cvt

# Families whose last feature stage (timm's feature_info) is not the best CAM layer: EfficientNet
# ends with a 1x1 conv_head + bn2 on the same grid, the map the classifier actually pools.
_FAMILY_LAYERS = {"EfficientNet": "bn2"}


def module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def default_target_layer(model: nn.Module) -> str:
    """The dotted name of the layer whose map a CAM should weigh, chosen by family."""
    if isinstance(model, cvt.CvT):
        return module_name(model, cvt.gradcam_target_layer(model))
    family = type(model).__name__
    if family in _FAMILY_LAYERS:
        return _FAMILY_LAYERS[family]
    if _is_vit_like(model):
        # The head reads the cls token after the last block, whose output therefore carries no
        # gradient to the patch tokens; before that block's attention the patch tokens still matter.
        return f"blocks.{len(model.blocks) - 1}.norm1"
    feature_info = getattr(model, "feature_info", None)
    if feature_info:
        return feature_info[-1]["module"]
    raise ConfigError(
        f"no default CAM layer for {family}; pass cam.target_layer=<module name> "
        "(list them with `print(dict(model.named_modules()).keys())`)"
    )


def resolve_target_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    name = name or default_target_layer(model)
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        raise ConfigError(
            f"cam.target_layer={name!r} is not a module of {type(model).__name__}; "
            "pass a dotted module name such as layer4 or blocks.11.norm1"
        ) from None


def reshape_transform_for(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """None for CNNs; a tokens -> map transform for CvT and ViT-like models; channels moved first
    for models whose stages give (B, H, W, C) maps (timm's Swin, output_fmt NHWC), which
    pytorch-grad-cam would otherwise read with H as the channels."""
    if isinstance(model, cvt.CvT):
        return cvt.cam_reshape_transform
    if _is_vit_like(model):
        return PrefixTokensToMap(int(model.num_prefix_tokens))
    if str(getattr(model, "output_fmt", "NCHW")) == "NHWC":
        return channels_first
    return None


def channels_first(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W)."""
    return maps.permute(0, 3, 1, 2)


class PrefixTokensToMap:
    """(B, prefix + h * w, C) -> (B, C, h, w) for a square grid; 4-D maps pass through."""

    def __init__(self, num_prefix_tokens: int) -> None:
        self.num_prefix_tokens = num_prefix_tokens

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() == 4:
            return tokens
        patches = tokens[:, self.num_prefix_tokens :]
        side = round(patches.shape[1] ** 0.5)
        if side * side != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens are not a square grid; use a square input")
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], side, side)


def _is_vit_like(model: nn.Module) -> bool:
    """A stack of blocks over (B, tokens, C): ViT and DeiT hold it as a Sequential, EVA and BEiT as a ModuleList."""
    blocks = getattr(model, "blocks", None)
    return hasattr(model, "num_prefix_tokens") and isinstance(blocks, nn.Sequential | nn.ModuleList)
