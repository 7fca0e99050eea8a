"""Param groups as timm's create_optimizer makes them, split into backbone and head parts: no weight
decay on biases, norm weights and the cls token, and layer-wise lr decay from the model's group_matcher;
timm's own functions on the same model are the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from trainers import tiny_model

import deepfake.models.cvt  # noqa: F401  (registers cvt_13)
from deepfake.models import create_detector
from deepfake.models.param_groups import head_module, param_groups, set_backbone_frozen

OPTIMIZERS = Path(__file__).resolve().parents[2] / "conf" / "optimizer"


@pytest.fixture(scope="module")
def cvt13() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_detector("cvt_13")


def names_by_group(model: torch.nn.Module, groups: list[dict]) -> list[set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [{names[id(p)] for p in group["params"]} for group in groups]


def no_decay_names(model: torch.nn.Module, groups: list[dict]) -> set[str]:
    return set().union(*(n for n, g in zip(names_by_group(model, groups), groups) if g.get("weight_decay", 1) == 0))


def test_cvt13_no_decay_parameters_are_timms(cvt13):
    groups = param_groups(cvt13, lr_backbone=1e-4, lr_head=1e-3, backbone_frozen=False)
    assert [g["name"] for g in groups] == ["backbone_no_decay", "backbone", "head_no_decay", "head"]
    assert [g["lr"] for g in groups] == [1e-4, 1e-4, 1e-3, 1e-3]
    # The decay groups leave weight_decay to the optimizer's setting; the others carry 0.
    assert [g.get("weight_decay") for g in groups] == [0.0, None, 0.0, None]
    names = names_by_group(cvt13, groups)
    assert sum(len(n) for n in names) == len(set().union(*names)) == len(list(cvt13.parameters()))
    timms = param_groups_weight_decay(cvt13, weight_decay=0.05, no_weight_decay_list=cvt13.no_weight_decay())
    no_decay = no_decay_names(cvt13, groups)
    assert no_decay == no_decay_names(cvt13, timms)
    assert {"stage2.cls_token", "head.bias", "norm.weight", "stage0.blocks.0.attn.conv_proj_q.bn.weight"} <= no_decay
    assert all(name.endswith(".bias") or name.endswith(".weight") or name == "stage2.cls_token" for name in no_decay)
    # What the note quotes: cvt_13 with one logit, tensors and elements in each kind of group.
    params = dict(cvt13.named_parameters())
    decay = set(params) - no_decay
    assert (len(decay), sum(params[n].numel() for n in decay)) == (121, 19_528_320)
    assert (len(no_decay), sum(params[n].numel() for n in no_decay)) == (221, 84_545)


def test_switched_off_only_the_models_no_weight_decay_names_are_spared(cvt13):
    groups = param_groups(cvt13, 1e-4, 1e-3, backbone_frozen=False, weight_decay_exclude_1d=False)
    assert [g["name"] for g in groups] == ["backbone_no_decay", "backbone", "head"]
    assert no_decay_names(cvt13, groups) == {"stage2.cls_token"}  # as timm's create_optimizer: the model's own list
    # A model without such a list keeps the layout of one group per part.
    assert [g["name"] for g in param_groups(tiny_model(), 1e-4, 1e-3, False, weight_decay_exclude_1d=False)] == [
        "backbone",
        "head",
    ]


def test_layer_decay_scales_are_timms(cvt13):
    groups = param_groups(cvt13, lr_backbone=1e-4, lr_head=1e-3, backbone_frozen=False, layer_decay=0.75)
    timms = param_groups_layer_decay(
        cvt13, weight_decay=0.05, layer_decay=0.75, no_weight_decay_list=cvt13.no_weight_decay()
    )
    timm_scale = {n: g["lr_scale"] for names, g in zip(names_by_group(cvt13, timms), timms) for n in names}
    head_names = {f"head.{n}" for n, _ in head_module(cvt13).named_parameters()}
    for names, group in zip(names_by_group(cvt13, groups), groups):
        if group["name"].startswith("head"):
            assert names <= head_names and group["lr"] == 1e-3 and "lr_scale" not in group
            assert {timm_scale[n] for n in names} == {1.0}  # timm's top layer: the head keeps its rate
            continue
        assert group["lr"] == 1e-4 and not names & head_names
        assert {timm_scale[n] for n in names} == {group["lr_scale"]}, group["name"]
    assert no_decay_names(cvt13, groups) == no_decay_names(cvt13, timms)
    # Stem, stage 0's block, stage 1's two, stage 2's ten (its last with the final norm), then the head.
    backbone_names = {g["name"].removesuffix("_no_decay") for g in groups if g["name"].startswith("backbone")}
    assert backbone_names == {f"backbone_layer_{i}" for i in range(14)}
    scale = {g["name"]: g["lr_scale"] for g in groups if "lr_scale" in g}
    assert scale["backbone_layer_13"] == pytest.approx(0.75)
    assert scale["backbone_layer_0"] == pytest.approx(0.75**14)


def test_a_frozen_backbone_phase_trains_only_the_head():
    model = tiny_model()
    head = {id(p) for p in head_module(model).parameters()}
    for layer_decay in (None, 0.75):
        # Whether or not the backbone's requires_grad flags are already off.
        for flags_off in (False, True):
            set_backbone_frozen(model, flags_off)
            groups = param_groups(model, 1e-4, 1e-3, backbone_frozen=True, layer_decay=layer_decay)
            assert [g["name"] for g in groups] == ["head_no_decay", "head"]
            assert {id(p) for g in groups for p in g["params"]} == head
            assert all("lr_scale" not in g and g["lr"] == 1e-3 for g in groups)


@pytest.mark.parametrize("option", sorted(p.stem for p in OPTIMIZERS.glob("*.yaml")))
def test_the_optimizer_decays_only_the_decay_groups(option):
    model = tiny_model()
    make_optimizer = instantiate(OmegaConf.load(OPTIMIZERS / f"{option}.yaml"))
    configured = make_optimizer.keywords["weight_decay"]
    optimizer = make_optimizer(param_groups(model, lr_backbone=1e-2, lr_head=1e-2, backbone_frozen=False))
    for group in optimizer.param_groups:
        assert group["weight_decay"] == (0.0 if group["name"].endswith("_no_decay") else configured), group["name"]
    # A step with zero gradients: only weight decay can move a parameter.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    optimizer.step()
    names = names_by_group(model, optimizer.param_groups)
    for group_names, group in zip(names, optimizer.param_groups):
        for name in group_names:
            moved = not torch.equal(dict(model.named_parameters())[name], before[name])
            assert moved == (group["weight_decay"] > 0 and bool(before[name].any())), name
