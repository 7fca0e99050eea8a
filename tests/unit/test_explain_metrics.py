"""CAM metrics on hand-made maps and a tiny network: each figure means what its name says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deepfake.explain.metrics import (
    cascading_randomisation,
    layers_top_down,
    localisation,
    mask_area,
    mean_defined,
    rank_map,
    spearman,
)


def test_pointing_game_and_energy_in_mask():
    masks = np.zeros((2, 8, 8), bool)
    masks[:, 0:4, 0:4] = True
    cams = np.zeros((2, 8, 8), np.float32)
    cams[0, 1, 1] = 1.0  # peak inside, all energy inside
    cams[1, 6, 6], cams[1, 2, 2] = 1.0, 1.0 / 3  # peak outside, a quarter of the energy inside
    result = localisation(cams, masks)
    assert result == {"pointing_game": 0.5, "energy_in_mask": pytest.approx((1 + 0.25) / 2)}
    assert mask_area(masks) == 0.25


def test_an_empty_map_points_nowhere():
    masks = np.ones((1, 4, 4), bool)
    assert localisation(np.zeros((1, 4, 4), np.float32), masks) == {"pointing_game": 0.0, "energy_in_mask": 0.0}


def test_rank_map_breaks_ties_so_percentiles_remove_their_share():
    cam = np.zeros((10, 10), np.float32)
    cam[0, 0] = 1.0
    ranks = rank_map(cam, np.random.default_rng(0))
    assert len(np.unique(ranks)) == 100 and ranks[0, 0] == 1.0
    assert (ranks >= np.percentile(ranks, 80)).sum() == 20


def test_spearman():
    a = np.arange(16.0).reshape(4, 4)
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_spearman_of_a_flat_or_broken_map_is_undefined_not_zero():
    """0 for a constant map read as "the randomised maps no longer match": the sanity check passed."""
    a = np.arange(16.0).reshape(4, 4)
    assert spearman(a, np.zeros_like(a)) is None and spearman(np.ones_like(a), a) is None
    assert spearman(a, np.where(a > 3, a, np.nan)) is None
    flat_steps = cascading_randomisation(tiny_net(), lambda net: np.zeros((2, 4, 4)), [0.5, 1.0])
    assert [step["spearman"] for step in flat_steps] == [None, None]
    partly = [spearman(a, a), spearman(a, np.zeros_like(a))]
    assert mean_defined(partly) == pytest.approx(1.0) and mean_defined([None]) is None


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))


def test_layers_come_from_the_top():
    assert [name for name, _ in layers_top_down(tiny_net())] == ["4", "1", "0"]


def test_cascading_randomisation_reinitialises_a_growing_top_share():
    model = tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 8, 8)

    def explain(net: nn.Module) -> np.ndarray:  # input x gradient as a stand-in map
        inputs = x.clone().requires_grad_(True)
        net.eval()(inputs).sum().backward()
        return (inputs.grad * inputs).sum(1).abs().detach().numpy()

    rng = torch.random.get_rng_state()
    steps = cascading_randomisation(model, explain, [0.34, 1.0])
    assert torch.equal(torch.random.get_rng_state(), rng)  # the caller's random stream goes on as before
    assert [(s["layers"], s["down_to"]) for s in steps] == [(1, "4"), (3, "0")]
    assert all(s["spearman"] < 0.9 for s in steps)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
