"""Is a map right, faithful and about the model? Localisation, ROAD and a randomisation check.

- Localisation against ground-truth masks of the manipulated region: the pointing game (does the
  map's maximum fall inside the mask) and the fraction of the map's energy inside the mask.
- Faithfulness: ROAD (Rong et al. 2022), the change of the explained score when the most (MoRF)
  or least (LeRF) relevant pixels are replaced by noisy linear imputation, averaged over
  percentiles. A faithful map makes MoRF drop the score more, and LeRF less, than a random map.
- Sanity (Adebayo et al. 2018): layers are re-initialised from the top of the network down; the
  rank correlation between the trained model's maps and the randomised model's maps must fall.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
from scipy.stats import rankdata

from deepfake.explain.cam import logit_target


def localisation(cams: np.ndarray, masks: np.ndarray) -> dict:
    """Mean pointing-game hit rate and energy inside the mask; ``cams`` and ``masks`` are (B, H, W)."""
    hits, energies = [], []
    for cam, mask in zip(cams, masks > 0):
        total = float(cam.sum())
        # A map with no positive evidence points nowhere: a miss with no energy in the mask.
        hits.append(total > 0 and bool(mask.flat[int(np.argmax(cam))]))
        energies.append(float(cam[mask].sum()) / total if total > 0 else 0.0)
    return {"pointing_game": float(np.mean(hits)), "energy_in_mask": float(np.mean(energies))}


def mask_area(masks: np.ndarray) -> float:
    """The hit rate (and energy share) of a map that is uniform or points at random."""
    return float((masks > 0).mean())


def rank_map(cam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The map's pixel ranks in [0, 1], ties broken at random.

    ROAD removes the pixels above a percentile of the map; a map that is zero over half the
    image would otherwise remove everything at every percentile below 50.
    """
    jitter = rng.random(cam.shape) * 1e-6
    ranks = rankdata(cam + jitter, method="ordinal").reshape(cam.shape)
    return ((ranks - 1) / max(ranks.size - 1, 1)).astype(np.float32)


def faithfulness(
    model: torch.nn.Module,
    images: torch.Tensor,
    cams: np.ndarray,
    labels: Sequence[str],
    percentiles: Sequence[int],
    seed: int = 0,
) -> dict:
    """ROAD MoRF / LeRF score changes (logit units of the explained class) and their combination."""
    rng = np.random.default_rng(seed)
    ranked = np.stack([rank_map(cam, rng) for cam in cams])
    targets = [logit_target(label) for label in labels]
    device = next(model.parameters()).device
    images = images.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
        torch.manual_seed(seed)  # the imputer's noise
        # pytorch-grad-cam hands torch tensors to numpy functions, which NumPy 2 warns about per call.
        warnings.simplefilter("ignore", DeprecationWarning)
        morf = ROADMostRelevantFirstAverage(list(percentiles))(images, ranked, targets, model)
        lerf = ROADLeastRelevantFirstAverage(list(percentiles))(images, ranked, targets, model)
    morf, lerf = float(np.mean(morf)), float(np.mean(lerf))
    return {"road_morf": morf, "road_lerf": lerf, "road_combined": (lerf - morf) / 2}


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation of two maps; None (undefined) when either is constant or not finite: it
    ranks nothing, and the 0 it was given read as the randomised maps having passed the check."""
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    ra, rb = rankdata(a.ravel()), rankdata(b.ravel())
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def mean_defined(values: Sequence[float | None]) -> float | None:
    """The mean of the defined values; None when none is."""
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def layers_top_down(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Modules that own parameters, from the output back to the input (registration order reversed)."""
    owners = [(name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    return owners[::-1]


def reinitialise(module: torch.nn.Module) -> None:
    """Back to an untrained state: the module's own init when it has one, else N(0, 0.02)."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        for parameter in module.parameters(recurse=False):
            torch.nn.init.normal_(parameter, std=0.02)


def cascading_randomisation(
    model: torch.nn.Module,
    explain: Callable[[torch.nn.Module], np.ndarray],
    fractions: Sequence[float],
    seed: int = 0,
) -> list[dict]:
    """Re-initialise a growing share of the layers from the top; per step, the mean Spearman
    correlation between ``explain(model)`` and ``explain(randomised copy)`` over the images where it is
    defined (None where it is nowhere: flat maps).

    ``explain`` maps a model to (B, H, W) maps of fixed images and targets.
    """
    original = explain(model)
    layers = layers_top_down(model)
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    steps, done = [], 0
    # Seeded, and every generator it draws from (the CPU's and each GPU's) given back as it was: the
    # training that may follow (train.do_cam) must not depend on whether CAM metrics ran.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for fraction in sorted(fractions):
            count = max(1, min(len(layers), round(fraction * len(layers))))
            with torch.no_grad():
                for name, _ in layers[done:count]:
                    reinitialise(modules[name])
            done = max(done, count)
            maps = explain(randomised)
            correlations = [spearman(a, b) for a, b in zip(original, maps)]
            steps.append(
                {"fraction": float(fraction), "layers": done, "down_to": layers[done - 1][0] or "(root)",
                 "spearman": mean_defined(correlations)}
            )  # fmt: skip
    return steps
