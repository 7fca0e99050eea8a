"""Every kind of bad input through scripts/main.py: one clear line naming the file, row or key, a
non-zero exit, and nothing in the registry. Also: damaged images under the limit, duplicated rows,
the dataset manifest, a non-finite loss, and files that must never be trusted (a code-carrying
pickle, an edited run dir)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import TINY_DATA, error_lines, registry

from deepfake.tracking.checkpoint import CHECKPOINT_FORMAT
from reliability.faults import ENV, RELIABLE, csv_rows, run, start, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _csv(folder: Path, name: str, frame_or_text) -> Path:
    path = folder / name
    if isinstance(frame_or_text, pd.DataFrame):
        frame_or_text.to_csv(path, index=False)
    elif isinstance(frame_or_text, bytes):
        path.write_bytes(frame_or_text)
    else:
        path.write_text(frame_or_text)
    return path


def _cases(work: Path, data: Path, best: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (overrides, substrings the single ERROR line must hold)."""
    synthetic = data / "synthetic" / TINY_DATA
    train = pd.read_csv(synthetic / "train.csv")
    bad_label = train.copy()
    bad_label.loc[1, "label"] = 7
    outside = train.copy()
    outside.loc[2, "path"] = "../../../../etc/passwd"
    foreign = work / "foreign.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    evil = work / "evil.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "model": _Payload(work / "pwned")}, evil)

    image = synthetic / "real_vs_fake" / "real-vs-fake" / train["path"][0]
    (work / "a_folder.onnx").mkdir()
    (work / "a_file").write_text("")
    faces = ["task=predict", f"ckpt={best}", f"predict.input={image}", "predict.face_crop=true"]

    def csv_case(name, content, *expected):
        return [f"dataset.train_csv={_csv(work, name, content)}"], [name, *expected]

    return {
        "csv missing": ([f"dataset.train_csv={work / 'absent.csv'}"], ["absent.csv", "not found"]),
        "csv unreadable": csv_case("binary.csv", b"\xff\xfe\x00\x81garbage\x00\n\x80\x81,\x00\n", "cannot read CSV"),
        "csv empty": csv_case("empty.csv", "", "empty"),
        "no path column": csv_case("nopath.csv", train.drop(columns=["path"]), "no column 'path'"),
        "no label column": csv_case("nolabel.csv", train.drop(columns=["label"]), "no column 'label'"),
        "label outside the classes": csv_case("label7.csv", bad_label, ":3:", "'7' is not 0 or 1"),
        "path outside root_dir": csv_case("escape.csv", outside, ":4:", "outside the image root"),
        "unknown config key": (["no_such_key=1"], ["no_such_key"]),
        "unknown group option": (["backbone=no_such_backbone"], ["no_such_backbone"]),
        "img_size the backbone cannot take": (
            ["backbone.name=test_vit", "dataset.img_size=33"], ["dataset.img_size=33", "test_vit"]),
        "ckpt not ours": (["task=test", f"ckpt={foreign}"], [str(foreign), "not a deepfake checkpoint"]),
        "ckpt code-carrying pickle": (["task=test", f"ckpt={evil}"], [str(evil), "refused"]),
        "ckpt of another backbone": (
            [f"init_from={best}", "backbone.name=test_vit"], [str(best), "'test_resnet'", "'test_vit'"]),
        "missing weights file": (["backbone.weights=/nonexistent/w.pth"], ["backbone.weights=/nonexistent/w.pth"]),
        "model timm does not have": (["backbone.name=no_such_net"], ["backbone.name='no_such_net' is not a timm model"]),
        "no global best yet": (["task=test", "ckpt=best"], ["no global best model yet"]),
        "resume dir that is no run dir": ([f"resume={work}"], [f"resume={work}", "not a run dir"]),
        "a number that is not one": (["dataset.batch_size=all"], ["dataset.batch_size=all is not an integer"]),
        "a launcher without -m": (["hydra/launcher=submitit_local"], ["hydra/launcher=submitit_local", "add -m"]),
        "validation of one class": (
            [f"dataset.val_csv={_csv(work, 'fakes.csv', train[train.label == 0])}"], ["fakes.csv", "one class only"]),
        "training on one class": (  # it trained and registered a model
            [f"dataset.train_csv={_csv(work, 'reals.csv', train[train.label == 1])}"],
            ["reals.csv: train holds one class only", "dataset.train_csv"]),
        "an image folder that is not there": (
            [f"dataset.root_dir={work / 'no_images'}"], [f"dataset.root_dir={work / 'no_images'}", "folder not found"]),
        "an image size too small to generate": (["dataset.img_size=8"], ["dataset.generate.image_size=8", "too small"]),
        "a test CSV that is missing": (  # found only once training had ended
            ["dataset.test_csv=/nonexistent/test.csv"], ["dataset.test_csv=/nonexistent/test.csv does not exist"]),
        "a batch size that is no integer": (["dataset.batch_size=2.5"], ["dataset.batch_size=2.5 is not an integer"]),
        "epochs in words": (["phase.head_epochs=two"], ["phase.head_epochs=two is not an integer"]),
        "a negative learning rate": (["phase.lr_backbone=-0.1"], ["phase.lr_backbone=-0.1 must be 0 or more"]),
        "a negative clipping norm": (["train.grad_clip_norm=-1"], ["train.grad_clip_norm=-1 must be 0 or more"]),
        "an optimizer setting in words": (["optimizer.weight_decay=abc"], ["weight_decay=abc", "cannot be built"]),
        "a threshold that is no p(fake)": (  # refused only by the end-of-run test, once trained and registered
            ["eval.threshold=1.5"], ["eval.threshold=1.5 must be a p(fake) between 0 and 1"]),
        "a test set that cannot be read": (  # found once training had ended: its AUC of 0.5 registered
            [f"dataset.test_csv={_csv(work, 'unread.csv', train.assign(path='nowhere/' + train['path']))}"],
            ["test set: ", "unread.csv", "images are damaged", "dataset.root_dir="]),
        "a true/false setting in words": (  # the text "no" is true: it tested, and prune.apply=no deleted
            ["train.do_test=no"], ["train.do_test=no is not true or false"]),
        "an export opset in words": (["task=export", f"ckpt={best}", "export.opset=abc"],
                                     ["export.opset=abc is not an integer"]),
        "an export onto a folder": (  # refused before the graph is written
            ["task=export", f"ckpt={best}", f"export.output={work / 'a_folder.onnx'}"],
            [f"cannot write {work / 'a_folder.onnx'}: a folder of that name is there"]),
        "a face margin in words": ([*faces, "predict.face_margin=abc"], ["predict.face_margin=abc is not a finite"]),
        "a face detector setting in words": (
            [*faces, "predict.face_detector.max_side=wide"], ["predict.face_detector:", "max_side='wide'"]),
        "a cam setting used only after training": (  # it failed a run already registered and promoted
            ["train.do_cam=true", "cam.method=gradcamm"], ["cam.method='gradcamm'; use one of"]),
        "cam percentiles past 100": (["task=cam", f"ckpt={best}", "cam.road_percentiles=[150]"],
                                     ["cam.road_percentiles=[150] must be percentages of pixels in (0, 100]"]),
        "a timm backbone without its name": (  # OmegaConf's traceback once the data had been scanned
            ["backbone.name='???'"], ["backbone.name must be set: no default; add backbone.name=<value>"]),
        "a training setting in words": (["train.label_smoothing=abc"], ["train.label_smoothing=abc is not a finite"]),
        "a real label that is no label": (  # found once the data was generated and the run dir set up
            ["dataset.real_label=5"], ["dataset.real_label=5 must be 0 or 1", "set the one your CSVs use"]),
        "a negative listing limit": (["task=registry", "task.limit=-1"], ["task.limit=-1 must be a positive integer"]),
        "a lock setting in words": (["run_lock.stale_after_s=abc"], ["run_lock.stale_after_s=abc is not a finite"]),
        "cam fractions in words": (["task=cam", f"ckpt={best}", "cam.sanity_fractions=[abc]"],
                                   ["cam.sanity_fractions=abc is not a finite number"]),
        "a run folder that cannot be made": (  # Hydra's mkdir traceback, before any task ran
            [f"paths.log_dir={work / 'a_file'}/outputs"], ["cannot make run dirs in", "point paths.log_dir"]),
        "a seed in words": (["seed=abc"], ["seed=abc is not an integer"]),  # int()'s traceback, after the scan
    }  # fmt: skip


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, reliable_data, uninterrupted):
    work = tmp_path_factory.mktemp("bad_input")
    cases = _cases(work, reliable_data, uninterrupted / "best.pth")
    roots = {name: tmp_path_factory.mktemp("bad") for name in cases}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run, roots[name], reliable_data, *RELIABLE, *overrides)
            for name, (overrides, _) in cases.items()
        }
        results = {name: future.result() for name, future in futures.items()}
    return {name: (results[name], cases[name][1], roots[name], work) for name in cases}


