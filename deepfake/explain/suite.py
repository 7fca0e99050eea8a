"""Every CAM figure beside the same figure for a random map: what task=cam writes to metrics.json."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from deepfake.explain.cam import Explainer, upsample
from deepfake.explain.metrics import cascading_randomisation, faithfulness, localisation, mask_area

BASELINE = "random"


def compute_maps(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: Sequence[str],
    *,
    method: str,
    target_layer: str | None,
    batch_size: int,
    seed: int = 0,
) -> np.ndarray:
    """(B, H, W) maps at the model's input size; the explainer's hooks are removed afterwards,
    so the model can be copied (the sanity check) without dragging them along. A flat layer is not
    warned of again for each map set: the explainer of the overlays has said it."""
    explainer = Explainer(model, method, target_layer, batch_size, warn_flat=False)
    try:
        with _numpy_seed(seed):  # RandomCAM draws its channel weights from numpy's global generator
            return explainer(images, labels)
    finally:
        explainer.close()


def measure(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: Sequence[str],
    masks: np.ndarray | None,
    *,
    method: str,
    target_layer: str | None,
    batch_size: int,
    road_percentiles: Sequence[int],
    sanity_fractions: Sequence[float],
    seed: int = 0,
) -> dict:
    """Localisation (when ``masks``, (B, H, W) at image resolution, are given), ROAD faithfulness
    and the cascading-randomisation check of ``method`` on ``images``, each against RandomCAM."""

    def maps_of(net: torch.nn.Module, name: str) -> np.ndarray:
        return compute_maps(
            net, images, labels, method=name, target_layer=target_layer, batch_size=batch_size, seed=seed
        )

    cams, random_cams = maps_of(model, method), maps_of(model, BASELINE)
    report: dict = {"n_images": len(images), "explains": sorted(set(labels))}
    if masks is not None:
        size = masks.shape[-2:]
        report["localisation"] = {
            method: localisation(upsample(cams, size), masks),
            BASELINE: localisation(upsample(random_cams, size), masks),
            "mask_area": mask_area(masks),
        }
    report["faithfulness"] = {
        "percentiles": list(road_percentiles),
        method: faithfulness(model, images, cams, labels, road_percentiles, seed),
        BASELINE: faithfulness(model, images, random_cams, labels, road_percentiles, seed),
    }
    report["sanity"] = cascading_randomisation(model, lambda net: maps_of(net, method), sanity_fractions, seed)
    return report


@contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
