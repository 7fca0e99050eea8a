"""Detector models: any timm backbone with a one-logit head, plus CvT registered with timm."""

from deepfake.models import cvt  # noqa: F401  (registers cvt_13 / cvt_21 with timm)
from deepfake.models.factory import create_detector, detector_from_checkpoint

__all__ = ["create_detector", "detector_from_checkpoint"]