CASES = [
    "csv missing", "csv unreadable", "csv empty", "no path column", "no label column", "label outside the classes",
    "path outside root_dir", "unknown config key", "unknown group option", "img_size the backbone cannot take",
    "ckpt not ours", "ckpt code-carrying pickle", "ckpt of another backbone", "missing weights file",
    "model timm does not have", "no global best yet", "resume dir that is no run dir", "a number that is not one",
    "validation of one class", "a launcher without -m", "training on one class",
    "an image folder that is not there", "an image size too small to generate", "a test CSV that is missing",
    "a batch size that is no integer", "epochs in words", "a negative learning rate", "a negative clipping norm",
    "an optimizer setting in words", "a threshold that is no p(fake)", "a true/false setting in words",
    "a test set that cannot be read", "an export opset in words", "an export onto a folder", "a face margin in words",
    "a face detector setting in words", "a cam setting used only after training", "cam percentiles past 100",
    "cam fractions in words", "a timm backbone without its name", "a training setting in words",
    "a lock setting in words", "a real label that is no label", "a negative listing limit",
    "a run folder that cannot be made", "a seed in words",
]  # fmt: skip


def test_every_bad_input_run_is_checked(bad_runs):
    """A case added to _cases but not to CASES would run and never be asserted."""
    assert sorted(bad_runs) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_ends_with_one_clear_line_and_nothing_registered(case, bad_runs):
    result, expected, root, work = bad_runs[case]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert not (root / "models" / "model_metadata.json").exists()
    assert not list((root / "outputs").glob("*/*/*.pth")) if (root / "outputs").is_dir() else True
    if case.startswith("unknown"):  # Hydra's own message, before any of our code runs
        assert all(text in output for text in expected) and "Traceback" not in output, output
        return
    assert result.returncode == 2 and "Traceback" not in output, output
    lines = error_lines(result)
    assert len(lines) == 1, output
    assert all(text in lines[0] for text in expected), lines[0]
    assert not (work / "pwned").exists()


