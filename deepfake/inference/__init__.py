"""Using a trained detector: find the images to score, crop faces, score with PyTorch or onnxruntime,
write predictions.csv and overlays, and export to ONNX.

Plain Python (no Hydra); task=predict and task=export wire it to the config. onnxruntime and
scikit-image (the face detector) are optional extras, imported only when used.
"""

from deepfake.inference.detector import Detector, OperatingPoint, load_detector
from deepfake.inference.inputs import ImageInputs, discover_inputs, is_image_file
from deepfake.inference.predictions import Row, prediction_table, write_predictions

__all__ = [
    "Detector", "ImageInputs", "OperatingPoint", "Row", "discover_inputs", "is_image_file", "load_detector",
    "prediction_table", "write_predictions",
]  # fmt: skip
