"""CvT-13 / CvT-21 (Wu et al. 2021, "CvT: Introducing Convolutions to Vision Transformers"), registered with timm.

Module and parameter names follow the official Microsoft release (``stage0.patch_embed.proj``,
``stage2.blocks.3.attn.conv_proj_q.bn``, ``norm``, ``head``), so a state dict of this model *is*
a Microsoft-format file; Hugging Face files are renamed on load (see ``cvt_weights``).

Importing ``deepfake.models`` registers the models, after which::

    timm.create_model("cvt_13", num_classes=1, pretrained=True,
                      pretrained_cfg_overlay=dict(file="CvT-13-224x224-IN-1k.pth"))

loads local weights in either published format (a ``.pth``/``.bin``/``.safetensors`` file, or a
Hugging Face folder). No weights exist on a hub that timm could fetch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, get_act_layer, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from deepfake.errors import CheckpointError, ConfigError
from deepfake.models.cvt_weights import (
    checkpoint_filter_fn,
    mlp_activation_for,
    read_weights,
    resolve_weights_file,
    weights_format,
)

__all__ = ["CvT", "cam_reshape_transform", "gradcam_target_layer"]

# (kernel, stride, padding) of each stage's convolutional token embedding, as in the paper.
EMBED_CONVS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))
LAYER_NORM_EPS = 1e-5


def _tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


class ConvEmbed(nn.Module):
    """Overlapping strided convolution, then LayerNorm over channels: the stage's tokens."""

    def __init__(self, in_chans: int, embed_dim: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (height, width)


class ConvProjection(nn.Module):
    """Depthwise 3x3 conv + BatchNorm on the token map, flattened back to tokens ("dw_bn")."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, stride=stride, padding=1, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).flatten(2).transpose(1, 2)


class ConvAttention(nn.Module):
    """Multi-head attention whose queries, keys and values come from convolutional projections.

    Keys and values are taken at stride 2 (a quarter of the tokens), queries at stride 1. The cls
    token, when present, bypasses the convolutions and joins again before the linear projections.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool, with_cls_token: bool, attn_drop: float, proj_drop: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.with_cls_token = with_cls_token
        # The reference scales by the full width, not the head width; the pretrained weights expect it.
        self.scale = dim**-0.5
        self.attn_drop = attn_drop
        self.conv_proj_q = ConvProjection(dim, stride=1)
        self.conv_proj_k = ConvProjection(dim, stride=2)
        self.conv_proj_v = ConvProjection(dim, stride=2)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, heads, N, C / heads)."""
        batch, tokens, dim = x.shape
        return x.reshape(batch, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.with_cls_token:
            cls_token, x = x[:, :1], x[:, 1:]
        token_map = _tokens_to_map(x, height, width)
        q, k, v = self.conv_proj_q(token_map), self.conv_proj_k(token_map), self.conv_proj_v(token_map)
        if self.with_cls_token:
            q, k, v = (torch.cat((cls_token, t), dim=1) for t in (q, k, v))
        q, k, v = self._heads(self.proj_q(q)), self._heads(self.proj_k(k)), self._heads(self.proj_v(v))
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        x = x.transpose(1, 2).flatten(2)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each with drop path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        with_cls_token: bool,
        act_layer: type[nn.Module],
        drop: float,
        attn_drop: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = ConvAttention(dim, num_heads, qkv_bias, with_cls_token, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Stage(nn.Module):
    """Convolutional token embedding, an optional cls token, then a stack of blocks.

    The stochastic-depth rate ramps linearly from 0 to ``drop_path_rate`` over this stage's blocks.
    """

    def __init__(
        self,
        in_chans: int,
        dim: int,
        embed_conv: tuple[int, int, int],
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        with_cls_token: bool,
        act_layer: type[nn.Module],
        drop_rate: float,
        attn_drop_rate: float,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        self.patch_embed = ConvEmbed(in_chans, dim, *embed_conv)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if with_cls_token else None
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias, with_cls_token, act_layer, drop_rate, attn_drop_rate, rate)
            for rate in rates
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C_in, H_in, W_in) -> tokens (B, [1 +] H * W, C) and the grid (H, W); the cls token comes first."""
        x, (height, width) = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x, height, width)
        return x, (height, width)