def _damaged_copy(tmp_path: Path, reliable_data: Path, n_damaged: int) -> tuple[Path, list[str]]:
    data = tmp_path / "data"
    shutil.copytree(reliable_data, data)
    root = data / "synthetic" / TINY_DATA / "real_vs_fake" / "real-vs-fake"
    paths = pd.read_csv(data / "synthetic" / TINY_DATA / "train.csv")["path"].tolist()[:n_damaged]
    for number, relative in enumerate(paths):
        image = root / relative
        image.write_bytes(b"" if number % 2 else image.read_bytes()[:200])  # empty, or truncated
    return data, paths


def test_damaged_images_above_the_limit_stop_before_training(tmp_path, reliable_data, uninterrupted):
    data, damaged = _damaged_copy(tmp_path, reliable_data, 2)  # 2 of 64 = 3% > 1%
    result = run(tmp_path, data, *RELIABLE)
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "2 of 64 images are damaged" in lines[0] and "dataset.max_bad_fraction=0.01" in lines[0]
    assert all(path in lines[0] for path in damaged)
    assert lines[0].endswith(
        f"(its paths are read under dataset.root_dir={data / 'synthetic' / TINY_DATA / 'real_vs_fake' / 'real-vs-fake'})"
    )
    assert "epoch 1" not in result.stderr and registry(tmp_path)["runs"] == []


def test_damaged_images_below_the_limit_and_duplicated_rows_only_warn(tmp_path, reliable_data, uninterrupted):
    data, damaged = _damaged_copy(tmp_path, reliable_data, 2)
    train = pd.read_csv(data / "synthetic" / TINY_DATA / "train.csv")
    duplicated = _csv(tmp_path, "train_dup.csv", pd.concat([train, train.iloc[[5]]]))
    result = run(tmp_path, data, *RELIABLE, "dataset.max_bad_fraction=0.05", f"dataset.train_csv={duplicated}",
                 "phase.finetune_epochs=0")  # fmt: skip
    assert result.returncode == 0, result.stderr
    [entry] = registry(tmp_path)["runs"]
    assert entry["status"] == "finished" and entry["damaged_images"]["train"] == 2
    log = (Path(entry["run_dir"]) / "run.log").read_text()  # the console wraps long lines; the file does not
    assert "1 row(s) repeat an earlier row's path (first: line 66 repeats line 7" in log
    warning = next(line for line in log.splitlines() if "will be replaced by black images" in line)
    assert all(path in warning for path in damaged)


