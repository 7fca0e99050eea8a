"""Train on one synthetic generator family, test on every family: the train x test AUC matrix.

    python scripts/generalisation_matrix.py                       # the embedded default, ~10 minutes on 2 CPU cores
    python scripts/generalisation_matrix.py --out /tmp/gen phase.finetune_epochs=2   # any override for every run

The trainings and tests of README's "Generalisation across generators", through scripts/main.py, all
under ``--out`` (README lists how they differ from its commands): one training per family on its own
generated data (``dataset.root=<out>/data/synthetic_<family>``), then ``task=test`` of each model
with every family's test set in ``eval.sets``. A run that fails ends the script with its exit status
(its ERROR line above): a second launch into the same ``--out`` is refused at its first training. Prints the matrix (AUC, and real / fake
accuracy at each model's own threshold chosen on validation) and writes it to ``<out>/matrix.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("transposed_conv", "upsampling", "blending")


def main_py(*overrides: str) -> None:
    status = subprocess.run([sys.executable, str(REPO / "scripts" / "main.py"), *overrides]).returncode
    if status:  # main.py said why; its status, not a CalledProcessError traceback
        sys.exit(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "generalisation")
    parser.add_argument("overrides", nargs="*", help="overrides given to every run, e.g. seed=1")
    args = parser.parse_args()
    out = args.out.resolve()
    data = {family: out / "data" / f"synthetic_{family}" for family in FAMILIES}
    common = [f"paths.models_dir={out / 'models'}", *args.overrides]
    for family in FAMILIES:
        main_py(f"dataset.generate.generator={family}", f"dataset.root={data[family]}",
                f"hydra.run.dir={out / 'train' / family}", "train.do_test=false", *common)  # fmt: skip
    sets = ",".join(
        f"{f}:{{csv:{data[f] / 'test.csv'},root_dir:{data[f] / 'real_vs_fake' / 'real-vs-fake'}}}" for f in FAMILIES
    )
    matrix = {}
    for family in FAMILIES:
        test_dir = out / "test" / family
        main_py("task=test", f"ckpt={out / 'train' / family}", f"dataset.generate.generator={family}",
                f"dataset.root={data[family]}",
                f"eval.sets={{{sets}}}", f"hydra.run.dir={test_dir}", *common)  # fmt: skip
        rows = json.loads((test_dir / "metrics_test.json").read_text())["sets"]
        matrix[family] = {row["set"]: {k: row[k] for k in ("auc", "real_accuracy", "fake_accuracy")}
                          for row in rows if row["set"] in FAMILIES}  # fmt: skip
    (out / "matrix.json").write_text(json.dumps(matrix, indent=2) + "\n")
    print("\n| trained on \\ tested on | " + " | ".join(FAMILIES) + " |")
    print("|---" * (len(FAMILIES) + 1) + "|")
    for family in FAMILIES:
        cells = [f"{c['auc']:.3f} ({c['real_accuracy']:.2f} / {c['fake_accuracy']:.2f})"
                 for c in (matrix[family][f] for f in FAMILIES)]  # fmt: skip
        print(f"| {family} | " + " | ".join(cells) + " |")
    print(f"\nAUC (real / fake accuracy at the model's stored threshold); {out / 'matrix.json'}")


if __name__ == "__main__":
    main()
