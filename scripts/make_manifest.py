"""Write the sha256 manifest of a dataset's images, checked by dataset.verify_manifest=true.

    python scripts/make_manifest.py --root-dir data/140k/real_vs_fake/real-vs-fake
    python scripts/main.py dataset=kaggle_140k dataset.verify_manifest=true

The manifest (``path,bytes,sha256``, paths relative to the root) goes to <root-dir>/manifest.csv,
where dataset.manifest looks by default.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deepfake.data.manifest import hash_tree, manifest_text
from deepfake.errors import UserError, error_line
from deepfake.tracking.checkpoint import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root-dir", type=Path, required=True, help="the image root (dataset.root_dir)")
    parser.add_argument("--out", type=Path, help="manifest path (default: <root-dir>/manifest.csv)")
    args = parser.parse_args(argv)
    if not args.root_dir.is_dir():
        print(error_line(f"--root-dir {args.root_dir}: no such directory; pass the image root (dataset.root_dir)"),
              file=sys.stderr)  # fmt: skip
        return 2
    out = args.out or args.root_dir / "manifest.csv"
    started = time.perf_counter()
    try:
        digests = hash_tree(args.root_dir)
        atomic_write_text(out, manifest_text(args.root_dir, digests))  # --out a folder: one line too
    except UserError as error:
        print(error_line(str(error)), file=sys.stderr)
        return 2
    print(f"{len(digests)} images hashed in {time.perf_counter() - started:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