def test_manifest_names_changed_appeared_and_vanished_files(tmp_path, reliable_data, uninterrupted):
    data = tmp_path / "data"
    shutil.copytree(reliable_data, data)
    root = data / "synthetic" / TINY_DATA / "real_vs_fake" / "real-vs-fake"
    made = subprocess.run([sys.executable, str(REPO / "scripts" / "make_manifest.py"), "--root-dir", str(root)],
                          capture_output=True, text=True, env=ENV, check=True)  # fmt: skip
    assert "images hashed" in made.stdout and (root / "manifest.csv").is_file()
    assert run(tmp_path, data, *RELIABLE, "dataset.verify_manifest=true", "phase.finetune_epochs=0").returncode == 0

    images = sorted(root.rglob("*.jpg"))
    images[0].write_bytes(images[0].read_bytes()[:-1] + b"\x00")
    shutil.copy(images[1], images[1].with_name("newcomer.jpg"))
    images[2].unlink()
    result = run(tmp_path, data, *RELIABLE, "dataset.verify_manifest=true")
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    for what, image in (("1 changed", images[0]), ("1 appeared", images[1].with_name("newcomer.jpg")),
                        ("1 vanished", images[2])):  # fmt: skip
        assert what in lines[0] and image.relative_to(root).as_posix() in lines[0], lines[0]


def test_non_finite_loss_registers_a_failed_run_and_keeps_the_last_good_epoch(tmp_path, reliable_data, uninterrupted):
    # SGD with an absurd backbone rate: the head epoch is fine, fine-tuning blows up.
    result = run(tmp_path, reliable_data, *RELIABLE, "optimizer=sgd", "phase.lr_backbone=1e30")
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 1 and "non-finite training loss" in lines[0], result.stderr
    assert "last.pth is the last good state" in lines[0]
    reg = registry(tmp_path)
    [entry] = reg["runs"]
    assert entry["status"] == "failed" and entry["epochs"] == 1
    assert reg["best_run"] is None and not (tmp_path / "models" / "best_model.pth").exists()
    run_dir = Path(entry["run_dir"])
    assert torch.load(run_dir / "last.pth", weights_only=True)["trainer_state"]["epoch"] == 1


@pytest.mark.parametrize(
    ("override", "refused"),
    [("optimizer._target_=os.system", "optimizer._target_='os.system'"),
     ("+hydra.callbacks.evil._target_=os.system", "changes Hydra's own settings")],
)  # fmt: skip
def test_an_edited_run_dir_cannot_make_resume_build_anything(tmp_path, uninterrupted, reliable_data, override, refused):
    run_dir = tmp_path / "outputs" / "train" / "edited"
    shutil.copytree(uninterrupted, run_dir)
    overrides = run_dir / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + f"- {override}\n")
    result = run(tmp_path, reliable_data, f"resume={run_dir}")
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 1 and refused in lines[0], result.stdout + result.stderr
    assert registry(tmp_path)["runs"] == []


@pytest.mark.parametrize(("refused", "said"), [("backbone.name=resnet18", "resnet18"),
                                               ("train.ema.enabled=true", "holds no moving average")])  # fmt: skip
