"""task=audit and train.audit end to end: reports in the run dir, rendered in Chromium, strict exits."""

from __future__ import annotations

import json

import pytest
from audit_data import IMAGE_ROOT, leaky_items, write_dataset
from browser import render
from conftest import TINY
from helpers import error_lines, only_dir

pytestmark = pytest.mark.slow

# A file name that would be markup if the report did not escape it.
HOSTILE = "copy<b>&c.jpg"


@pytest.fixture(scope="module")
def leaky_csv_set(tmp_path_factory) -> list[str]:
    """A user's own Kaggle-format CSV set (not the generator's) with 3 test images copied from train."""
    root = write_dataset(tmp_path_factory.mktemp("own"), leaky_items(altered_name=HOSTILE))
    tiny_model = [o for o in TINY if not o.startswith("dataset.generate.")]  # this set is not generated
    return [*tiny_model, "dataset=kaggle_140k", f"dataset.csv_dir={root}", f"dataset.root_dir={root / IMAGE_ROOT}",
            "dataset.num_workers=0"]  # fmt: skip


def test_audit_of_the_embedded_default_passes_and_renders(tmp_path, main_runner):
    result = main_runner("task=audit", "audit.strict=true")

    run = only_dir(tmp_path / "outputs" / "audit")
    report = json.loads((run / "audit.json").read_text())
    assert {check: report[check]["verdict"]["level"] for check in ("basics", "leakage", "shortcuts", "spectra")} == {
        "basics": "pass", "leakage": "pass", "shortcuts": "pass", "spectra": "info"}  # fmt: skip
    assert report["shortcuts"]["groups"]["all features"]["auc"] < 0.7
    assert "in fakes that reals lack" in report["spectra"]["verdict"]["message"]
    assert "shortcut AUC per feature group" in result.stdout + result.stderr  # the console summary

    shown = render(run / "audit.html", tmp_path / "audit.png")
    assert shown.requests == [] and shown.broken_images == [] and not shown.is_blank()
    assert len(shown.images) >= 3 and all(img["src"].startswith("data:image/png") for img in shown.images)
    for heading in ("Verdicts", "Basics", "Leakage across splits", "Shortcut baseline", "Spectra"):
        assert heading in shown.text


def test_strict_audit_of_a_leaky_csv_set_fails_after_writing_its_reports(tmp_path, main_runner, leaky_csv_set):
    result = main_runner("task=audit", "audit.strict=true", "audit.write_clean_csvs=true", *leaky_csv_set,
                         check=False, tiny=False)  # fmt: skip

    errors = error_lines(result)
    assert result.returncode == 2 and len(errors) == 1
    assert "leakage" in errors[0] and "audit.strict=false" in errors[0]
    run = only_dir(tmp_path / "outputs" / "audit")
    report = json.loads((run / "audit.json").read_text())
    assert {c["later"]: (c["exact"], c["near"]) for c in report["leakage"]["counts"] if c["earlier"] == "train"} == {
        "valid": (0, 0), "test": (2, 1)}  # fmt: skip
    assert report["leakage"]["clean_csvs"]["test"]["dropped"] == 3
    assert (run / "clean" / "test.csv").is_file()
    # The overrides that train on them, for any dataset config (dataset.csv_dir misses dataset=batch's).
    clean = run / "clean"
    overrides = (f"dataset.train_csv={clean}/train.csv dataset.val_csv={clean}/valid.csv "
                 f"dataset.test_csv={clean}/test.csv")  # fmt: skip
    assert report["leakage"]["clean_overrides"] == overrides
    assert f"de-leaked CSVs in {clean}; train on them with {overrides}\n" in result.stdout + result.stderr

    page = (run / "audit.html").read_text()
    assert f"Train on them with {overrides}" in page
    assert HOSTILE not in page and "copy&lt;b&gt;&amp;c.jpg" in page
    shown = render(run / "audit.html", tmp_path / "audit.png")
    assert shown.requests == [] and shown.broken_images == []
    assert HOSTILE in shown.text  # the literal name, shown as text
    assert len(shown.images) >= 3 + 3  # the three pairs' thumbnails and the plots


def test_train_audit_warns_or_with_strict_stops_before_training(tmp_path, main_runner, leaky_csv_set):
    stopped = main_runner("train.audit=true", "audit.strict=true", *leaky_csv_set, check=False, tiny=False)

    assert stopped.returncode == 2 and len(error_lines(stopped)) == 1
    run = only_dir(tmp_path / "outputs" / "train")
    assert (run / "audit.html").is_file() and not (run / "best.pth").exists()
    assert not (tmp_path / "models" / "model_metadata.json").exists()

    warned = main_runner("train.audit=true", "train.do_test=false", *leaky_csv_set, tiny=False)
    assert "audit: leakage failed" in warned.stdout + warned.stderr
    trained = [p for p in (tmp_path / "outputs" / "train").iterdir() if p != run]
    assert len(trained) == 1 and (trained[0] / "best.pth").is_file() and (trained[0] / "audit.json").is_file()


@pytest.mark.parametrize(
    ("override", "messages"),
    [("audit.spectrum_split=validation",  # it used to audit train's spectra instead, silently
      ["audit.spectrum_split=validation: no such split here; use one of train, valid, test"]),
     ("dataset.root_dir=ROOT",  # a folder, but not the one the images are in: sklearn's traceback
      ["images could be read (the first, ROOT/", "check dataset.root_dir"])],
)  # fmt: skip
def test_an_audit_that_cannot_do_what_is_asked_says_so_in_one_line(tmp_path, main_runner, leaky_csv_set, override,
                                                                    messages):  # fmt: skip
    override, messages = override.replace("ROOT", str(tmp_path)), [m.replace("ROOT", str(tmp_path)) for m in messages]
    result = main_runner("task=audit", *leaky_csv_set, override, check=False, tiny=False)
    errors = error_lines(result)
    assert result.returncode == 2 and len(errors) == 1, result.stdout + result.stderr
    assert all(message in errors[0] for message in messages), errors[0]
