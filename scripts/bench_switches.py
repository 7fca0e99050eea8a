"""What each fast-path switch gives on this machine: task=bench with the defaults, then with each switch set the other way.

    python scripts/bench_switches.py                                   # this device's switches, the embedded data
    python scripts/bench_switches.py --repeats 2 -- dataset.img_size=256 train.precision=bf16
    python scripts/bench_switches.py --switch train.compile=true --switch dataset.decode=cuda -- dataset.img_size=256

Each setting is one ``scripts/main.py task=bench <overrides after --> <switch>`` in its own process,
so every switch meets a fresh interpreter and a fresh CUDA context. With ``--repeats N`` the settings
take turns N times and each figure is the median over its runs (a machine's speed drifts over
minutes). From each bench.json it keeps (a), (b), (c), the ratios b/a and c/a_eval, the warm-up
(compile) time and the peak memory, and gives (b) and (c) relative to the defaults' (above 1: the
switch's other side is faster). Prints the table and writes ``<out>/switches.json`` (by default under
``paths.log_dir``, as the overrides compose it). Every setting's config is composed before the first
run, so a mistyped key is refused at once. A setting whose run fails stops the comparison: what was
measured before it is still written, the failed setting marked with its run's own error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from deepfake.errors import UserError, error_line
from deepfake.tasks.composition import composed_value
from deepfake.tasks.flags import check_flags

REPO = Path(__file__).resolve().parents[1]

# Each switch set against its default (README, "The fast path").
CUDA_SWITCHES = [
    "train.compile=true", "dataset.decode=cuda", "dataset.cache=all", "train.log_every_n_batches=1",
    "deterministic=true", "dataset.num_workers=0", "train.channels_last=true", "optimizer.fused=false",
    "train.background_checkpoints=false",
]  # fmt: skip
CPU_SWITCHES = ["optimizer.fused=false", "train.background_checkpoints=false", "dataset.cache=all"]

# What each run contributes: name -> (bench.json section, key).
FIGURES = {
    "a": ("figures", "bare_train_step"), "b": ("figures", "train_pipeline"), "c": ("figures", "eval_pipeline"),
    "b/a": ("ratios", "train_pipeline_over_bare_step"), "c/a_eval": ("ratios", "eval_pipeline_over_bare_forward"),
}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="overrides every run shares (after --)")
    parser.add_argument("--switch", action="append", dest="switches", metavar="KEY=VALUE",
                        help="a setting to compare with the defaults (repeatable); default: this device's")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="turns the settings take; figures are medians")
    parser.add_argument("--out", type=Path, help="default: <paths.log_dir>/bench_switches")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: give at least 1")
    try:
        out = (args.out or configured_log_dir(args.overrides) / "bench_switches").resolve()
    except UserError as error:
        print(error_line(str(error)), file=sys.stderr)
        return 2
    settings = ["defaults", *(args.switches or default_switches(args.overrides))]
    try:
        check_settings(settings, args.overrides)
    except UserError as error:
        print(error_line(str(error)), file=sys.stderr)
        return 2
    runs: dict[str, list[dict]] = {setting: [] for setting in settings}
    failure = None
    for turn in range(args.repeats):
        for number, setting in enumerate(settings):
            print(f"[{turn + 1}/{args.repeats}] {setting}", flush=True)
            report, failure = bench_once(setting, args.overrides, out / f"{turn}_{number}")
            if failure:
                break
            runs[setting].append(report)
        if failure:
            break
    if runs["defaults"]:  # the others are set against the defaults: nothing to compare without them
        write_report(out, args, runs, failure)
    if failure:
        print(error_line(f"task=bench with {failure['setting']} failed ({failure['exit_code']}): {failure['error']}"),
              file=sys.stderr)  # fmt: skip
        return 2 if failure["user_error"] else 1
    return 0


def configured_log_dir(overrides: list[str]) -> Path:
    """``paths.log_dir`` as the runs will compose it (DEEPFAKE_ROOT, paths.root_dir, paths.log_dir)."""
    return Path(composed_value(REPO / "conf", ["task=bench", *overrides], lambda cfg: cfg.paths.log_dir))


def check_settings(settings: list[str], overrides: list[str]) -> None:
    """Compose every setting's config before the first run: a mistyped key or override fails in a
    second, not after the runs before it (minutes each on a GPU at 256 px)."""
    for setting in settings:
        command_line = ["task=bench", *overrides, *([] if setting == "defaults" else [setting])]
        # as main.py checks a run's: text for a true/false switch (optimizer.fused=flase) is refused too
        composed_value(REPO / "conf", command_line, lambda cfg, line=command_line: check_flags(cfg, line, "config"))


def bench_once(setting: str, overrides: list[str], run_dir: Path) -> tuple[dict | None, dict | None]:
    """``(bench.json, None)`` of one ``task=bench`` with ``setting``, or ``(None, failure)``."""
    shutil.rmtree(run_dir, ignore_errors=True)  # this script's own dir: a rerun measures afresh
    extra = [] if setting == "defaults" else [setting]
    command = [sys.executable, str(REPO / "scripts" / "main.py"), "task=bench", *overrides, *extra,
               f"hydra.run.dir={run_dir}"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode == 0:
        return json.loads((run_dir / "bench.json").read_text()), None
    error, hydra_refused = child_error(result.stderr)
    # main.py exits 2 on a user's mistake; Hydra refuses a bad override itself, with exit 1.
    user_error = result.returncode == 2 or hydra_refused
    return None, {"setting": setting, "exit_code": result.returncode, "error": error, "user_error": user_error}


HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"


def child_error(stderr: str) -> tuple[str, bool]:
    """``(the failed run's own error, whether Hydra refused its config)``: main.py's ERROR line (a user's
    mistake, or the bug it names above its traceback), else Hydra's message above its HYDRA_FULL_ERROR
    hint (that hint, the last line, hid "Could not override 'nosuchkey'"), else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR ") or "[ERROR]" in line]
    if errors:
        return errors[-1].removeprefix("ERROR "), False
    hint = next((number for number, line in enumerate(lines) if line.startswith(HYDRA_HINT)), None)
    if hint:
        return " ".join(lines[:hint]), True
    return (lines or ["(no output)"])[-1], False


def write_report(out: Path, args, runs: dict[str, list[dict]], failure: dict | None) -> None:
    """switches.json and the table of what was measured; a failed setting is marked, not dropped."""
    table = summarise({setting: reports for setting, reports in runs.items() if reports})
    if failure:
        table.setdefault(failure["setting"], {})["failed"] = f"exit {failure['exit_code']}: {failure['error']}"
    report = {"overrides": args.overrides, "repeats": args.repeats, "machine": runs["defaults"][0]["machine"],
              "settings": table, "not_run": [setting for setting, reports in runs.items() if setting not in table]}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "switches.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(table)
    print(out / "switches.json")


def default_switches(overrides: list[str]) -> list[str]:
    """The CUDA list where the runs will have a GPU (train.device auto or cuda), the CPU list otherwise."""
    device = next((o.split("=", 1)[1] for o in overrides if o.startswith("train.device=")), "auto")
    if device == "cpu":
        return CPU_SWITCHES
    import torch  # only here: the switches given on the command line need no torch in this process

    return (
        CUDA_SWITCHES if torch.cuda.is_available() and (device == "auto" or device.startswith("cuda")) else CPU_SWITCHES
    )


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Per setting: the median of each figure over its runs, and (b), (c) over the defaults'."""
    table = {}
    for setting, reports in runs.items():
        row = {}
        for name, (section, key) in FIGURES.items():
            values = [r[section][key]["images_per_s"] if section == "figures" else r[section][key] for r in reports]
            row[name] = round(statistics.median(values), 3)
        pipeline = [r["figures"]["train_pipeline"] for r in reports]
        row["warmup_s"] = round(statistics.median(p["warmup_s"] for p in pipeline), 2)
        row["peak_rss_mib"] = max(p["peak_rss_mib"] for p in pipeline)
        if "cuda_max_allocated_mib" in pipeline[0]:
            row["cuda_max_allocated_mib"] = max(p["cuda_max_allocated_mib"] for p in pipeline)
        table[setting] = row
    for row in table.values():
        for name in ("b", "c"):
            row[f"{name}_vs_defaults"] = round(row[name] / table["defaults"][name], 3)
    return table


def print_table(table: dict[str, dict]) -> None:
    columns = ["a", "b", "c", "b/a", "c/a_eval", "b_vs_defaults", "c_vs_defaults", "warmup_s", "peak_rss_mib"]
    if any("cuda_max_allocated_mib" in row for row in table.values()):
        columns.append("cuda_max_allocated_mib")
    width = max(len(setting) for setting in table)
    print(f"{'setting':<{width}}  " + "  ".join(f"{c:>13}" for c in columns))
    for setting, row in table.items():
        failed = f"  failed ({row['failed']})" if "failed" in row else ""
        print(f"{setting:<{width}}  " + "  ".join(f"{row.get(c, ''):>13}" for c in columns) + failed)


if __name__ == "__main__":
    sys.exit(main())
