"""Config -> scores of a checkpoint's model: on validation at the end of training (to choose and
store the operating point), on the test set and every ``eval.sets`` entry, and on perturbed copies."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torchvision.transforms import v2

from deepfake.data.damaged import DamagedImageLog
from deepfake.engine.evaluate import Predictions, predict
from deepfake.engine.precision import resolve_device, resolve_precision
from deepfake.errors import ConfigError
from deepfake.evaluation.decision import DecisionRule, check_threshold, decision_rule
from deepfake.evaluation.operating_point import fit_operating_point, parse_policy
from deepfake.evaluation.perturbations import Perturbation, perturbations_from
from deepfake.evaluation.summary import SummarySettings
from deepfake.models import detector_from_checkpoint
from deepfake.tasks import data_setup, values
from deepfake.tracking.checkpoint import atomic_save, load_checkpoint

log = logging.getLogger(__name__)

CALIBRATIONS = ("none", "temperature")


class Scorer:
    """A checkpoint's model on the configured device, scoring CSVs with the checkpoint's own preprocessing."""

    def __init__(self, checkpoint: dict, cfg: DictConfig, damaged: DamagedImageLog | None = None) -> None:
        self.device = resolve_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.model = detector_from_checkpoint(checkpoint).to(self.device)
        # uint8 images (img_size framing included), normalised on the device batch by batch
        self.base_transform = data_setup.eval_transform(self.model.preprocess, normalise=False)
        self.to_input = data_setup.model_input(self.model.preprocess, self.device)
        self.cfg = cfg
        self.damaged = damaged or DamagedImageLog()
        self.datasets: dict = {}  # name -> the dataset last scored under it (predictions.csv lists its rows)

    def score(
        self, name: str, csv_path: str, root_dir: str | None = None, perturbation: Perturbation | None = None
    ) -> Predictions:
        """The Predictions of one CSV; ``perturbation`` degrades each decoded image first."""
        transform = self.base_transform if perturbation is None else v2.Compose([perturbation, self.base_transform])
        reader = instantiate(self.cfg.dataset.reader)
        dataset = reader(csv_path=csv_path, transform=transform, **({"root_dir": root_dir} if root_dir else {}))
        if perturbation is None:  # a perturbation degrades the full-size decoded image, not the cached one
            data_setup.attach_cache(dataset, self.cfg.dataset, self.model.preprocess)
        loader = data_setup.make_loader(dataset, self.cfg.dataset, device=self.device)
        preds = predict(self.model, loader, self.device, self.precision, to_input=self.to_input)
        preds.refuse_non_finite(f"{name} set {csv_path}" + (f" under {perturbation.name}" if perturbation else ""))
        self.damaged.record(name, dataset, preds.damaged)
        self.datasets[name] = dataset
        return preds


def check_eval_settings(cfg: DictConfig) -> None:
    """Fail before training on a setting that would only break after it."""
    parse_policy(cfg.eval.threshold_policy, cfg.eval.threshold)
    if cfg.eval.threshold is not None:  # it overrides the chosen threshold whatever the policy
        check_threshold(cfg.eval.threshold)
    if cfg.eval.calibrate not in CALIBRATIONS:
        raise ConfigError(f"eval.calibrate={cfg.eval.calibrate!r}; use one of {', '.join(CALIBRATIONS)}")
    summary_settings(cfg)
    perturbations(cfg)
    for name, csv, _ in eval_sets(cfg)[1:]:  # the dataset's own test CSV may still be generated
        if not Path(csv).is_file():
            raise ConfigError(f"eval.sets.{name}: {csv} does not exist; fix the path or drop the set")


def checkpoint_rule(checkpoint: dict, cfg: DictConfig) -> DecisionRule:
    """The decision rule task=test and task=cam apply: the checkpoint's stored operating point, unless
    ``eval.threshold`` gives another threshold. One equal to the stored threshold is no override: with
    ``eval.threshold_policy=fixed`` it is the very setting that stored it (the README's fixed-policy
    training reported its own operating point as an override, and its registry figures were refused)."""
    override = cfg.eval.threshold
    if override is not None and check_threshold(override) == checkpoint.get("threshold"):
        override = None
    return decision_rule(checkpoint, override)


def settings_not_applied(cfg: DictConfig, rule: DecisionRule, given: set[str]) -> list[str]:
    """Those of ``eval.threshold_policy`` and ``eval.calibrate`` in ``given`` (the keys the command line
    sets) whose value differs from what chose ``rule``'s stored operating point: they only apply when
    a training chooses one. Values the user did not give are no request to ignore."""
    stored_calibration = "none" if rule.temperature == 1.0 else "temperature"
    stored = {"eval.threshold_policy": rule.policy or "unrecorded", "eval.calibrate": stored_calibration}
    differs = {
        "eval.threshold_policy": _policy_key(cfg.eval.threshold_policy) != _policy_key(rule.policy),
        "eval.calibrate": cfg.eval.calibrate != stored_calibration,
    }
    return [f"{key}={OmegaConf.select(cfg, key)} (stored: {stored[key]})" for key in stored
            if key in given and differs[key]]  # fmt: skip


def _policy_key(policy) -> tuple | None:
    """A policy as what it chooses: ``fpr@0.01`` and ``fpr@1e-2`` alike; a fixed one whatever its threshold
    (that is eval.threshold's, compared as an override); None for a policy no training could have used."""
    try:
        kind, value = parse_policy(policy, fixed_threshold=0.0)
    except ConfigError:
        return None
    return kind, value if kind == "fpr" else None


def summary_settings(cfg: DictConfig) -> SummarySettings:
    settings = cfg.eval
    bootstrap = values.number(settings.bootstrap, "eval.bootstrap", int)
    if bootstrap < 0:
        raise ConfigError(f"eval.bootstrap={settings.bootstrap} must be 0 (no intervals) or a number of resamples")
    confidence = values.number(settings.confidence, "eval.confidence")
    if not 0 < confidence < 1:
        raise ConfigError(f"eval.confidence={settings.confidence} must be between 0 and 1 (e.g. 0.95)")
    rates = tuple(values.number(rate, "eval.tpr_at_fpr") for rate in settings.tpr_at_fpr)
    if any(not 0 < rate < 1 for rate in rates):
        raise ConfigError(f"eval.tpr_at_fpr={list(rates)}: every false-positive rate must be between 0 and 1")
    return SummarySettings(
        bootstrap=bootstrap,
        confidence=confidence,
        seed=int(cfg.seed),
        tpr_at_fpr=rates,
        ece_bins=values.positive_int(settings.ece_bins, "eval.ece_bins"),
    )


def perturbations(cfg: DictConfig) -> list[Perturbation]:
    settings = cfg.eval.perturbations
    kinds = OmegaConf.to_container(settings, resolve=True) if settings is not None else {}
    if not isinstance(kinds, dict):
        raise ConfigError(f"eval.perturbations={kinds!r} must be a mapping: {{jpeg: [90, 70], blur: [1], ...}}")
    return perturbations_from(kinds, seed=int(cfg.seed))


def eval_sets(cfg: DictConfig) -> list[tuple[str, str, str | None]]:
    """``(name, csv, root_dir)`` for the dataset's test CSV (named ``test``) and each of ``eval.sets``."""
    sets = [("test", str(cfg.dataset.test_csv), None)]
    given = cfg.eval.sets
    extra = OmegaConf.to_container(given, resolve=True) if isinstance(given, DictConfig | ListConfig) else given
    if not isinstance(extra, dict | None):  # eval.sets=abc is plain text, not a config to convert
        raise ConfigError(f"eval.sets={extra!r} must be a mapping: eval.sets={{name: <csv>, ...}}")
    extra = extra or {}
    for name, spec in extra.items():
        if name == "test":
            raise ConfigError("eval.sets.test: `test` is the dataset's own test_csv; give this set another name")
        if isinstance(spec, str):
            sets.append((str(name), spec, None))
        elif isinstance(spec, dict) and set(spec) <= {"csv", "root_dir"} and "csv" in spec:
            sets.append((str(name), str(spec["csv"]), spec.get("root_dir")))
        else:
            raise ConfigError(f"eval.sets.{name}={spec!r}: give a CSV path, or {{csv: <path>, root_dir: <images>}}")
    return sets


def store_operating_point(
    best_path: Path, cfg: DictConfig, damaged: DamagedImageLog, valid_predictions: Predictions | None = None
) -> dict:
    """Choose best.pth's threshold (and temperature) on validation by the eval policy and write them
    into best.pth; returns what was stored. ``valid_predictions``: validation already scored by exactly
    these weights (the training's best epoch, same transform and precision); otherwise it is scored here."""
    checkpoint = load_checkpoint(best_path)
    preds = valid_predictions
    if preds is None:
        preds = Scorer(checkpoint, cfg, damaged).score("valid", str(cfg.dataset.val_csv))
    if len(np.unique(preds.targets)) < 2:
        raise ConfigError(f"{cfg.dataset.val_csv}: validation holds one class only; no threshold can be chosen on it")
    chosen = fit_operating_point(
        preds.targets, preds.logits,
        policy=cfg.eval.threshold_policy, fixed_threshold=cfg.eval.threshold,
        calibrate=cfg.eval.calibrate == "temperature", ece_bins=int(cfg.eval.ece_bins),
    )  # fmt: skip
    atomic_save({**checkpoint, **chosen}, best_path)
    point = chosen["operating_point"]
    log.info(
        "operating point on validation (%s): threshold %.6g, temperature %.4g; accuracy %.4f (real %.4f, fake %.4f)",
        point["policy"], point["threshold"], point["temperature"], point["accuracy"], point["real_accuracy"],
        point["fake_accuracy"],
    )  # fmt: skip
    return chosen
