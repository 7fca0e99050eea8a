"""Build a detector (any timm model with a one-logit head) and rebuild it from a checkpoint.

The detector *is* the timm model created with ``num_classes=1``: its own classifier becomes the
deepfake head, so pre-logit layers (a ViT's fc_norm, CvT's final LayerNorm) stay where timm put
them, and every timm model works unchanged. The model records how it was made
(``detector_spec``) and how its inputs must look (``preprocess``), which is what makes a saved
``best.pth`` self-describing.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from timm.data import resolve_data_config

from deepfake.errors import CheckpointError, ConfigError


def create_detector(
    name: str,
    pretrained: bool = False,
    weights: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    interpolation: str | None = None,
    **timm_kwargs: Any,
) -> torch.nn.Module:
    """A timm model with one output logit, p(fake).

    ``weights`` (a local file or folder) wins over ``pretrained`` (timm's own source, online).
    ``mean``/``std``/``interpolation`` default to the model's pretrained config.
    """
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise ConfigError(
            f"backbone.name={name!r} is not a timm model; list them with "
            '`python -c "import timm; print(timm.list_models())"`'
        )
    overlay = None
    if weights is not None:
        if not Path(weights).exists():
            raise CheckpointError(f"backbone.weights={weights}: no such file or folder; pass a local weights file")
        overlay = {"file": str(weights)}
    unreachable = _hub_unreachable() if pretrained and overlay is None else None
    try:
        with _hub_cache_only(unreachable):
            model = timm.create_model(
                name,
                pretrained=bool(pretrained or overlay),
                pretrained_cfg_overlay=overlay,
                num_classes=1,
                **timm_kwargs,
            )
    except TypeError as err:
        # An extra key (+backbone.<key>=...) the model's constructor does not take.
        raise ConfigError(
            f"backbone {name} does not take {sorted(timm_kwargs)}: {_one_line(err)}; drop the extra backbone.* key"
        ) from err
    except (RuntimeError, OSError, ValueError) as err:
        if overlay is not None:
            raise CheckpointError(f"backbone.weights={weights} does not fit {name}: {_one_line(err)}") from err
        if pretrained:
            cause = f"the model hub is unreachable: {unreachable}" if unreachable else _one_line(err)
            raise CheckpointError(
                f"could not fetch pretrained weights for {name} ({cause}); on an offline machine download "
                f"them elsewhere and pass backbone.weights=/path/to/file"
            ) from err
        raise
    data_cfg = resolve_data_config({}, model=model)
    # A model may settle some of its own arguments (CvT picks its MLP activation from the weights'
    # format) and report them in resolved_kwargs, so the saved spec rebuilds the very same network.
    model.detector_spec = {"name": name, "kwargs": {**timm_kwargs, **getattr(model, "resolved_kwargs", {})}}
    model.preprocess = {
        "mean": [float(v) for v in (mean if mean is not None else data_cfg["mean"])],
        "std": [float(v) for v in (std if std is not None else data_cfg["std"])],
        "interpolation": interpolation or data_cfg["interpolation"],
    }
    return model


def detector_from_checkpoint(checkpoint: dict) -> torch.nn.Module:
    """Rebuild the trained detector from a checkpoint's own description; no config needed.

    Nothing here is instantiated from a ``_target_``: only a timm model name and its keyword
    arguments are read, so a foreign file cannot make this code import or run anything.
    """
    spec = checkpoint.get("model_spec")
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError("the checkpoint does not describe its model (no model_spec); was it written by deepfake?")
    preprocess = _checked_preprocess(checkpoint.get("preprocess") or {})
    model = create_detector(
        spec["name"],
        mean=preprocess.get("mean"),
        std=preprocess.get("std"),
        interpolation=preprocess.get("interpolation"),
        **spec.get("kwargs", {}),
    )
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise CheckpointError(f"the checkpoint's weights do not fit {spec['name']}: {_one_line(err)}") from err
    model.preprocess["img_size"] = preprocess.get("img_size")
    return model


def _checked_preprocess(preprocess: dict) -> dict:
    """The checkpoint's framing, refused in one line where it cannot frame an image: a damaged or
    hand-edited file with ``img_size`` 0 ended in a loader worker's traceback, a zero ``std`` in
    scores of NaN."""
    if not isinstance(preprocess, dict):
        raise CheckpointError(f"the checkpoint's preprocess is {type(preprocess).__name__}, not a mapping")
    size = preprocess.get("img_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise CheckpointError(f"the checkpoint's preprocess.img_size={size!r} is not a positive whole number of "
                              "pixels; is the file damaged or edited?")  # fmt: skip
    for key in ("mean", "std"):
        values = preprocess.get(key)
        if values is None:
            continue
        if not (isinstance(values, (list, tuple)) and len(values) == 3
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)):  # fmt: skip
            raise CheckpointError(f"the checkpoint's preprocess.{key}={values!r} is not three finite numbers "
                                  "(one per colour channel); is the file damaged or edited?")  # fmt: skip
        if key == "std" and min(values) <= 0:
            raise CheckpointError(f"the checkpoint's preprocess.std={values!r} holds a value that is not positive "
                                  "(images are divided by it); is the file damaged or edited?")  # fmt: skip
    return preprocess


def _one_line(err: BaseException, limit: int = 400) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_PROXY_SETTINGS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached, told by one name lookup of its host; None when it may
    be. Offline, the hub's client retried each weights file for about 50 s, a warning per try, before
    the one line. Behind a proxy the proxy resolves the name, so nothing is told here."""
    from huggingface_hub import constants

    if constants.is_offline_mode() or any(os.environ.get(setting) for setting in _PROXY_SETTINGS):
        return None
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError as err:
        return f"{host}: {err.strerror or err}"
    return None


@contextlib.contextmanager
def _hub_cache_only(unreachable: str | None) -> Iterator[None]:
    """The hub's offline mode while ``unreachable`` says why it is: weights already in the local cache
    still load, and anything else fails at once instead of after the client's retries."""
    if not unreachable:
        yield
        return
    from huggingface_hub import constants

    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
