"""The decision rule every task applies to a model's logits: p(fake) = sigmoid(logit / temperature),
called fake at or above the threshold; the operating point a model was saved with, and the override
that may replace its threshold. Plain Python and numpy: loading a model to score needs no
scikit-learn (deepfake.evaluation.operating_point chooses the point, on validation scores).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from deepfake.engine.evaluate import fake_probability
from deepfake.errors import CheckpointError, ConfigError


def check_threshold(value, key: str = "eval.threshold") -> float:
    """``value`` as a p(fake) threshold; ConfigError naming ``key`` for anything else (``true`` included)."""
    try:
        threshold = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        threshold = math.nan
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"{key}={value!r} must be a p(fake) between 0 and 1")
    return threshold


@dataclass(frozen=True)
class DecisionRule:
    """How a task turns a logit into p(fake) and a real/fake call, and where that came from."""

    threshold: float
    temperature: float
    source: str  # "checkpoint", or the setting that overrode it ("eval.threshold", "predict.threshold")
    policy: str | None  # the policy that chose the stored threshold (None: an older checkpoint)
    stored_threshold: float | None

    def p_fake(self, logits: np.ndarray) -> np.ndarray:
        return fake_probability(logits, self.temperature)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OperatingPoint:
    """The operating point a model was saved with: fake when ``sigmoid(logit / temperature) >= threshold``.

    Chosen on validation and stored in best.pth (``threshold``, ``threshold_policy``, and
    ``temperature`` once calibrated) and in an ONNX model's sidecar; a model without a temperature is
    uncalibrated (1.0). A training stopped before choosing one leaves ``threshold`` None: no verdict
    without one given.
    """

    threshold: float | None = None
    policy: str | None = None
    temperature: float = 1.0

    @classmethod
    def of(cls, stored: dict, source: str = "the checkpoint") -> OperatingPoint:
        """The point ``stored`` holds (a checkpoint, a sidecar); CheckpointError naming ``source`` for a
        threshold that is no p(fake) or a temperature that is no positive number (an edited file)."""
        temperature, threshold = stored.get("temperature"), stored.get("threshold")
        try:
            scale = 1.0 if temperature is None else math.nan if isinstance(temperature, bool) else float(temperature)
            point = cls(
                threshold=None if threshold is None else check_threshold(threshold, "threshold"),
                policy=stored.get("threshold_policy"),
                temperature=scale,
            )
        except (ConfigError, TypeError, ValueError):
            point = None
        if point is None or not (math.isfinite(point.temperature) and point.temperature > 0):
            raise CheckpointError(f"{source} holds a damaged operating point (threshold {threshold!r}, temperature "
                                  f"{temperature!r}): it was edited or damaged; use an unedited copy")  # fmt: skip
        return point

    def rule(self, override: float | None, key: str, model: str, *, latest_epoch: str | None = None) -> DecisionRule:
        """The rule a task applies: this threshold, unless the setting ``key`` gives ``override``; this
        temperature either way. ``model`` names the model in the error for one with no threshold, and
        ``latest_epoch`` says what it is when it is a run's latest epoch ("a last.pth", "an export of
        <path>"), which never holds one."""
        if override is not None:
            return DecisionRule(check_threshold(override, key), self.temperature, key, self.policy, self.threshold)
        if self.threshold is None:
            why = (f"is {latest_epoch}, which holds no decision threshold: its run's is in best.pth beside it; use that"
                   if latest_epoch else
                   "holds no decision threshold (its training stopped before choosing one); resume that run")  # fmt: skip
            raise CheckpointError(f"{model} {why}, or pass {key}=<p_fake>")
        return DecisionRule(self.threshold, self.temperature, "checkpoint", self.policy, self.threshold)


def decision_rule(checkpoint: dict, threshold_override: float | None = None) -> DecisionRule:
    """The rule task=test and task=cam apply to ``checkpoint``'s scores: its stored operating point,
    unless ``threshold_override`` (``eval.threshold``) is given."""
    model = f"checkpoint {checkpoint.get('run_name') or ''}".rstrip()
    latest = "a last.pth" if checkpoint.get("kind") == "last" else None
    return OperatingPoint.of(checkpoint, model).rule(threshold_override, "eval.threshold", model, latest_epoch=latest)
