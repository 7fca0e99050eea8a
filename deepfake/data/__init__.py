"""Datasets: Kaggle-style CSVs, robust image loading, transforms, the synthetic set, batches,
the damaged-image scan and the sha256 manifest."""

from deepfake.data.batches import split_into_batches, write_batches
from deepfake.data.csv_dataset import CsvImageDataset, read_raw_csv, read_split_csv
from deepfake.data.image_files import ImageFileDataset
from deepfake.data.images import load_rgb, probe_image
from deepfake.data.manifest import hash_tree, verify_manifest
from deepfake.data.scan import find_damaged
from deepfake.data.synthetic import generate_synthetic_dataset
from deepfake.data.transforms import build_eval_transform, build_train_transform, central_square

__all__ = [
    "CsvImageDataset",
    "ImageFileDataset",
    "build_eval_transform",
    "build_train_transform",
    "central_square",
    "find_damaged",
    "generate_synthetic_dataset",
    "hash_tree",
    "load_rgb",
    "probe_image",
    "read_raw_csv",
    "read_split_csv",
    "split_into_batches",
    "verify_manifest",
    "write_batches",
]
