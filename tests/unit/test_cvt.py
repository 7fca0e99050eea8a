"""CvT-13/21: exact parity with transformers' CvT, both published weight formats, shapes, GradCAM, configs.

The reference is built from ``CvtConfig`` with random weights (no download), its BatchNorm and
LayerNorm parameters randomised so that running statistics and affine terms matter.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from safetensors.torch import save_file
from timm.layers import GELU, QuickGELU
from timm.models import group_parameters

import deepfake.models.cvt  # noqa: F401  (registers cvt_13 / cvt_21)
from deepfake.errors import CheckpointError, ConfigError
from deepfake.models.cvt import CvT, cam_reshape_transform, gradcam_target_layer

CONF_DIR = Path(__file__).resolve().parents[2] / "conf" / "backbone"
PARITY_ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small forwards gain nothing from a second thread, and on a busy 2-core box they lose a lot to spinning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    import transformers  # the dev extra's: imported here, since only the tests that compare need it

    torch.manual_seed(0)
    model = transformers.CvtForImageClassification(transformers.CvtConfig(num_labels=1000)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def hf_folder(reference: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cvt-13")
    reference.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture(scope="module")
def ours(hf_folder: Path) -> torch.nn.Module:
    return _load(hf_folder).eval()


@pytest.fixture(scope="module")
def scratch13() -> torch.nn.Module:
    return timm.create_model("cvt_13", num_classes=1).eval()


@pytest.fixture(scope="module")
def scratch21() -> torch.nn.Module:
    return timm.create_model("cvt_21", num_classes=1000).eval()


def _tiny(**kwargs: object) -> CvT:
    return CvT(depths=(1, 2, 3), embed_dims=(8, 16, 32), num_heads=(1, 2, 4), **kwargs)


def _load(path: Path, variant: str = "cvt_13", **kwargs: object) -> torch.nn.Module:
    kwargs.setdefault("num_classes", 1000)
    return timm.create_model(variant, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def _images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _max_diff(model: torch.nn.Module, expected: torch.Tensor, images: torch.Tensor) -> float:
    return (model.eval()(images) - expected).abs().max().item()


def _microsoft_name(hf_key: str) -> str:
    """Hugging Face -> official Microsoft parameter name, after the official module tree (cls_cvt.py)."""
    key = re.sub(r"^cvt\.encoder\.stages\.(\d+)\.", r"stage\1.", hf_key)
    key = re.sub(r"\.layers\.(\d+)\.", r".blocks.\1.", key)
    table = [
        ("embedding.convolution_embeddings.projection.", "patch_embed.proj."),
        ("embedding.convolution_embeddings.normalization.", "patch_embed.norm."),
    ]
    for long, short in (("query", "q"), ("key", "k"), ("value", "v")):
        projection = f"attention.attention.convolution_projection_{long}.convolution_projection."
        table += [
            (projection + "convolution.", f"attn.conv_proj_{short}.conv."),
            (projection + "normalization.", f"attn.conv_proj_{short}.bn."),
            (f"attention.attention.projection_{long}.", f"attn.proj_{short}."),
        ]
    table += [
        ("attention.output.dense.", "attn.proj."),
        ("intermediate.dense.", "mlp.fc1."),
        ("output.dense.", "mlp.fc2."),
        ("layernorm_before.", "norm1."),
        ("layernorm_after.", "norm2."),
    ]
    for hf_part, ms_part in table:
        if "." + hf_part in key:
            return key.replace("." + hf_part, "." + ms_part)
    return re.sub(r"^layernorm\.", "norm.", re.sub(r"^classifier\.", "head.", key))


def _microsoft_file(reference: torch.nn.Module, path: Path, with_batch_counts: bool = True) -> Path:
    state = {_microsoft_name(k): v for k, v in reference.state_dict().items()}
    if not with_batch_counts:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)
    return path


# --- parity -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [224, 256])
@pytest.mark.parametrize("batch", [1, 4])
def test_logits_match_transformers(reference, ours, size, batch):
    images = _images(batch, size)
    with torch.no_grad():
        expected = reference(pixel_values=images).logits
    assert expected.shape == (batch, 1000) and expected.std() > 0.1  # the comparison has something to compare
    assert _max_diff(ours, expected, images) <= PARITY_ATOL


def test_parity_is_sensitive_to_the_activation(reference, ours, hf_folder):
    images = _images(2, 64)
    with torch.no_grad():
        expected = reference(pixel_values=images).logits
    assert _max_diff(ours, expected, images) <= PARITY_ATOL
    quick = _load(hf_folder, act_layer="quick_gelu")  # the caller's choice wins over the format's
    assert isinstance(quick.stage2.blocks[0].mlp.act, QuickGELU)
    assert _max_diff(quick, expected, images) > 1e-3


# --- weight formats ------------------------------------------------------------------------------


def test_model_uses_the_official_parameter_names(scratch13):
    names = set(scratch13.state_dict())
    for key in (
        "stage0.patch_embed.proj.weight",
        "stage0.patch_embed.norm.bias",
        "stage1.blocks.1.norm1.weight",
        "stage2.blocks.3.attn.conv_proj_q.bn.running_mean",
        "stage2.blocks.9.attn.conv_proj_v.conv.weight",
        "stage2.blocks.9.attn.proj_k.bias",
        "stage2.blocks.9.attn.proj.weight",
        "stage2.blocks.9.mlp.fc2.weight",
        "stage2.cls_token",
        "norm.weight",
        "head.weight",
    ):
        assert key in names, key
    assert not any(k.startswith(("stage0.cls_token", "stage1.cls_token")) for k in names)


@pytest.mark.parametrize("with_batch_counts", [True, False], ids=["num_batches_tracked", "no_num_batches_tracked"])
def test_microsoft_file_gives_identical_logits(reference, ours, tmp_path, with_batch_counts):
    path = _microsoft_file(reference, tmp_path / "CvT-13-224x224-IN-1k.pth", with_batch_counts)
    images = _images(2, 64)
    with torch.no_grad():
        expected = ours(images)
    # The Hugging Face reference runs exact GELU, so compare with that activation chosen explicitly.
    model = _load(path, act_layer="gelu")
    assert isinstance(model.stage2.blocks[0].mlp.act, GELU)
    assert _max_diff(model, expected, images) == 0.0


@pytest.mark.parametrize("layout", ["folder_bin", "file_safetensors", "file_bin"])
def test_hugging_face_files_and_folders(reference, ours, hf_folder, tmp_path, layout):
    state = reference.state_dict()
    if layout == "folder_bin":
        torch.save(state, tmp_path / "pytorch_model.bin")
        path = tmp_path
    elif layout == "file_safetensors":
        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        path = tmp_path / "weights.bin"
        torch.save(state, path)
    images = _images(2, 64)
    with torch.no_grad():
        expected = ours(images)
    assert _max_diff(_load(path), expected, images) == 0.0


def test_activation_follows_the_format(reference, ours, scratch13, tmp_path):
    """QuickGELU for Microsoft files, GELU for Hugging Face ones and from scratch (overrides: tests above)."""
    microsoft = _load(_microsoft_file(reference, tmp_path / "ms.pth"))
    assert isinstance(microsoft.stage2.blocks[0].mlp.act, QuickGELU) and microsoft.mlp_act_name == "quick_gelu"
    assert isinstance(ours.stage2.blocks[0].mlp.act, GELU) and ours.mlp_act_name == "gelu"
    assert isinstance(scratch13.stage2.blocks[0].mlp.act, GELU) and scratch13.mlp_act_name == "gelu"


def test_classifier_dropped_when_num_classes_differ(ours, hf_folder):
    images = _images(1, 64)
    for num_classes in (1, 0):
        model = _load(hf_folder, num_classes=num_classes).eval()
        with torch.no_grad():
            assert torch.equal(model.forward_features(images), ours.forward_features(images))
        head = model.get_classifier()
        if num_classes:
            assert head.weight.shape == (1, 384) and not torch.equal(head.weight, ours.head.weight[:1])
        else:
            assert isinstance(head, torch.nn.Identity)


def _refusal(path: Path, variant: str = "cvt_13") -> str:
    with pytest.raises(CheckpointError) as info:
        _load(path, variant, num_classes=1)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_refuses_missing_and_unexpected_keys(scratch13, tmp_path):
    state = dict(scratch13.state_dict())
    del state["stage1.blocks.0.attn.proj_k.weight"]
    state["stage2.blocks.3.attn.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "broken.pth")
    message = _refusal(tmp_path / "broken.pth")
    assert "broken.pth" in message
    assert "missing keys [stage1.blocks.0.attn.proj_k.weight]" in message
    assert "unexpected keys [stage2.blocks.3.attn.extra.weight]" in message


def test_refuses_the_other_variant_and_wrong_shapes(scratch13, scratch21, tmp_path):
    torch.save(scratch21.state_dict(), tmp_path / "cvt21.pth")
    message = _refusal(tmp_path / "cvt21.pth", "cvt_13")
    assert "unexpected keys [stage1.blocks.2." in message and "more" in message
    state = dict(scratch13.state_dict())
    state["norm.weight"] = torch.ones(10)
    torch.save(state, tmp_path / "shape.pth")
    assert "wrong shapes [norm.weight (10,) vs (384,)]" in _refusal(tmp_path / "shape.pth")


class _Payload:
    """Not a tensor: a weights_only load must refuse to unpickle it."""


def test_refuses_foreign_and_unsafe_files(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
    assert "not CvT weights" in _refusal(tmp_path / "resnet.pth")
    torch.save({"stage0.patch_embed.proj.weight": _Payload()}, tmp_path / "pickle.pth")
    assert "not a readable weights file" in _refusal(tmp_path / "pickle.pth")
    (tmp_path / "empty").mkdir()
    assert "model.safetensors" in _refusal(tmp_path / "empty")
    assert "no such" in _refusal(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="backbone.weights"):
        timm.create_model("cvt_13", pretrained=True)


# --- architecture --------------------------------------------------------------------------------


def test_parameter_counts(scratch21):
    def count(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    assert count(timm.create_model("cvt_13", num_classes=1000)) == 19_997_480
    assert count(scratch21) == 31_622_696


@pytest.mark.parametrize(("size", "batch"), [(224, 1), (256, 1), (64, 1), (64, 3), (32, 1), (32, 2)])
def test_output_shapes(scratch13, size, batch):
    with torch.no_grad():
        features = scratch13.forward_features(_images(batch, size))
        grid = -(-size // 16)  # three strided embeddings: 4, 2, 2
        assert features.shape == (batch, 1 + grid * grid, 384)
        assert scratch13.forward_head(features, pre_logits=True).shape == (batch, 384)
        assert scratch13(_images(batch, size)).shape == (batch, 1)


def test_trains_at_small_size():
    model = timm.create_model("cvt_13", num_classes=1, drop_path_rate=0.1).train()
    model(_images(2, 64)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_cvt21_depths_and_forward(scratch21):
    assert [len(stage.blocks) for stage in scratch21.stages] == [1, 4, 16]
    assert [stage.blocks[0].attn.num_heads for stage in scratch21.stages] == [1, 3, 6]
    with torch.no_grad():
        assert scratch21(_images(1, 224)).shape == (1, 1000)


def test_stochastic_depth_ramps_within_the_last_stage():
    model = _tiny(drop_path_rate=0.1)
    assert all(isinstance(b.drop_path, torch.nn.Identity) for s in model.stages[:2] for b in s.blocks)
    assert [_drop_rate(b) for b in model.stage2.blocks] == pytest.approx([0.0, 0.05, 0.1])
    per_stage = _tiny(drop_path_rate=(0.1, 0.2, 0.3))
    # linspace(0, rate, depth), as the reference: a one-block stage gets no stochastic depth.
    assert [_drop_rate(s.blocks[-1]) for s in per_stage.stages] == pytest.approx([0.0, 0.2, 0.3])
    with pytest.raises(ConfigError, match=r"backbone.drop_path_rate=\[0.1, 0.2\]: give one rate, or one per stage"):
        _tiny(drop_path_rate=(0.1, 0.2))  # was an IndexError traceback


def _drop_rate(block: torch.nn.Module) -> float:
    return 0.0 if isinstance(block.drop_path, torch.nn.Identity) else block.drop_path.drop_prob


def test_timm_model_api(scratch13):
    assert scratch13.num_features == 384 and scratch13.get_classifier() is scratch13.head
    assert scratch13.pretrained_cfg["interpolation"] == "bicubic" and scratch13.pretrained_cfg["classifier"] == "head"
    assert "stage2.cls_token" in scratch13.no_weight_decay()
    model = _tiny(num_classes=5)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.num_classes == 3
    model.reset_classifier(0)
    assert model(_images(2, 32)).shape == (2, 32)


# --- GradCAM ---------------------------------------------------------------------------------------


def test_group_matcher_orders_stem_stages_blocks_then_head(scratch13):
    fine = group_parameters(scratch13, scratch13.group_matcher(coarse=False), reverse=True)
    assert fine["stage0.patch_embed.proj.weight"] == 0
    assert fine["stage0.blocks.0.attn.proj_q.weight"] == 1
    # A stage's embedding (and the last stage's cls token) goes with its first block, as timm's ConvNeXt.
    assert fine["stage1.patch_embed.proj.weight"] == fine["stage1.blocks.0.norm1.weight"] == 2
    assert fine["stage2.cls_token"] == fine["stage2.blocks.0.mlp.fc2.bias"] == 4
    assert fine["stage2.blocks.9.norm2.bias"] == fine["norm.weight"] == 13  # the final norm with the last block
    assert fine["head.weight"] == fine["head.bias"] == 14
    names = [n for n, _ in scratch13.named_parameters()]
    assert [fine[n] for n in names] == sorted(fine[n] for n in names)  # depth order is parameter order
    coarse = group_parameters(scratch13, scratch13.group_matcher(coarse=True), reverse=True)
    assert sorted(set(coarse.values())) == [0, 1, 2, 3, 4]
    assert (coarse["stage0.patch_embed.norm.bias"], coarse["stage2.cls_token"], coarse["head.bias"]) == (0, 3, 4)


def test_cam_reshape_transform():
    patches = torch.randn(2, 49, 8)
    with_cls = torch.cat((torch.randn(2, 1, 8), patches), dim=1)
    expected = patches.transpose(1, 2).reshape(2, 8, 7, 7)
    assert torch.equal(cam_reshape_transform(with_cls), expected)
    assert torch.equal(cam_reshape_transform(patches), expected)
    with pytest.raises(ValueError, match="square"):
        cam_reshape_transform(torch.randn(1, 1 + 4 * 8, 8))


@pytest.mark.parametrize("size", [224, 256])
def test_gradcam_is_finite_and_not_constant(scratch13, size):
    model = scratch13  # the detector's shape: one logit
    with GradCAM(model, [gradcam_target_layer(model)], reshape_transform=cam_reshape_transform) as cam:
        heatmap = cam(input_tensor=_images(1, size), targets=[ClassifierOutputTarget(0)])
    assert heatmap.shape == (1, size, size)
    assert np.isfinite(heatmap).all() and heatmap.std() > 1e-3


# --- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["cvt_13", "cvt_21"])
def test_backbone_config_matches_the_model(variant):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{variant}.yaml"))
    assert cfg.pop("_target_") == "deepfake.models.create_detector"
    assert cfg.pop("_convert_") == "all"  # plain lists reach the checkpoint (test_config)
    assert cfg.pop("name") == variant
    assert cfg.pop("pretrained") is False and cfg.pop("weights") is None
    pretrained_cfg = timm.models.get_pretrained_cfg(variant).to_dict()
    assert tuple(cfg.pop("mean")) == pretrained_cfg["mean"] and tuple(cfg.pop("std")) == pretrained_cfg["std"]
    assert cfg.pop("interpolation") == pretrained_cfg["interpolation"] == "bicubic"
    inspect.signature(CvT).bind_partial(**cfg)  # the rest are model kwargs
