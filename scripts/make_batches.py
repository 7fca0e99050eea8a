"""Split the training and validation CSVs into N stratified batches.

    python scripts/make_batches.py --n-batches 5
    python scripts/make_batches.py --train-csv data/140k/train.csv --val-csv data/140k/valid.csv \
        --out-dir data/batches --n-batches 5 --seed 0

Writes <out-dir>/batch{K}/{train,valid}.csv (K = 1..N) in the input's Kaggle CSV format; train on
one with ``dataset=batch dataset.batch=K``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepfake.data.batches import write_batches
from deepfake.errors import UserError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-csv", type=Path, default=Path("data/140k/train.csv"))
    parser.add_argument("--val-csv", type=Path, default=Path("data/140k/valid.csv"))
    parser.add_argument("--out-dir", type=Path, default=Path("data/batches"))
    parser.add_argument("--n-batches", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-column", default="label")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        directories = write_batches(
            args.train_csv, args.val_csv, args.out_dir, args.n_batches, seed=args.seed, label_column=args.label_column
        )
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for directory in directories:
        print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
