"""Datasets: Kaggle-style CSVs, robust image loading, transforms, the synthetic set, batches,
the damaged-image scan, the decoded-image cache and the sha256 manifest.

Nothing is imported here: a task that only reads CSVs or lists files (task=registry) must not pay for
importing torch through the dataset classes. Import the submodules directly.
"""
