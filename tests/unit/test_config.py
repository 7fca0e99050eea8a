"""Every option of every config group composes, binds to its target's signature and instantiates."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

import deepfake.tasks  # noqa: F401  (registers the run_stamp resolver)

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def options(group: str) -> list[str]:
    """Every option of a group, found by recursive glob (experiment/hparams_search/... included)."""
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def compose_with(tmp_path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config", overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/run", *overrides]
        )


def target_nodes(node, path=""):
    """(dotted path, node) for every node with a _target_, outermost first."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            yield from target_nodes(node[key], f"{path}.{key}".lstrip("."))


def assert_binds(path: str, node: DictConfig) -> None:
    target = get_method(node._target_)
    kwargs = {k: v for k, v in node.items() if not k.startswith("_")}
    sig = inspect.signature(target)
    try:
        sig.bind_partial(**kwargs)
    except TypeError as err:
        raise AssertionError(f"{path}: {node._target_}{sig} does not take {sorted(kwargs)}: {err}") from err


CASES = [(group, option) for group in GROUPS for option in options(group)]


def test_every_group_has_options():
    assert {"backbone", "phase", "optimizer", "scheduler", "dataset", "augment", "task", "paths", "logger",
            "experiment"} <= set(GROUPS)  # fmt: skip
    assert {"resnet50", "efficientnet_b0", "convnext_tiny", "vit_small", "timm"} <= set(options("backbone"))


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_binds(tmp_path, group, option):
    overrides = [f"{group}={option}"]
    if group == "backbone" and option == "timm":
        overrides.append("backbone.name=test_resnet")
    cfg = compose_with(tmp_path, *overrides)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    for path, node in target_nodes(cfg):
        assert_binds(path, node)
        # As a partial nothing heavy runs (no model, no data generation), but the target imports
        # and every nested object is built.
        built = instantiate(node, _partial_=True)
        assert callable(built), path


def test_instantiate_every_object_of_the_default_config(tmp_path):
    cfg = compose_with(tmp_path, "backbone=timm", "backbone.name=test_resnet")
    model = instantiate(cfg.backbone)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1)
    make_optimizer = instantiate(cfg.optimizer)
    optimizer = make_optimizer([{"params": list(model.parameters()), "lr": 1e-3}])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999) or list(optimizer.param_groups[0]["betas"]) == [
        0.9,
        0.999,
    ]
    assert type(optimizer.param_groups[0]["betas"]).__module__ == "builtins"  # plain, survives weights_only
    scheduler = instantiate(cfg.scheduler)(optimizer, t_initial=10, warmup_t=2)
    scheduler.step_update(0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-6)
    transform = instantiate(cfg.augment)(mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic")
    from PIL import Image

    assert transform(Image.new("RGB", (50, 40))).shape == (3, cfg.dataset.img_size, cfg.dataset.img_size)
    loggers = [instantiate(node) for node in cfg.logger.values()]
    for logger in loggers:
        logger.log_metrics({"val_auc": 0.5}, step=1)
        logger.close()
    assert any((tmp_path / "run" / "tb").iterdir())


@pytest.mark.parametrize("option", options("optimizer"))
def test_every_optimizer_builds_from_param_groups(tmp_path, option):
    cfg = compose_with(tmp_path, f"optimizer={option}")
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = instantiate(cfg.optimizer)([{"params": params, "lr": 0.1, "name": "head"}])
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert optimizer.param_groups[0]["fused"] is True  # one kernel per parameter (the fast path)
    params[0].grad = torch.ones(2)
    optimizer.step()  # the fused kernel runs on the CPU
    assert params[0].detach().abs().sum() > 0


@pytest.mark.parametrize("option", [o for o in options("backbone") if o != "timm"])
def test_every_backbone_preset_builds_a_one_logit_detector(tmp_path, option):
    cfg = compose_with(tmp_path, f"backbone={option}", "dataset.img_size=64")
    model = instantiate(cfg.backbone).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1)
    assert len(model.preprocess["mean"]) == 3 and model.preprocess["interpolation"]


def test_experiment_overrides_groups(tmp_path):
    cfg = compose_with(tmp_path, "experiment=kaggle_resnet50")
    assert cfg.dataset.name == "kaggle_140k" and cfg.backbone.name == "resnet50" and cfg.backbone.pretrained
    assert cfg.dataset.img_size == 256 and cfg.dataset.generate is None


def test_the_cvt13_experiment_refuses_to_train_without_imagenet_weights(tmp_path):
    """Its `weights: ???` merged onto the backbone's null stayed null: CvT-13 trained from scratch at a
    fine-tuning rate, without a word."""
    from deepfake.errors import CheckpointError, find_in_chain

    cfg = compose_with(tmp_path, "experiment=kaggle_cvt13")
    assert cfg.backbone.pretrained and cfg.backbone.weights is None
    with pytest.raises(Exception) as caught:  # Hydra's InstantiationException around the user's error
        instantiate(cfg.backbone)
    refused = find_in_chain(caught.value, lambda error: isinstance(error, CheckpointError))
    assert refused is not None and "cvt_13 has no downloadable weights; pass a local file" in str(refused)


def test_a_list_valued_backbone_kwarg_round_trips_through_a_checkpoint(tmp_path):
    """_convert_: all: the kwargs reach the model (and so every checkpoint) as plain lists, which the
    weights_only load accepts; an OmegaConf ListConfig there would make best.pth unloadable."""
    from deepfake.models import detector_from_checkpoint
    from deepfake.tracking.checkpoint import CHECKPOINT_FORMAT, atomic_save, load_checkpoint

    cfg = compose_with(tmp_path, "backbone=timm", "backbone.name=test_resnet", "+backbone.layers=[1,1,1,1]")
    model = instantiate(cfg.backbone)
    assert type(model.detector_spec["kwargs"]["layers"]) is list
    atomic_save(
        {"format": CHECKPOINT_FORMAT, "model_spec": model.detector_spec, "model": model.state_dict()},
        tmp_path / "best.pth",
    )
    loaded = load_checkpoint(tmp_path / "best.pth")
    assert loaded["model_spec"]["kwargs"]["layers"] == [1, 1, 1, 1]
    rebuilt = detector_from_checkpoint(loaded)
    rebuilt.load_state_dict(loaded["model"])
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())
