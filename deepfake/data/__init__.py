"""Datasets: Kaggle-style CSVs, robust image loading, transforms, the synthetic set, batches."""

from deepfake.data.batches import split_into_batches, write_batches
from deepfake.data.csv_dataset import CsvImageDataset, read_raw_csv, read_split_csv
from deepfake.data.images import load_rgb
from deepfake.data.synthetic import generate_synthetic_dataset
from deepfake.data.transforms import build_eval_transform, build_train_transform

__all__ = [
    "CsvImageDataset",
    "build_eval_transform",
    "build_train_transform",
    "generate_synthetic_dataset",
    "load_rgb",
    "read_raw_csv",
    "read_split_csv",
    "split_into_batches",
    "write_batches",
]
