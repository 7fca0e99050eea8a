"""Building detectors: any timm name, local weights, clear errors when weights are missing or wrong."""

import pytest
import timm
import torch

from deepfake.errors import CheckpointError, ConfigError
from deepfake.models import create_detector


def test_any_timm_model_becomes_a_one_logit_detector_with_its_preprocessing():
    model = create_detector("test_efficientnet")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1)
    assert model.get_classifier().out_features == 1
    assert model.detector_spec == {"name": "test_efficientnet", "kwargs": {}}
    assert model.preprocess["interpolation"] in ("bicubic", "bilinear")


def test_preprocessing_overrides_win_over_the_models_defaults():
    model = create_detector("test_resnet", mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], interpolation="bilinear")
    assert model.preprocess == {"mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}


def test_timm_kwargs_are_passed_and_recorded():
    model = create_detector("test_vit", dynamic_img_size=True)
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 1)
    assert model.detector_spec["kwargs"] == {"dynamic_img_size": True}


def test_local_weights_load_the_backbone_and_drop_the_imagenet_classifier(tmp_path):
    torch.manual_seed(1)
    imagenet = timm.create_model("test_resnet", num_classes=1000)
    weights = tmp_path / "test_resnet.pth"
    torch.save(imagenet.state_dict(), weights)
    model = create_detector("test_resnet", weights=str(weights))
    source = imagenet.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            assert value.shape[0] == 1  # a fresh one-logit head
        else:
            assert torch.equal(value, source[key]), key


def test_weights_of_another_architecture_are_refused_with_the_file_named(tmp_path):
    weights = tmp_path / "other.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=1000).state_dict(), weights)
    with pytest.raises(CheckpointError, match=r"backbone.weights=.*other.pth does not fit test_resnet"):
        create_detector("test_resnet", weights=str(weights))


def test_missing_weights_file_and_unknown_names_are_user_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        create_detector("test_resnet", weights=str(tmp_path / "absent.pth"))
    with pytest.raises(ConfigError, match="not a timm model"):
        create_detector("resnet_that_does_not_exist")


def test_pretrained_without_a_reachable_hub_says_how_to_pass_a_local_file(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE at import; without it a closed network costs a long timeout.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="backbone.weights=/path/to/file"):
        create_detector("resnet18", pretrained=True)


def test_a_hub_whose_name_does_not_resolve_fails_at_once_and_leaves_offline_mode_as_it_was(
    monkeypatch, tmp_path, caplog
):
    """Offline without HF_HUB_OFFLINE, the hub's client retried each file for about 50 s before the line."""
    from huggingface_hub import constants

    for setting in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(setting, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 2606)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # no weights cached: nothing to fall back on
    with pytest.raises(CheckpointError, match=r"the model hub is unreachable: hub\.invalid: .*backbone\.weights="):
        create_detector("resnet18", pretrained=True)
    assert not [record for record in caplog.records if "Retrying" in record.getMessage()]  # the cache only
    assert constants.HF_HUB_OFFLINE is False  # offline mode only while loading


def test_a_saved_cvt_is_rebuilt_with_the_activation_its_weights_chose(tmp_path):
    from deepfake.models import detector_from_checkpoint

    torch.manual_seed(0)
    microsoft_format = tmp_path / "cvt13.pth"  # our parameter names are the Microsoft release's
    torch.save(timm.create_model("cvt_13", num_classes=1000, act_layer="quick_gelu").state_dict(), microsoft_format)
    model = create_detector("cvt_13", weights=str(microsoft_format), act_layer=None).eval()
    assert model.detector_spec["kwargs"]["act_layer"] == "quick_gelu"
    rebuilt = detector_from_checkpoint(
        {"model_spec": model.detector_spec, "model": model.state_dict(), "preprocess": {"img_size": 64}}
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_an_argument_the_model_does_not_take_is_a_config_error():
    with pytest.raises(ConfigError, match=r"backbone test_resnet does not take \['no_such_arg'\]"):
        create_detector("test_resnet", no_such_arg=1)


@pytest.mark.parametrize(("preprocess", "message"), [
    ({"img_size": 0}, r"preprocess.img_size=0 is not a positive whole number"),  # a loader worker's traceback
    ({"img_size": 32.5}, r"preprocess.img_size=32.5 is not"),
    ({"img_size": True}, r"preprocess.img_size=True is not"),
    ({"img_size": 32, "std": [0.5, 0.0, 0.5]}, r"preprocess.std=\[0.5, 0.0, 0.5\] holds a value that is not positive"),
    ({"img_size": 32, "mean": [0.5, 0.5]}, r"preprocess.mean=\[0.5, 0.5\] is not three finite numbers"),
    ({"img_size": 32, "mean": [0.5, "x", float("nan")]}, r"preprocess.mean=.* is not three finite numbers"),
    ([32], r"the checkpoint's preprocess is list, not a mapping"),
])  # fmt: skip
def test_a_checkpoint_whose_framing_cannot_frame_an_image_is_refused_in_one_line(preprocess, message):
    from deepfake.models import detector_from_checkpoint

    model = create_detector("test_resnet")
    checkpoint = {"model_spec": model.detector_spec, "model": model.state_dict(), "preprocess": preprocess}
    with pytest.raises(CheckpointError, match=message):
        detector_from_checkpoint(checkpoint)
    good = {**checkpoint, "preprocess": {"img_size": 32, **model.preprocess}}
    assert detector_from_checkpoint(good).preprocess["img_size"] == 32
