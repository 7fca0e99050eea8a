"""Class activation maps for the one-logit detector, through pytorch-grad-cam.

The detector outputs one logit, p(fake) = sigmoid(logit). Explaining "fake" follows +logit,
explaining "real" follows -logit (the logit of p(real)), so both targets weigh the evidence for
their own class; "predicted" picks per image from p(fake) and the threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    RandomCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

from deepfake.engine.evaluate import fake_probability, verdict
from deepfake.errors import ConfigError
from deepfake.explain.layers import reshape_transform_for, resolve_target_layer

log = logging.getLogger(__name__)

METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "eigencam": EigenCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
    # Random channel weights over the same activations: the baseline every metric is compared with.
    "random": RandomCAM,
}
TARGETS = ("predicted", "fake", "real")


def logit_target(label: str) -> BinaryClassifierOutputTarget:
    """pytorch-grad-cam's target for a one-logit detector: the score a map explains, +logit for fake
    (class 1, the positive one), -logit for real."""
    return BinaryClassifierOutputTarget(int(label == "fake"))


def explained_labels(target: str, probs: np.ndarray, threshold: float) -> list[str]:
    if target not in TARGETS:
        raise ConfigError(f"cam.target={target!r}; use one of {', '.join(TARGETS)}")
    if target == "predicted":
        return [verdict(p, threshold) for p in probs]
    return [target] * len(probs)


@dataclass
class Explanation:
    """Maps at the model's input size, in [0, 1] per image, and what they explain."""

    cams: np.ndarray  # (B, H, W) float32
    probs: np.ndarray  # (B,) p(fake)
    labels: list[str]  # the class each map explains


class Explainer:
    """One CAM method on one layer of a detector; call it on normalised image batches."""

    def __init__(
        self,
        model: torch.nn.Module,
        method: str = "gradcam",
        target_layer: str | None = None,
        batch_size: int = 32,
        warn_flat: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"cam.method={method!r}; use one of {', '.join(METHODS)}")
        self.model = model.eval()
        self.method = method
        self.target_layer, layer = resolve_target_layer(model, target_layer)
        self._cam = METHODS[method](model, [layer], reshape_transform=reshape_transform_for(model))
        self._cam.batch_size = batch_size  # ScoreCAM's forward batch for its masked copies
        self.batch_size = batch_size
        self._flat_warned = not warn_flat  # the metrics' explainers leave it to the overlays' one

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_layer(self, img_size: int) -> None:
        """Refuse, in one line, a target layer that gives no spatial map at ``img_size`` (the head's
        ``fc``, a pooling layer): pytorch-grad-cam fails on it with a traceback, and train.do_cam only
        once training is over. One forward pass of a black image, which the CAM hooks record."""
        hooks = self._cam.activations_and_grads
        try:
            with torch.no_grad():
                self.model(torch.zeros(1, 3, img_size, img_size, device=self.device))
            self._refuse_non_spatial()
        finally:
            hooks.activations, hooks.gradients = [], []

    def _refuse_non_spatial(self) -> None:
        activations = self._cam.activations_and_grads.activations
        if activations and activations[0].ndim != 4:
            shape = "x".join(map(str, activations[0].shape[1:]))
            raise ConfigError(f"cam.target_layer={self.target_layer} gives {shape} outputs per image, not a map of "
                              "positions; pick a convolutional stage or a block (e.g. layer4, blocks.11.norm1)")  # fmt: skip

    def probabilities(self, images: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
        """p(fake) = sigmoid(logit / temperature): the checkpoint's calibration, when it has one; in
        float64 by the one function every task uses, so a score at the stored threshold falls on the
        same side here as in predictions.csv."""
        return fake_probability(model_logits(self.model, images, self.batch_size), temperature)

    def __call__(self, images: torch.Tensor, labels: Sequence[str]) -> np.ndarray:
        """(B, H, W) maps explaining ``labels`` ("fake" / "real" per image), batch by batch."""
        maps = []
        with gradients_enabled(self.model):
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size].to(self.device)
                targets = [logit_target(label) for label in labels[start : start + self.batch_size]]
                try:
                    maps.append(self._cam(chunk, targets))
                except ValueError:  # pytorch-grad-cam's on a layer without a map ("Invalid grads shape")
                    self._refuse_non_spatial()
                    raise
                self._warn_if_flat()
        return np.concatenate(maps).astype(np.float32)

    def _warn_if_flat(self) -> None:
        """A layer whose maps are 1×1 at this input size (ResNet's last stage at 32 px) gives every
        image one flat map: CAMs and their metrics then say nothing about where; said once."""
        activations = self._cam.activations_and_grads.activations
        if self._flat_warned or not activations or activations[0].ndim != 4:
            return
        height, width = activations[0].shape[-2:]
        if height * width == 1:
            self._flat_warned = True
            log.warning("cam.target_layer=%s gives 1×1 maps at this image size: every CAM is flat and its metrics "
                        "say nothing about where; use a larger dataset.img_size or an earlier layer", self.target_layer)  # fmt: skip

    def explain(
        self,
        images: torch.Tensor,
        target: str,
        threshold: float = 0.5,
        temperature: float = 1.0,
        logits: np.ndarray | None = None,
    ) -> Explanation:
        """The maps of ``images`` explaining ``target``; ``logits``: the model's on them, when the caller
        has them already (task=cam checks them first)."""
        if logits is None:
            logits = model_logits(self.model, images, self.batch_size)
        probs = fake_probability(logits, temperature)
        labels = explained_labels(target, probs, threshold)
        return Explanation(self(images, labels), probs, labels)

    def close(self) -> None:
        """Remove the forward hooks from the model."""
        self._cam.activations_and_grads.release()


def model_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> np.ndarray:
    """(B,) logits of ``model`` on normalised ``images``, batch by batch on its device."""
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = torch.cat([model(chunk.to(device)) for chunk in images.split(batch_size)])
    return logits.float().reshape(-1).cpu().numpy()


def check_explainer(model: torch.nn.Module, method: str, target_layer: str | None, img_size: int) -> None:
    """``method`` and ``target_layer`` refused in one line before anything is computed or written with
    them: the explainer is built as the overlays build it, probed at ``img_size``, and its hooks taken
    off again at once (left on, they would keep every later batch's activations). The model is left
    in the mode it was in (a model about to train)."""
    training = model.training
    try:
        explainer = Explainer(model, method, target_layer, batch_size=1)
        try:
            explainer.check_layer(img_size)
        finally:
            explainer.close()
    finally:
        model.train(training)


@contextmanager
def gradients_enabled(model: torch.nn.Module) -> Iterator[None]:
    """Gradient CAMs need the target layer's output in the graph: a frozen backbone (or an
    inference-mode caller) would silently give them none. On the way out every parameter gets back
    its flag and its ``.grad`` as they were: the CAM's backward passes leave nothing behind (a frozen
    parameter holding a gradient would be stepped by an optimizer that sees it)."""
    saved = [(parameter, parameter.requires_grad, parameter.grad) for parameter in model.parameters()]
    for parameter, requires_grad, _ in saved:
        if not requires_grad:
            parameter.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for parameter, requires_grad, grad in saved:
            parameter.requires_grad_(requires_grad)
            parameter.grad = grad


def upsample(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, h, w) maps -> (B, *size), bilinear: from the model's input size to the image's."""
    if cams.shape[-2:] == tuple(size):
        return cams
    tensor = torch.from_numpy(cams)[:, None]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
