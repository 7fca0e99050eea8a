"""Which parameters train in each phase, at which learning rate, and with which weight decay.

"Head" is whatever timm calls the classifier (``model.get_classifier()``); everything else is the
backbone. Freezing means no gradients *and* eval mode for the backbone's modules, so BatchNorm
running statistics and dropout stay as they were while the head learns.

Weight decay and layer-wise learning-rate decay are split as timm's ``create_optimizer_v2`` splits a
model (its own ``param_groups_weight_decay`` / ``param_groups_layer_decay``), then each of timm's
groups is split again into its backbone and head parts, so that each part keeps its own rate.
"""

from __future__ import annotations

from timm.models import group_parameters
from timm.optim import auto_group_layers, param_groups_layer_decay, param_groups_weight_decay
from torch import nn

# timm's functions put every parameter in the no-decay groups when weight_decay is 0; any other value
# sorts them, and the decay groups then leave weight_decay to the optimizer's own setting.
_SORT_BY_DECAY = 1.0


def head_module(model: nn.Module) -> nn.Module:
    head = model.get_classifier()
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise TypeError(f"{type(model).__name__}.get_classifier() returned no trainable head")
    return head


def _head_param_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in head_module(model).parameters()}


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    head_ids = _head_param_ids(model)
    for param in model.parameters():
        param.requires_grad = (not frozen) or id(param) in head_ids


def set_train_mode(model: nn.Module, backbone_frozen: bool) -> None:
    """``model.train()``, except that a frozen backbone stays in eval mode."""
    model.train()
    if backbone_frozen:
        head_children = set(head_module(model).modules())
        # The root stays in train mode: ResNet-style timm models apply the head's dropout (drop_rate)
        # functionally, reading the root's own flag. Others hold it as a module beside the
        # classifier (ViT's head_drop, ConvNeXt's head.drop): that one trains with the head too. The
        # rest (the backbone's BatchNorm, dropout and stochastic depth) is the frozen feature extractor.
        for name, module in model.named_modules():
            if module is model or module in head_children or _is_head_dropout(name, module):
                continue
            module.training = False


def _is_head_dropout(name: str, module: nn.Module) -> bool:
    """A dropout on the pooled features, before the classifier: timm names it head_drop or head.drop."""
    return isinstance(module, nn.Dropout) and (name == "head_drop" or name.startswith("head."))


def param_groups(
    model: nn.Module,
    lr_backbone: float,
    lr_head: float,
    backbone_frozen: bool,
    weight_decay_exclude_1d: bool = True,
    layer_decay: float | None = None,
) -> list[dict]:
    """Optimizer param groups, each named for its part ("backbone..." or "head...") so logs can tell
    them apart: the backbone's (none while it is frozen), then the head's.

    ``weight_decay_exclude_1d``: biases, norm weights and other 1-d parameters get no weight decay, as in
    timm; the names in the model's ``no_weight_decay()`` (CvT's cls token) never get it. No-decay groups
    ("..._no_decay") carry ``weight_decay`` 0; the others leave it to the optimizer's setting.
    ``layer_decay``: while the backbone trains, its rate scaled by ``layer_decay ** n`` for a layer n
    layers below the head, layers from the model's ``group_matcher`` (groups "backbone_layer_<i>...").
    The scale is each group's ``lr_scale``, which timm's schedulers apply; the head keeps ``lr_head``.
    """
    no_weight_decay = getattr(model, "no_weight_decay", lambda: set())()
    split = {"weight_decay": _SORT_BY_DECAY, "weight_decay_exclude_1d": weight_decay_exclude_1d,
             "no_weight_decay_list": no_weight_decay}  # fmt: skip
    layered = layer_decay is not None and not backbone_frozen
    if layered:
        timm_groups = param_groups_layer_decay(model, layer_decay=layer_decay, **split)
        layer_ids = _layer_ids(model)
        layer_of = {id(p): layer_ids[name] for name, p in model.named_parameters()}
    else:
        timm_groups = param_groups_weight_decay(model, **split)
    head_ids = _head_param_ids(model)
    backbone_groups, head_params = [], {"": [], "_no_decay": []}
    for timm_group in timm_groups:
        suffix = "_no_decay" if timm_group["weight_decay"] == 0 else ""
        head_params[suffix] += [p for p in timm_group["params"] if id(p) in head_ids]
        params = [p for p in timm_group["params"] if id(p) not in head_ids]
        if backbone_frozen or not params:
            continue
        group = {"params": params, "lr": lr_backbone, "name": f"backbone{suffix}"}
        if layered:
            group.update(name=f"backbone_layer_{layer_of[id(params[0])]}{suffix}", lr_scale=timm_group["lr_scale"])
        backbone_groups.append(_with_decay(group, suffix))
    head_groups = [
        _with_decay({"params": params, "lr": lr_head, "name": f"head{suffix}"}, suffix)
        for suffix, params in sorted(head_params.items(), reverse=True)  # no-decay first, as timm orders them
        if params
    ]
    return backbone_groups + head_groups


def _with_decay(group: dict, suffix: str) -> dict:
    return {**group, "weight_decay": 0.0} if suffix else group


def _layer_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name -> layer number, as ``param_groups_layer_decay`` numbers them (for group names)."""
    if hasattr(model, "group_matcher"):
        return group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    return auto_group_layers(model)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
