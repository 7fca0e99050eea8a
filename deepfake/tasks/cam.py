"""task=cam: explain a checkpoint's decisions on a split -> the run dir's cam/ (overlays, grid,
index.html, metrics.json), a TensorBoard grid, and the CAM metrics in the run's registry entry.

Maps are computed at the checkpoint's input size on the image region the model sees (the eval
transform's central square crop) and upsampled to that region at the image's own resolution.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from deepfake.data.transforms import central_square
from deepfake.engine.evaluate import Predictions
from deepfake.engine.precision import resolve_device
from deepfake.engine.reproducibility import seed_everything
from deepfake.errors import ConfigError, DataError
from deepfake.explain import METHODS, TARGETS, Explainer, default_target_layer, measure, model_logits, upsample
from deepfake.explain.overlays import Sample, grid, panel, write_gallery
from deepfake.models import detector_from_checkpoint
from deepfake.reports.card_facts import configured_data, data_identity, recorded_config
from deepfake.tasks import checkpoints, data_setup, session, values
from deepfake.tasks.preflight import scan_splits
from deepfake.tasks.scoring import checkpoint_rule
from deepfake.tracking.checkpoint import atomic_write_text, load_checkpoint_and_sha256
from deepfake.tracking.loggers import Tracker

log = logging.getLogger(__name__)

SPLIT_CSV = {"train": "train_csv", "valid": "val_csv", "test": "test_csv"}


@dataclass(frozen=True)
class CamSettings:
    """``cam.*``, each checked: task=train checks them before training when train.do_cam is on, as a
    typo found after it (the run tested, registered and promoted) failed a finished run."""

    split: str
    method: str
    target: str
    target_layer: str | None  # checked against the model when it is built
    batch_size: int
    num_samples: int
    metrics: bool
    metric_samples: int
    road_percentiles: list[float]
    sanity_fractions: list[float]


def check_cam_settings(cfg: DictConfig, split: str | None = None) -> CamSettings:
    settings = cfg.cam
    split = split or settings.split
    for key, value, allowed in (("split", split, SPLIT_CSV), ("method", settings.method, METHODS),
                                ("target", settings.target, TARGETS)):  # fmt: skip
        if value not in allowed:
            raise ConfigError(f"cam.{key}={value!r}; use one of {', '.join(allowed)}")
    return CamSettings(
        split=split, method=settings.method, target=settings.target, target_layer=settings.target_layer,
        batch_size=values.positive_int(settings.batch_size, "cam.batch_size"),
        num_samples=values.positive_int(settings.num_samples, "cam.num_samples"),
        metrics=bool(settings.metrics),  # a word (no, off) is refused up front: deepfake.tasks.flags
        metric_samples=values.positive_int(settings.metric_samples, "cam.metric_samples"),
        road_percentiles=_shares(settings.road_percentiles, "cam.road_percentiles", 100.0, "percentages of pixels"),
        sanity_fractions=_shares(settings.sanity_fractions, "cam.sanity_fractions", 1.0, "shares of the layers"),
    )  # fmt: skip


def _shares(listed, key: str, whole: float, what: str) -> list[float]:
    """A non-empty list of numbers in (0, ``whole``]."""
    if isinstance(listed, str) or not hasattr(listed, "__iter__") or not len(listed):
        raise ConfigError(f"{key}={listed} must be a list of {what} in (0, {whole:g}]")
    shares = [values.number(value, key) for value in listed]
    if not all(0 < share <= whole for share in shares):
        raise ConfigError(f"{key}={list(listed)} must be {what} in (0, {whole:g}]")
    return shares


def run(cfg: DictConfig) -> float | None:
    seed_everything(cfg.seed)  # RandomCAM baselines and ROAD's noise then repeat from run to run
    path = checkpoints.resolve_checkpoint(cfg.get("ckpt"), cfg, what="ckpt")
    with session.trackers(cfg) as trackers:
        report = explain_checkpoint(path, cfg, session.run_dir(), trackers=trackers)
    if report is not None:
        _record_in_registry(cfg, report, session.run_dir() / "cam" / "metrics.json")
    localisation = (report or {}).get("localisation")
    return localisation[report["method"]]["pointing_game"] if localisation else None


def explain_checkpoint(
    checkpoint_path: Path,
    cfg: DictConfig,
    out_dir: Path,
    split: str | None = None,
    trackers: Sequence[Tracker] = (),
    step: int = 0,
) -> dict | None:
    """Overlays and (with cam.metrics) the metrics report of one checkpoint; returns the report, for the
    caller to record (a training puts it in the entry it registers). ``trackers`` get the overlay grid at
    ``step`` (a training's last step)."""
    settings = check_cam_settings(cfg, split)
    split = settings.split
    checkpoint, sha256 = load_checkpoint_and_sha256(checkpoint_path)
    model = detector_from_checkpoint(checkpoint).to(resolve_device(cfg.train.device)).eval()
    rule = checkpoint_rule(checkpoint, cfg)  # the stored operating point, unless overridden
    data_setup.ensure_dataset(cfg.dataset)
    dataset = data_setup.make_split(cfg.dataset, SPLIT_CSV[split], data_setup.eval_transform(model.preprocess))
    # Black stand-ins of unreadable files (a wrong root: all of them) gave flat maps, and their metrics
    # replaced the run's in the registry: refused above dataset.max_bad_fraction, as task=test does.
    scan_splits(cfg.dataset, {split: dataset})
    rng = np.random.default_rng(int(cfg.seed))

    shown = _pick(rng, np.arange(len(dataset)), settings.num_samples)
    log.info("CAM: %s maps of %d %s images%s", settings.method, len(shown), split,
             " and their metrics" if settings.metrics else "")  # fmt: skip
    images, explanation, target_layer = _explain(model, dataset, shown, settings, rule)
    samples = [
        _sample(dataset, index, cam, prob, label)
        for index, cam, prob, label in zip(shown, explanation.cams, explanation.probs, explanation.labels)
    ]
    report = None
    if settings.metrics:
        csv, root_dir = data_identity(cfg.dataset[SPLIT_CSV[split]], cfg.dataset.root_dir)
        report = {
            "checkpoint": str(checkpoint_path),
            "checkpoint_sha256": sha256,  # a copy of an earlier epoch's best.pth has its path's name
            "checkpoint_kind": checkpoint.get("kind"),
            "run_name": checkpoint.get("run_name"),
            "split": split,
            "csv": csv,
            "root_dir": root_dir,
            "method": settings.method,
            "target_layer": target_layer,
            "default_target_layer": default_target_layer(model),
            "img_size": model.preprocess["img_size"],
            "decision_rule": rule.as_dict(),
            **_measure(model, dataset, rng, settings, explanation.labels, images, seed=int(cfg.seed)),
            "evaluated_at": session.now_iso(),
        }

    cam_dir = out_dir / "cam"  # made once everything is computed: no empty cam/ after a typo or a refusal
    cam_dir.mkdir(parents=True, exist_ok=True)
    if report is not None:
        # allow_nan=False: a nan figure is a bug to see, not a metrics.json no JSON reader accepts
        atomic_write_text(cam_dir / "metrics.json", json.dumps(report, indent=2, allow_nan=False))
        _log_report(report)
    title = f"{settings.method} on {split}: {checkpoint.get('run_name') or checkpoint_path}"
    sheet = _write_overlays(cam_dir, samples, report, title)
    for tracker in trackers:
        tracker.log_image("cam/overlays", np.asarray(sheet).transpose(2, 0, 1), step=step)
    log.info("CAM overlays of %d %s images (%s, layer %s): %s", len(samples), split, settings.method,
             target_layer, cam_dir / "index.html")  # fmt: skip
    return report


def _explain(model, dataset, shown: np.ndarray, settings: CamSettings, rule):
    """``(images, explanation, target layer)``: the CAMs of the ``shown`` items, each explaining the
    class ``cam.target`` names (the model's own call at the decision rule, by default)."""
    images = torch.stack([dataset[i]["image"] for i in shown])
    logits = _finite_logits(model, dataset, shown, images, settings)
    explainer = Explainer(model, settings.method, settings.target_layer, settings.batch_size)
    try:
        return (
            images,
            explainer.explain(images, settings.target, rule.threshold, rule.temperature, logits=logits),
            explainer.target_layer,
        )
    finally:
        explainer.close()


def _finite_logits(model, dataset, chosen: np.ndarray, images: torch.Tensor, settings: CamSettings) -> np.ndarray:
    """The model's logits on the ``chosen`` items, refused in one line as task=test refuses them when one
    is nan or inf: maps of such a model wrote a metrics.json of bare NaN and sanity figures that read
    as a pass, and replaced the run's in the registry."""
    logits = model_logits(model, images, settings.batch_size)
    Predictions(chosen, dataset.targets[chosen], logits).refuse_non_finite(f"{settings.split} set {dataset.csv_path}")
    return logits


def _write_overlays(cam_dir: Path, samples: list, report: dict | None, title: str):
    """One panel PNG per sample, grid.png and the index.html gallery; returns the grid image."""
    panels = [panel(sample) for sample in samples]
    files = [f"{number:03d}_{sample.true_label}_{sample.name}.png" for number, sample in enumerate(samples)]
    for image, name in zip(panels, files):
        image.save(cam_dir / name)
    sheet = grid(panels)
    sheet.save(cam_dir / "grid.png")
    write_gallery(cam_dir, files, panels, samples, report, title)
    return sheet


def _pick(rng: np.random.Generator, candidates: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` of ``candidates``, drawn with the run's seed and kept in CSV order."""
    return np.sort(rng.choice(candidates, size=min(count, len(candidates)), replace=False))


def _mask(dataset, index: int) -> np.ndarray | None:
    path = dataset.mask_paths[index] if dataset.mask_paths is not None else ""
    if not path:
        return None
    try:
        with Image.open(path) as mask:
            return np.asarray(central_square(mask.convert("L"))) > 127
    except OSError as err:
        row = dataset.rows[index]
        raise DataError(
            f"{dataset.csv_path}:{row}: mask_path {path} cannot be read ({err}); fix or drop the mask"
        ) from err


def _resized(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``mask`` at ``shape`` (height, width): a mask saved at another resolution than its image."""
    if mask.shape == shape:
        return mask
    return np.asarray(Image.fromarray(mask).resize(shape[::-1], Image.Resampling.NEAREST))


def _sample(dataset, index: int, cam: np.ndarray, prob: float, label: str) -> Sample:
    image = central_square(dataset.load(index)[0])
    mask = _mask(dataset, index)
    return Sample(
        image=image,
        cam=upsample(cam[None], (image.height, image.width))[0],
        true_label="fake" if dataset.targets[index] == 1 else "real",
        prob_fake=float(prob),
        explained=label,
        name=Path(dataset.paths[index]).stem,
        # Outlined on the image: a mask saved at another resolution than its image was an IndexError.
        mask=None if mask is None else _resized(mask, (image.height, image.width)),
    )


def _measure(model, dataset, rng, settings, shown_labels, shown_images, seed) -> dict:
    """Measure on the images with ground-truth masks, explaining "fake" (what the mask marks);
    without masks, on the overlay images and their targets (no localisation then)."""
    masked = np.flatnonzero(dataset.mask_paths.non_empty()) if dataset.mask_paths is not None else []
    if len(masked):
        chosen = _pick(rng, masked, settings.metric_samples)
        images = torch.stack([dataset[i]["image"] for i in chosen])
        _finite_logits(model, dataset, chosen, images, settings)
        masks = [_mask(dataset, i) for i in chosen]
        masks = [_resized(m, masks[0].shape) for m in masks]
        labels, masks = ["fake"] * len(chosen), np.stack(masks)
    else:
        images, labels, masks = shown_images, shown_labels, None
    return measure(
        model, images, labels, masks,
        method=settings.method, target_layer=settings.target_layer, batch_size=settings.batch_size,
        road_percentiles=settings.road_percentiles, sanity_fractions=settings.sanity_fractions, seed=seed,
    )  # fmt: skip


def registry_view(report: dict) -> dict:
    """The headline CAM figures for the registry entry; the full report stays in cam/metrics.json."""
    method = report["method"]
    view = {"method": method, "target_layer": report["target_layer"], "split": report["split"],
            "n_images": report["n_images"]}  # fmt: skip
    if "localisation" in report:
        for name in ("pointing_game", "energy_in_mask"):
            view[name] = report["localisation"][method][name]
            view[f"{name}_random"] = report["localisation"]["random"][name]
    view["road_combined"] = report["faithfulness"][method]["road_combined"]
    view["road_combined_random"] = report["faithfulness"]["random"]["road_combined"]
    view["sanity_spearman"] = [step["spearman"] for step in report["sanity"]]
    return view | {"evaluated_at": report["evaluated_at"]}


def _record_in_registry(cfg: DictConfig, report: dict, written: Path) -> None:
    """The run's registry CAM figures replaced by these, when they are of its best.pth on its own data."""
    registry = session.open_registry(cfg)
    entry = registry.get(report["run_name"]) if report["run_name"] else None
    if entry is None:  # a checkpoint from elsewhere: nothing to replace
        return
    why_not = _not_the_runs_own(report, recorded_config(entry), entry.get("checkpoint_sha256"))
    if why_not:
        log.info("the registry entry of %s keeps its CAM metrics (of its best.pth on its own data, at its own layer "
                 "and threshold); these, %s, are in %s", report["run_name"], why_not, written)  # fmt: skip
    else:
        registry.update_run(report["run_name"], missing_ok=True, cam_metrics=registry_view(report))


def _not_the_runs_own(report: dict, config: dict, own_sha256: str | None) -> str | None:
    """What makes ``report`` other than the run's own measurement (the model card presents the registry's
    figures as best.pth's), in words; None when it is its own: any method, at the run's layer and
    threshold, of its best.pth (of ``own_sha256``, when the entry records it) on a split's CSV and image
    root as its config (config_resolved.yaml) names them."""
    own_data = configured_data(config, report["split"])
    own_layer = (config.get("cam") or {}).get("target_layer") or report["default_target_layer"]
    rule = report["decision_rule"]
    if report["checkpoint_kind"] != "best":
        return f"of a {report['checkpoint_kind']} checkpoint, not a best.pth"
    if own_sha256 not in (None, report.get("checkpoint_sha256")):  # a copy of an earlier epoch's best.pth
        return f"of another checkpoint, {report['checkpoint']}"
    if rule["source"] != "checkpoint":
        return f"at {rule['source']}={rule['threshold']}"
    if own_data is None:
        return "on data that cannot be told to be its own (its config_resolved.yaml is gone)"
    if own_data != (report["csv"], report["root_dir"]):
        return f"on {report['csv']} under {report['root_dir']}"
    if report["target_layer"] != own_layer:
        return f"at layer {report['target_layer']} (its own: {own_layer})"
    return None


def _log_report(report: dict) -> None:
    method, view = report["method"], registry_view(report)
    if "pointing_game" in view:
        log.info("CAM localisation on %d masked images: pointing game %.3f (random %.3f), energy in mask %.3f "
                 "(random %.3f, mask area %.3f)", report["n_images"], view["pointing_game"], view["pointing_game_random"],
                 view["energy_in_mask"], view["energy_in_mask_random"], report["localisation"]["mask_area"])  # fmt: skip
    log.info("CAM faithfulness (ROAD combined, higher is better): %s %.3f, random %.3f",
             method, view["road_combined"], view["road_combined_random"])  # fmt: skip
    log.info("CAM sanity (Spearman to the trained model's maps as layers are randomised from the top): %s",
             ", ".join(f"{s['layers']} layers {'n/a' if s['spearman'] is None else format(s['spearman'], '.3f')}" for s in report["sanity"]))  # fmt: skip