def test_a_refused_resume_puts_back_the_runs_own_overrides(tmp_path, uninterrupted, reliable_data, refused, said):
    """Hydra writes the typed overrides into .hydra/overrides.yaml before the task can refuse them; left
    there, every later plain resume= would be refused the same way. The run stays "stopped" in its
    status.json (it was written "failed", though its last.pth was untouched and resumable), the
    refusal noted beside."""
    run_dir = tmp_path / "outputs" / "train" / "copied"  # unregistered here: not a finished run
    shutil.copytree(uninterrupted, run_dir)
    stopped = {**json.loads((run_dir / "status.json").read_text()), "status": "stopped", "error": "RunStopped"}
    (run_dir / "status.json").write_text(json.dumps(stopped))
    overrides = run_dir / ".hydra" / "overrides.yaml"
    before = overrides.read_text()
    result = run(tmp_path, reliable_data, f"resume={run_dir}", refused)
    lines = error_lines(result)
    assert result.returncode == 2 and len(lines) == 1 and said in lines[0], result.stdout + result.stderr
    assert overrides.read_text() == before
    status = json.loads((run_dir / "status.json").read_text())
    assert {**status, "resume_failed": None} == {**stopped, "resume_failed": None}
    assert f"ERROR {status['resume_failed']['error']}" == lines[0] and status["resume_failed"]["exit_code"] == 2
    assert run(tmp_path, reliable_data, f"resume={run_dir}").returncode == 0  # as typed: nothing to repeat


def test_resume_true_goes_on_with_the_stopped_run_not_a_newer_one_refused_for_a_typo(
    tmp_path, uninterrupted, reliable_data
):
    """A user's walkthrough: run A stopped (SIGTERM), run B refused (dataset.batch_size=0); resume=true
    took B, said it was "stopped during its first epoch" and failed again on the same line, exit 2."""
    stopped = tmp_path / "outputs" / "train" / "2000-01-01_00-00-00_stopped"  # older than any new run
    shutil.copytree(uninterrupted, stopped)  # unregistered here: not a finished run
    status = json.loads((stopped / "status.json").read_text())
    (stopped / "status.json").write_text(json.dumps({**status, "status": "stopped", "error": "RunStopped"}))
    refused = run(tmp_path, reliable_data, *RELIABLE, "dataset.batch_size=0")
    assert refused.returncode == 2 and error_lines(refused) == ["ERROR dataset.batch_size=0 must be a positive integer"]
    [typo] = [d for d in (tmp_path / "outputs" / "train").iterdir() if d != stopped]

    result = run(tmp_path, reliable_data, "resume=true")
    assert result.returncode == 0 and not error_lines(result), result.stdout + result.stderr
    assert (
        f"resume=true: {stopped}, the newest run that can go on; passed over 1 newer run(s): {typo.name}: it failed"
        in result.stdout
    )
    assert "resuming from" in (stopped / "run.log").read_text()
    assert [entry["run_dir"] for entry in registry(tmp_path)["runs"]] == [str(stopped)]

    # A run refused once its model was built, resumed by its dir, starts over saying how it ended (it said "stopped").
    refused = run(tmp_path, reliable_data, *RELIABLE, "train.grad_clip_norm=-1")
    [error] = error_lines(refused)
    [missing] = [d for d in (tmp_path / "outputs" / "train").iterdir() if d not in (stopped, typo)]
    result = run(tmp_path, reliable_data, f"resume={missing}")
    assert result.returncode == 2 and error_lines(result) == [error], result.stdout + result.stderr
    said = f"{missing} has no last.pth yet (it failed before its first epoch ended: {error[len('ERROR ') :]})"
    assert said in (missing / "run.log").read_text()


def test_a_models_dir_unwritable_since_the_start_is_one_line_and_resume_registers_the_run(tmp_path, reliable_data):
    """The pre-flight check had found it writable; at registration the lock's OSError was a traceback
    ("the job failed with a bug") without a word on the trained run or how to register it."""
    proc = start(tmp_path, reliable_data, *RELIABLE)
    run_dir = wait_for(proc, tmp_path, lambda run_dir: csv_rows(run_dir) >= 1)
    assert run_dir is not None, proc.communicate()
    models = tmp_path / "models"
    models.rename(tmp_path / "models.away")
    models.write_text("a file where the models dir was")  # as root, no permission makes a folder unwritable
    out, err = proc.communicate(timeout=300)

    [line] = [text for text in (out + err).splitlines() if text.startswith("ERROR ")]
    assert proc.returncode == 2 and "Traceback" not in out + err, out + err
    assert f"the registry {models / 'model_metadata.json'} cannot be written" in line
    assert line.endswith(f"the trained run is kept: resume with: python scripts/main.py resume={run_dir} "
                         "(it registers it)")  # fmt: skip

    models.unlink()
    (tmp_path / "models.away").rename(models)
    resumed = run(tmp_path, reliable_data, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    [entry] = registry(tmp_path)["runs"]
    assert entry["status"] == "finished" and entry["run_name"] == run_dir.name