class CvT(nn.Module):
    """Convolutional vision transformer: three stages, cls token in the last; head on that token."""

    def __init__(
        self,
        depths: Sequence[int],
        embed_dims: Sequence[int] = (64, 192, 384),
        num_heads: Sequence[int] = (1, 3, 6),
        in_chans: int = 3,
        num_classes: int = 1000,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        act_layer: str | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float | Sequence[float] = 0.0,
    ) -> None:
        """``act_layer``: the MLP activation's timm name; None means "gelu" (the loader fills it
        from the weights' format). ``drop_path_rate``: a float is the last stage's rate, as in the
        official configs (0, 0, 0.1); a sequence gives one rate per stage."""
        super().__init__()
        num_stages = len(depths)
        if isinstance(drop_path_rate, (int, float)):
            drop_path_rate = (0.0,) * (num_stages - 1) + (float(drop_path_rate),)
        if len(drop_path_rate) != num_stages:  # an IndexError traceback while building the stages
            raise ConfigError(f"backbone.drop_path_rate={list(drop_path_rate)}: give one rate, or one per stage "
                              f"({num_stages})")  # fmt: skip
        self.num_classes = num_classes
        self.num_stages = num_stages
        self.mlp_act_name = act_layer or "gelu"
        # The activation may have been chosen from the weights' format; the detector factory records
        # resolved_kwargs in the checkpoint so the saved model is rebuilt with the same one.
        self.resolved_kwargs = {"act_layer": self.mlp_act_name}
        act = get_act_layer(self.mlp_act_name)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        for i in range(num_stages):
            stage = Stage(
                in_chans=in_chans if i == 0 else embed_dims[i - 1],
                dim=embed_dims[i],
                embed_conv=EMBED_CONVS[i],
                depth=depths[i],
                num_heads=num_heads[i],
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                with_cls_token=i == num_stages - 1,
                act_layer=act,
                drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                drop_path_rate=drop_path_rate[i],
            )
            self.add_module(f"stage{i}", stage)  # official names, so Microsoft files load unchanged
        self.norm = nn.LayerNorm(self.num_features, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        trunc_normal_(self.last_stage.cls_token, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # As the reference: truncated-normal Linear weights, zero biases; convs keep PyTorch's default.
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def stages(self) -> list[Stage]:
        return [getattr(self, f"stage{i}") for i in range(self.num_stages)]

    @property
    def last_stage(self) -> Stage:
        return getattr(self, f"stage{self.num_stages - 1}")

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"stage{self.num_stages - 1}.cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups in depth order, for timm's layer-wise lr decay: the first convolutional
        embedding (the stem), then per stage its embedding and cls token with its first block, then each
        block, the final norm, and (unmatched) the head."""
        return {
            "stem": r"^stage0\.patch_embed",
            "blocks": [(r"^stage(\d+)", None), (r"^norm", (99999,))] if coarse else [
                (r"^stage(\d+)\.(?:patch_embed|cls_token)", (0,)),
                (r"^stage(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        }  # fmt: skip

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier; ``global_pool`` is accepted for timm's API and ignored (cls token)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> last-stage tokens (B, 1 + h * w, num_features), cls token first, normed.

        The final LayerNorm works per token, so norming every token leaves the cls token exactly as
        the reference's norm(cls) and gives a usable token map besides.
        """
        for stage in self.stages:
            tokens, (height, width) = stage(x)
            x = _tokens_to_map(tokens[:, -height * width :], height, width)
        return self.norm(tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def gradcam_target_layer(model: CvT) -> nn.Module:
    """Default CAM layer: the first LayerNorm of the last block.

    Later layers will not do: the logit reads only the cls token, so the last block's output gives
    zero gradient to the patch tokens. Before its attention, the patch tokens still feed the cls
    token through keys and values, and their activations are a (1 + h * w)-token map.
    """
    return model.last_stage.blocks[-1].norm1


def cam_reshape_transform(tokens: torch.Tensor) -> torch.Tensor:
    """(B, [1 +] h * w, C) tokens -> (B, C, h, w) for pytorch-grad-cam.

    Drops the cls token when present and infers a square grid from the token count (1 + n**2 is
    never a square for n >= 1, so the count alone tells whether a cls token is there).
    """
    count = tokens.shape[1]
    for skip in (0, 1):
        side = round((count - skip) ** 0.5)
        if side > 0 and side * side == count - skip:
            return _tokens_to_map(tokens[:, skip:], side, side)
    raise ValueError(f"{count} tokens are not a square grid (with or without a cls token); use a square input")


def _cfg(**kwargs: object) -> dict:
    # Official evaluation: resize to 224 / 0.875, centre crop 224, bicubic, ImageNet mean and std.
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stage0.patch_embed.proj",
        "classifier": "head",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "cvt_13.ms_in1k": _cfg(paper_ids="arXiv:2103.15808"),
        "cvt_21.ms_in1k": _cfg(paper_ids="arXiv:2103.15808"),
    }
)


def _create_cvt(variant: str, pretrained: bool = False, **kwargs: object) -> CvT:
    """Build through timm; with a local file, resolve a Hugging Face folder to its weights file and
    take the MLP activation from the file's format unless the caller chose one."""
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained:
        if not overlay.get("file"):
            raise CheckpointError(
                f"{variant} has no downloadable weights; pass a local file or Hugging Face folder "
                f"(backbone.weights=<CvT-*-224x224-IN-1k.pth or microsoft/cvt-* folder>)"
            )
        path = resolve_weights_file(overlay["file"])
        overlay["file"] = str(path)
        fmt = weights_format(read_weights(path), path)
        if kwargs.get("act_layer") is None:
            kwargs["act_layer"] = mlp_activation_for(fmt)
    return build_model_with_cfg(
        CvT,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay or None,
        pretrained_filter_fn=checkpoint_filter_fn,
        **kwargs,
    )


@register_model
def cvt_13(pretrained: bool = False, **kwargs: object) -> CvT:
    """CvT-13: depths 1/2/10, 20.0 M parameters with the ImageNet head."""
    return _create_cvt("cvt_13", pretrained, depths=(1, 2, 10), **kwargs)


@register_model
def cvt_21(pretrained: bool = False, **kwargs: object) -> CvT:
    """CvT-21: depths 1/4/16, 31.6 M parameters with the ImageNet head."""
    return _create_cvt("cvt_21", pretrained, depths=(1, 4, 16), **kwargs)
