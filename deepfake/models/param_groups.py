"""Which parameters train in each phase, and at which learning rate.

"Head" is whatever timm calls the classifier (``model.get_classifier()``); everything else is the
backbone. Freezing means no gradients *and* eval mode for the backbone's modules, so BatchNorm
running statistics and dropout stay as they were while the head learns.
"""

from __future__ import annotations

from torch import nn


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
        # The root stays in train mode: timm applies the head's dropout (drop_rate) functionally,
        # reading the root's own flag; its submodules hold the backbone's BatchNorm and dropout.
        for module in model.modules():
            if module is not model and module not in head_children:
                module.training = False


def param_groups(model: nn.Module, lr_backbone: float, lr_head: float, backbone_frozen: bool) -> list[dict]:
    """Optimizer param groups, named so schedules and logs can tell them apart."""
    head_ids = _head_param_ids(model)
    head = [p for p in model.parameters() if id(p) in head_ids]
    groups = [{"params": head, "lr": lr_head, "name": "head"}]
    if not backbone_frozen:
        backbone = [p for p in model.parameters() if id(p) not in head_ids]
        groups.insert(0, {"params": backbone, "lr": lr_backbone, "name": "backbone"})
    return groups


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


