"""Local CvT weights in the two published formats, told apart by their keys.

* Microsoft (``CvT-13-224x224-IN-1k.pth``): a flat state dict whose names are this model's own
  (``stage2.blocks.3.attn.conv_proj_q.bn.running_mean``, ``head.weight``); trained with QuickGELU.
* Hugging Face transformers (``microsoft/cvt-13``: ``model.safetensors`` or ``pytorch_model.bin``
  in a folder): ``cvt.encoder.stages.2.layers.3.attention.attention.convolution_projection_query...``,
  ``classifier.weight``; exact GELU.

Files are read by timm with ``torch.load(weights_only=True)`` (or safetensors), so a weights file
cannot run code. A file whose keys or shapes do not fit the model is refused with a
``CheckpointError`` that names them; timm drops the classifier when ``num_classes`` differs.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from timm.models import load_state_dict
from torch import nn

from deepfake.errors import CheckpointError

MICROSOFT = "microsoft"
HUGGINGFACE = "huggingface"
_MLP_ACTIVATION = {MICROSOFT: "quick_gelu", HUGGINGFACE: "gelu"}
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_QKV = {"query": "q", "key": "k", "value": "v"}
_SHOWN_KEYS = 6

# Hugging Face name -> Microsoft name, applied in order; each rule rewrites one part of a key.
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^cvt\.encoder\.stages\.(\d+)\.", r"stage\1."),
    (r"\.embedding\.convolution_embeddings\.projection\.", ".patch_embed.proj."),
    (r"\.embedding\.convolution_embeddings\.normalization\.", ".patch_embed.norm."),
    (r"\.layers\.(\d+)\.", r".blocks.\1."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"\.convolution_projection\.convolution\.", ".conv."),
    (r"\.convolution_projection\.normalization\.", ".bn."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
)
_HF_QKV_RENAMES: tuple[tuple[str, str], ...] = (
    (r"\.attention\.attention\.convolution_projection_(query|key|value)\.", ".attn.conv_proj_{}."),
    (r"\.attention\.attention\.projection_(query|key|value)\.", ".attn.proj_{}."),
)


def resolve_weights_file(location: str | Path) -> Path:
    """The weights file itself: ``location`` when a file, else the weights file in a Hugging Face folder."""
    path = Path(location).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in _HF_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(
            f"{path}: folder holds neither {' nor '.join(_HF_WEIGHT_FILES)}; pass the weights file or a "
            f"Hugging Face model folder"
        )
    raise CheckpointError(f"{path}: no such weights file or folder; check backbone.weights")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The file's state dict, read exactly as timm will read it (safetensors or weights_only torch.load)."""
    try:
        return load_state_dict(str(path))
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError) as err:
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"{path}: not a readable weights file ({type(err).__name__}: {reason}); pass a .pth/.bin state "
            f"dict or a .safetensors file"
        ) from err


def weights_format(keys: Iterable[str], path: str | Path) -> str:
    """``MICROSOFT`` or ``HUGGINGFACE``, from the key names."""
    keys = list(keys)
    if any(key.startswith("cvt.encoder.") for key in keys):
        return HUGGINGFACE
    if any(key.startswith("stage0.") for key in keys):
        return MICROSOFT
    raise CheckpointError(
        f"{path}: not CvT weights (keys such as {_show(keys)}); expected the Microsoft release "
        f"(stage0.*, head.*) or a Hugging Face CvtForImageClassification (cvt.encoder.*, classifier.*)"
    )


def mlp_activation_for(fmt: str) -> str:
    """The activation the weights were trained with: QuickGELU (Microsoft) or exact GELU (Hugging Face)."""
    return _MLP_ACTIVATION[fmt]


def hf_key_to_microsoft(key: str) -> str:
    """One Hugging Face parameter name in the Microsoft (and this model's) naming."""
    for pattern, replacement in _HF_QKV_RENAMES:
        key = re.sub(pattern, lambda m, r=replacement: r.format(_QKV[m.group(1)]), key)
    for pattern, replacement in _HF_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_filter_fn``: rename to this model's keys and check they fit, or refuse the file."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    path = cfg.get("file", "the weights file")
    if weights_format(state_dict, path) == HUGGINGFACE:
        state_dict = {hf_key_to_microsoft(key): value for key, value in state_dict.items()}
    out = dict(state_dict)
    expected = model.state_dict()
    for key, value in expected.items():
        # BatchNorm's batch counter only matters with momentum=None; older exports omit it.
        if key.endswith(".num_batches_tracked") and key not in out:
            out[key] = torch.zeros_like(value)
    _check_fits(out, expected, model, cfg, path)
    return out


def _check_fits(
    loaded: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    model: nn.Module,
    cfg: Mapping[str, object],
    path: str | Path,
) -> None:
    classifier = f"{cfg.get('classifier', 'head')}."
    # timm discards the file's classifier when the class counts differ, so it need not be there or fit.
    head_loads = getattr(model, "num_classes", None) == cfg.get("num_classes")
    first_conv_weight = f"{cfg.get('first_conv')}.weight"  # timm adapts it to in_chans afterwards

    def checked(key: str) -> bool:
        return head_loads or not key.startswith(classifier)

    missing = [key for key in expected if key not in loaded and checked(key)]
    unexpected = [key for key in loaded if key not in expected and not key.startswith(classifier)]
    misshapen = [
        f"{key} {tuple(loaded[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in loaded and checked(key) and key != first_conv_weight and loaded[key].shape != value.shape
    ]
    if not (missing or unexpected or misshapen):
        return
    problems = [
        f"{label} {_show(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", misshapen))
        if keys
    ]
    raise CheckpointError(
        f"{path}: does not fit {cfg.get('architecture', type(model).__name__)}: {'; '.join(problems)}; "
        f"pass the weights of the same CvT variant, unmodified, from the Microsoft or Hugging Face release"
    )


def _show(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    more = len(items) - _SHOWN_KEYS
    return f"[{shown}{f', ... {more} more' if more > 0 else ''}]"
