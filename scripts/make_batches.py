"""Split the training and validation CSVs into N stratified batches.

    python scripts/make_batches.py --n-batches 5
    python scripts/make_batches.py --n-batches 5 dataset.csv_dir=/data/140k
    python scripts/make_batches.py --train-csv data/140k/train.csv --val-csv data/140k/valid.csv \
        --out-dir data/batches --n-batches 5 --seed 0

Writes <out-dir>/batch{K}/{train,valid}.csv (K = 1..N) in the input's Kaggle CSV format; train on
one with ``dataset=batch dataset.batch=K``. The defaults are where ``dataset=batch`` looks, read from
conf/ (the source's ``dataset.csv_dir`` and ``dataset.batches_dir`` under ``paths``), whatever the
working directory; config overrides after the options move them as they would move a run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deepfake.data.batches import write_batches
from deepfake.errors import UserError, error_line
from deepfake.tasks.composition import composed_value

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-csv", type=Path, help="default: <dataset.csv_dir>/train.csv")
    parser.add_argument("--val-csv", type=Path, help="default: <dataset.csv_dir>/valid.csv")
    parser.add_argument("--out-dir", type=Path, help="default: dataset.batches_dir (data/batches)")
    parser.add_argument("--n-batches", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-column", default="label")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. paths.root_dir=/data or dataset.csv_dir=..."
    )
    return parser.parse_args(argv)


def configured_paths(overrides: list[str]) -> dict[str, Path]:
    """The source CSVs and the batches dir as ``dataset=batch`` composes them."""
    csv_dir, batches_dir = composed_value(  # resolved as picked: a bad value is the overrides' error
        REPO / "conf",
        ["dataset=batch", *overrides],
        lambda cfg: (Path(cfg.dataset.csv_dir), Path(cfg.dataset.batches_dir)),
    )
    return {"train_csv": csv_dir / "train.csv", "val_csv": csv_dir / "valid.csv", "out_dir": batches_dir}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if None in (args.train_csv, args.val_csv, args.out_dir) or args.overrides:
            defaults = configured_paths(args.overrides)
            args.train_csv = args.train_csv or defaults["train_csv"]
            args.val_csv = args.val_csv or defaults["val_csv"]
            args.out_dir = args.out_dir or defaults["out_dir"]
        directories = write_batches(
            args.train_csv, args.val_csv, args.out_dir, args.n_batches, seed=args.seed, label_column=args.label_column
        )
    except UserError as error:
        print(error_line(str(error)), file=sys.stderr)
        return 2
    for directory in directories:
        print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
