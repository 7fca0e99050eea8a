"""A whole training run of this project against timm's own train.py: same images, model, epochs, batch.

    git clone https://github.com/huggingface/pytorch-image-models /tmp/pim     # timm's train.py (not in its wheel)
    python scripts/compare_with_timm.py --timm-train /tmp/pim/train.py        # CvT-13, 64 px, 3 epochs, CPU
    python scripts/compare_with_timm.py --timm-train /tmp/pim/train.py --epochs 5 --device cuda --batch 64

Both fine-tune every parameter from a random start for ``--epochs`` epochs on the embedded dataset's
train split (linked into the class folders timm reads), validate on its valid split after
every epoch, and write their checkpoints; augmentation is a horizontal flip in both, no workers by
default, and timm's script gets this project's stochastic depth and label smoothing. Each is timed as a whole process, start-up included, and each epoch from its own log.
timm's script gets this project's models by importing ``deepfake.models`` before it runs (CvT-13 is
registered with timm there). With ``--repeats N`` the two run N times each, alternating, and the
ratio is the median over the pairs (the machine's speed drifts over minutes). Prints the times and
their ratio and writes ``<out>/timm_comparison.json``.
"""

from __future__ import annotations

import argparse
import compileall
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
# timm's train.py run after importing this project's models, so that --model cvt_13 resolves.
_RUN_TIMM = "import runpy, sys; import deepfake.models; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def timed(args: list[str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as handle:
        subprocess.run(args, check=True, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    return time.perf_counter() - started


def main() -> None:
    args = _parse()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    common = [f"paths.data_dir={data}", f"dataset.img_size={args.img_size}"]
    cfg = generate([f"backbone={args.model}", *common])
    images = image_folder(Path(cfg.dataset.csv_dir), out / "timm_images")
    # Each side's modules as compiled bytecode, as any second run finds them (pip compiled timm's
    # at install): where PYTHONDONTWRITEBYTECODE is set, this project's would be compiled in every run.
    for package in ("deepfake", "hydra_plugins"):
        compileall.compile_dir(REPO / package, quiet=1)
    ours_args, timm_args = _commands(args, cfg, common, images, out)
    # Alternating, each pair side by side: the machine's speed drifts over minutes.
    pairs = []
    for number in range(args.repeats):
        for run in (out / f"ours_{number}", out / "timm" / f"run_{number}"):
            shutil.rmtree(run, ignore_errors=True)
        pairs.append((timed([*ours_args, f"hydra.run.dir={out / f'ours_{number}'}"], out / f"ours_{number}.log"),
                      timed([*timm_args, "--experiment", f"run_{number}"], out / f"timm_{number}.log")))  # fmt: skip
    ours, timm = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    ratio = statistics.median(o / t for o, t in pairs)

    last = out / f"ours_{args.repeats - 1}" / "metrics_log.csv"
    our_epochs = [float(row["seconds"]) for row in csv.DictReader(last.open())]
    report = {
        "settings": {**{k: str(v) for k, v in vars(args).items()}, "train_images": _count(images / "train")},
        "whole_run_s": {"ours": round(ours, 2), "timm_train_py": round(timm, 2)},
        "pairs_s": [[round(o, 2), round(t, 2)] for o, t in pairs],
        "ours_over_timm_time": round(ratio, 3),
        "our_epoch_s": our_epochs,
    }
    (out / "timm_comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.model} at {args.img_size} px, batch {args.batch}, {args.epochs} epochs on {args.device}: "
          f"this project {ours:.1f} s, timm's train.py {timm:.1f} s (ratio {ratio:.3f}; pairs "
          f"{', '.join(f'{o:.1f}/{t:.1f}' for o, t in pairs)}); "
          f"epochs {', '.join(f'{s:.1f}' for s in our_epochs)} s; logs in {out}")  # fmt: skip


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timm-train", type=Path, required=True, help="timm's train.py (pytorch-image-models)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "timm_comparison")
    parser.add_argument("--model", default="cvt_13")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of each, alternating; the ratio is the median over the pairs")  # fmt: skip
    return parser.parse_args()


def _commands(args: argparse.Namespace, cfg: DictConfig, common: list[str], images: Path,
              out: Path) -> tuple[list[str], list[str]]:  # fmt: skip
    """The two training commands, the same model, images, epochs and settings for each."""
    ours_args = [sys.executable, "scripts/main.py", f"backbone={args.model}", *common, "phase.head_epochs=0",
                  f"phase.finetune_epochs={args.epochs}", "phase.warmup_epochs=0", f"phase.lr_backbone={args.lr}",
                  f"phase.lr_head={args.lr}", f"dataset.batch_size={args.batch}", f"dataset.num_workers={args.workers}",
                  f"train.device={args.device}", "train.do_test=false", "logger=none", "augment=flip",
                  f"paths.models_dir={out / 'models'}"]  # fmt: skip
    timm_args = [sys.executable, "-c", _RUN_TIMM, str(args.timm_train), "--data-dir", str(images),
                  "--train-split", "train", "--val-split", "valid", "--model", args.model, "--num-classes", "2",
                  "--img-size", str(args.img_size), "-b", str(args.batch), "--epochs", str(args.epochs),
                  "--opt", "adamw", "--lr", str(args.lr), "--weight-decay", "0.05", "--sched", "cosine",
                  "--warmup-epochs", "0", "--workers", str(args.workers), "--device", args.device, "--no-prefetcher",
                  "--scale", "1", "1", "--ratio", "1", "1", "--hflip", "0.5", "--color-jitter", "0", "--reprob", "0",
                  "--output", str(out / "timm"), "--log-interval", "1000",
                  # timm's defaults differ from this project's: its script smooths labels by 0.1 and
                  # leaves the model's stochastic depth at the model's default (0 for CvT-13).
                  "--smoothing", str(cfg.train.label_smoothing),
                  "--drop-path", str(cfg.backbone.get("drop_path_rate", 0.0)),
                  "--checkpoint-hist", "1"]  # fmt: skip
    return ours_args, timm_args


def generate(overrides: list[str]) -> DictConfig:
    """The embedded dataset as the training run composes it, generated before either run is timed;
    returns the run's config, whose settings timm's script is given where its defaults differ."""
    from hydra import compose, initialize_config_dir

    from deepfake import tasks  # noqa: F401  (registers the config resolvers)
    from deepfake.tasks.data_setup import ensure_dataset

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    ensure_dataset(cfg.dataset)
    return cfg


def image_folder(csv_dir: Path, folder: Path) -> Path:
    """The images the CSVs list, as the class folders timm's ImageFolder reads (symbolic links):
    the generated tree also holds the partial fakes' masks, which neither run must train on."""
    from deepfake.data.csv_dataset import read_split_csv

    for split in ("train", "valid"):
        frame = read_split_csv(csv_dir / f"{split}.csv", csv_dir / "real_vs_fake" / "real-vs-fake")
        for number, (path, target) in enumerate(zip(frame["path"], frame["target"])):
            link = folder / split / ("fake" if target else "real") / f"{number}{Path(path).suffix}"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(path)
    return folder


def _count(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


if __name__ == "__main__":
    main()
