"""Explanations: CAMs over pytorch-grad-cam for the one-logit detector, their pictures and their metrics.

Plain Python (no Hydra): ``layers`` picks where to look, ``cam`` computes maps, ``metrics`` and
``suite`` measure them, ``overlays`` draws them.
"""

from deepfake.explain.cam import METHODS, TARGETS, Explainer, Explanation, model_logits, upsample
from deepfake.explain.layers import default_target_layer, reshape_transform_for, resolve_target_layer
from deepfake.explain.suite import compute_maps, measure

__all__ = [
    "METHODS", "TARGETS", "Explainer", "Explanation", "compute_maps", "default_target_layer", "measure", "model_logits",
    "reshape_transform_for", "resolve_target_layer", "upsample",
]  # fmt: skip
