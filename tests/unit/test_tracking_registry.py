"""The locked model registry and best-model promotion (deepfake.tracking.registry)."""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from filelock import FileLock

from deepfake.errors import CheckpointError, UserError
from deepfake.tracking.registry import Registry


def _registry(root: Path, lock_timeout: float = 10.0) -> Registry:
    return Registry(root / "models" / "model_metadata.json", root / "models" / "best_model.pth", lock_timeout)


def _checkpoint(root: Path, name: str) -> Path:
    path = root / "runs" / name / "best.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(f"weights of {name}".encode() * 100)
    return path


def _register(registry: Registry, root: Path, name: str, auc: Any, **extra: Any) -> bool:
    return registry.register_run({"run_name": name, "best_val_auc": auc, **extra}, _checkpoint(root, name))


def _strict_json(path: Path) -> dict[str, Any]:
    def reject(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_first_run_is_promoted_and_written_as_plain_json(tmp_path: Path) -> None:
    registry = _registry(tmp_path)

    assert _register(registry, tmp_path, "run-a", 0.8, backbone="cvt_13", img_size=(224, 224))

    assert registry.best_model_path.read_bytes() == _checkpoint(tmp_path, "run-a").read_bytes()
    assert _strict_json(registry.metadata_path) == {
        "version": 1,
        "best_run": "run-a",
        "runs": [{"run_name": "run-a", "best_val_auc": 0.8, "backbone": "cvt_13", "img_size": [224, 224]}],
    }


def test_only_a_strictly_better_run_is_promoted(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    _register(registry, tmp_path, "a", 0.80)

    assert not _register(registry, tmp_path, "worse", 0.70)
    assert not _register(registry, tmp_path, "tie", 0.80)
    assert _register(registry, tmp_path, "better", 0.90)

    assert registry.best_run()["run_name"] == "better"
    assert registry.best_model_path.read_bytes() == _checkpoint(tmp_path, "better").read_bytes()
    assert [run["run_name"] for run in registry.runs()] == ["better", "a", "tie", "worse"]


def test_nan_or_missing_auc_never_promotes_and_stays_valid_json(tmp_path: Path) -> None:
    registry = _registry(tmp_path)

    assert not _register(registry, tmp_path, "nan", float("nan"), metrics={"loss": float("inf")})
    assert not _register(registry, tmp_path, "none", None)
    assert registry.best_run() is None and not registry.best_model_path.exists()
    assert _register(registry, tmp_path, "real", np.float32(0.6))
    assert not _register(registry, tmp_path, "nan-again", float("nan"))

    stored = _strict_json(registry.metadata_path)
    assert stored["best_run"] == "real"
    by_name = {run["run_name"]: run for run in stored["runs"]}
    assert by_name["nan"] == {"run_name": "nan", "best_val_auc": None, "metrics": {"loss": None}}
    assert by_name["real"]["best_val_auc"] == pytest.approx(0.6)
    assert registry.runs()[0]["run_name"] == "real"


def test_same_run_name_replaces_its_entry(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    _register(registry, tmp_path, "resumed", 0.7, epochs=2)

    assert _register(registry, tmp_path, "resumed", 0.75, epochs=4)

    assert registry.runs() == [{"run_name": "resumed", "best_val_auc": 0.75, "epochs": 4}]
    assert registry.get("resumed")["epochs"] == 4
    assert registry.get("unknown") is None


def test_update_run_merges_fields(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    _register(registry, tmp_path, "a", 0.8, status="trained")

    registry.update_run("a", status="tested", test_metrics={"auc": 0.79, "ece": float("nan")})

    assert registry.get("a") == {
        "run_name": "a",
        "best_val_auc": 0.8,
        "status": "tested",
        "test_metrics": {"auc": 0.79, "ece": None},
    }
    with pytest.raises(UserError, match="'ghost' is not in the registry"):
        registry.update_run("ghost", status="tested")
    before = registry.runs()
    assert registry.update_run("ghost", missing_ok=True, status="tested") is False
    assert registry.runs() == before and registry.get("ghost") is None


def test_empty_registry_reads_as_no_runs(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    assert registry.runs() == [] and registry.best_run() is None


@pytest.mark.parametrize("content", ['{"version": 1, "runs": [', "[1, 2]", '{"version": 7, "runs": []}'])
def test_corrupt_registry_is_a_user_error_and_is_not_overwritten(tmp_path: Path, content: str) -> None:
    registry = _registry(tmp_path)
    registry.metadata_path.parent.mkdir(parents=True)
    registry.metadata_path.write_text(content)

    for action in (registry.runs, lambda: _register(registry, tmp_path, "a", 0.9)):
        with pytest.raises(UserError) as caught:
            action()
        message = str(caught.value)
        assert str(registry.metadata_path) in message and "\n" not in message

    assert registry.metadata_path.read_text() == content
    assert not registry.best_model_path.exists()


def test_missing_checkpoint_for_promotion_changes_nothing(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    _register(registry, tmp_path, "a", 0.8)
    before = registry.metadata_path.read_bytes()
    missing = tmp_path / "runs" / "b" / "nothing.pth"

    with pytest.raises(CheckpointError, match=re.escape(str(missing))):
        registry.register_run({"run_name": "b", "best_val_auc": 0.9}, missing)

    assert registry.metadata_path.read_bytes() == before
    assert registry.best_model_path.read_bytes() == _checkpoint(tmp_path, "a").read_bytes()


def test_lock_held_by_another_writer_times_out_with_a_user_error(tmp_path: Path) -> None:
    registry = _registry(tmp_path, lock_timeout=0.2)
    registry.metadata_path.parent.mkdir(parents=True)

    with FileLock(str(registry.metadata_path) + ".lock"), pytest.raises(UserError, match="stayed locked by another"):
        _register(registry, tmp_path, "a", 0.9)

    assert not registry.metadata_path.exists()


def _register_after_barrier(root: Path, name: str, auc: float, barrier: Any) -> None:
    registry = _registry(root, lock_timeout=30.0)
    barrier.wait()
    registry.register_run({"run_name": name, "best_val_auc": auc}, root / "runs" / name / "best.pth")


def test_simultaneous_registrations_from_eight_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    aucs = {f"run-{index}": auc for index, auc in enumerate([0.61, 0.93, 0.72, float("nan"), 0.88, 0.97, 0.5, 0.9])}
    for name in aucs:
        _checkpoint(tmp_path, name)
    barrier = context.Barrier(len(aucs))
    workers = [
        context.Process(target=_register_after_barrier, args=(tmp_path, name, auc, barrier))
        for name, auc in aucs.items()
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0] * len(workers)

    registry = _registry(tmp_path)
    stored = _strict_json(registry.metadata_path)
    assert sorted(run["run_name"] for run in stored["runs"]) == sorted(aucs)
    assert stored["best_run"] == "run-5"
    assert registry.best_model_path.read_bytes() == _checkpoint(tmp_path, "run-5").read_bytes()
    assert [run["run_name"] for run in registry.runs()][:3] == ["run-5", "run-1", "run-7"]
    assert not [path for path in registry.metadata_path.parent.iterdir() if ".tmp." in path.name]


# ----------------------------------------------------------------------------- promotion sets
def _on_set(key: str, auc: float) -> dict[str, Any]:
    return {"auc": auc, "set": {"key": key, "csv": f"/data/{key}.csv", "rows": 10}}


def test_candidates_compare_on_their_promotion_set_not_on_their_slices(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    assert registry.register_run(
        {"run_name": "a", "best_val_auc": 0.60, "promotion": _on_set("common", 0.95)}, _checkpoint(tmp_path, "a")
    )
    # b's slice score is higher, but on the common set it is worse: not promoted, and no re-scoring needed.
    calls = []
    promoted = registry.register_run(
        {"run_name": "b", "best_val_auc": 0.99, "promotion": _on_set("common", 0.70)},
        _checkpoint(tmp_path, "b"),
        rescore_incumbent=lambda path: calls.append(path) or 0.0,
    )
    assert not promoted and calls == [] and registry.best_run()["run_name"] == "a"
    assert registry.get("b")["promotion"]["incumbent"] == {"run_name": "a", "auc": 0.95, "rescored": False}


def test_an_incumbent_scored_elsewhere_is_rescored_and_an_unreadable_one_is_kept(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    registry.register_run({"run_name": "old", "promotion": _on_set("slice", 0.99)}, _checkpoint(tmp_path, "old"))
    seen = []
    assert registry.register_run(
        {"run_name": "new", "promotion": _on_set("common", 0.80)},
        _checkpoint(tmp_path, "new"),
        rescore_incumbent=lambda path: seen.append(path.read_bytes()) or 0.75,
    )
    assert seen == [_checkpoint(tmp_path, "old").read_bytes()]  # the incumbent's own weights, re-scored
    assert registry.get("old")["rescored"]["common"]["auc"] == 0.75
    # A best model that cannot be scored any more (None) is reported and never silently replaced.
    assert not registry.register_run(
        {"run_name": "newer", "promotion": _on_set("other", 0.99)},
        _checkpoint(tmp_path, "newer"),
        rescore_incumbent=lambda path: None,
    )
    assert registry.best_run()["run_name"] == "new"
    assert registry.best_model_path.read_bytes() == _checkpoint(tmp_path, "new").read_bytes()


def _register_with_rescore(root: Path, name: str, auc: float, barrier: Any) -> None:
    import time

    registry = _registry(root, lock_timeout=30.0)
    barrier.wait()

    def slow_rescore(path: Path) -> float:
        time.sleep(0.3)  # a pass over the promotion set, outside the lock
        return 0.5

    registry.register_run(
        {"run_name": name, "promotion": _on_set("common", auc)}, root / "runs" / name / "best.pth",
        rescore_incumbent=slow_rescore,
    )  # fmt: skip


def test_runs_finishing_together_with_rescoring_leave_one_consistent_best(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    registry.register_run(
        {"run_name": "incumbent", "promotion": _on_set("slice", 0.99)}, _checkpoint(tmp_path, "incumbent")
    )
    context = multiprocessing.get_context("fork")
    aucs = {"run-a": 0.6, "run-b": 0.9, "run-c": 0.7, "run-d": 0.4}
    for name in aucs:
        _checkpoint(tmp_path, name)
    barrier = context.Barrier(len(aucs))
    workers = [context.Process(target=_register_with_rescore, args=(tmp_path, n, a, barrier)) for n, a in aucs.items()]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0] * len(workers)
    assert registry.best_run()["run_name"] == "run-b"
    assert registry.best_model_path.read_bytes() == _checkpoint(tmp_path, "run-b").read_bytes()
    assert registry.get("incumbent")["rescored"]["common"]["auc"] == 0.5
    assert len(registry.runs()) == 5


def test_a_run_is_found_by_its_run_dir_however_spelled(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    run_dir = tmp_path / "outputs" / "train" / "run1"
    run_dir.mkdir(parents=True)
    _register(registry, tmp_path, "run1", 0.8, run_dir=str(run_dir), status="finished")
    _register(registry, tmp_path, "run2", 0.7)  # no run_dir recorded

    assert registry.entry_for_run_dir(tmp_path / "outputs" / "." / "train" / "run1")["run_name"] == "run1"
    assert registry.entry_for_run_dir(tmp_path / "outputs" / "train" / "other") is None


def test_check_writable_leaves_only_the_lock_file(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    registry.check_writable()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model_metadata.json.lock"]
    (tmp_path / "models" / "model_metadata.json").write_text("[1, 2")
    with pytest.raises(UserError, match="is not valid JSON"):
        registry.check_writable()


@pytest.mark.parametrize(("runs", "said"), [
    ([1, 2], "run 1 is 1, not an entry"),
    ([{"best_val_auc": 0.5}], "run 1 has no run_name"),
    ([{"run_name": "a"}, {"run_name": "b", "best_val_auc": "high"}], "run 2 (b) has best_val_auc 'high', not a number"),
    ([{"run_name": "a", "tags": 5}], "run 1 (a) has tags 5, not a list"),
])  # fmt: skip
def test_a_hand_edited_entry_is_named_in_one_line(tmp_path: Path, runs, said) -> None:
    """Each was a traceback in task=registry, prune or archive (AttributeError, KeyError, TypeError)."""
    registry = _registry(tmp_path)
    registry.metadata_path.parent.mkdir(parents=True, exist_ok=True)
    registry.metadata_path.write_text(json.dumps({"version": 1, "best_run": None, "runs": runs}))
    with pytest.raises(UserError, match=re.escape(f"{registry.metadata_path}: {said}; repair it or move it away")):
        registry.runs()


def test_the_listing_shows_runs_whose_run_dir_is_gone_as_missing(tmp_path: Path, capsys, monkeypatch) -> None:
    from deepfake.tasks.display import print_registry

    monkeypatch.setenv("COLUMNS", "250")  # a terminal wide enough that no cell wraps

    kept, gone = tmp_path / "kept", tmp_path / "gone"
    kept.mkdir()
    runs = [{"run_name": "kept", "run_dir": str(kept), "status": "finished", "best_val_auc": 0.9},
            {"run_name": "gone", "run_dir": str(gone), "status": "finished", "best_val_auc": 0.8}]  # fmt: skip
    print_registry(runs, None, registry_path="r.json", best_model_path="b.pth", limit=10)
    out = capsys.readouterr().out
    assert "finished (run dir missing)" in out and out.count("run dir missing") == 1
    assert "1 run dir(s) no longer on disk (moved or deleted; their entries and figures stay): gone" in out


def test_a_promotion_set_is_its_images_bytes_not_only_their_names(tmp_path):
    """The embedded set at 32 and 64 px has the same names and labels over other pixels: two sets.
    The same files under another root (a moved dataset) stay one set."""
    from deepfake.tracking.promotion import set_identity

    csv = tmp_path / "valid.csv"
    csv.write_text("path,label\na.jpg,1\nb.jpg,0\n")
    targets = np.array([0, 1])

    def identity(root: Path, contents: list[str]) -> dict:
        return set_identity(csv, root, [str(root / "a.jpg"), str(root / "b.jpg")], targets, contents)

    small, large, moved = identity(tmp_path / "32px", ["1" * 64, "2" * 64]), identity(
        tmp_path / "64px", ["3" * 64, "4" * 64]), identity(tmp_path / "disk2", ["1" * 64, "2" * 64])  # fmt: skip
    assert small["key"] != large["key"] and small["csv_sha256"] == large["csv_sha256"]
    assert moved["key"] == small["key"]
    with pytest.raises(ValueError):  # a digest list that does not match the images is a bug, not a set
        identity(tmp_path / "32px", ["1" * 64])


def test_the_listing_marks_finished_runs_without_a_score_not_failed_ones(tmp_path: Path, capsys, monkeypatch) -> None:
    """≠ says "registry.rescore=true would score this run": a failed run is never scored, so it gets no
    mark (its failure is explained below the table) and alone brings no rescore hint."""
    from deepfake.tasks.display import print_registry

    monkeypatch.setenv("COLUMNS", "250")

    def entry(name: str, status: str, key: str | None, **extra) -> dict:
        promotion = {"set": {"key": key, "csv": "valid.csv", "rows": 2}, "auc": 0.9} if key else None
        return {"run_name": name, "run_dir": str(tmp_path), "status": status, "best_val_auc": 0.9,
                "promotion": promotion, **extra}  # fmt: skip

    best = entry("best", "finished", "k1")
    failed = entry("failed", "failed", None, error="CUDA out of memory")
    print_registry([best, failed], best, registry_path="r.json", best_model_path="b.pth", limit=10)
    out = capsys.readouterr().out
    rows = {line.split("│")[2].strip(): line.split("│")[1].strip() for line in out.splitlines() if line.count("│") > 3}
    assert rows == {"best": "★", "failed": ""}
    assert "failed failed: CUDA out of memory" in out and "rescore" not in out

    other = entry("other", "finished", "k2")  # validated on another set, never re-scored on k1
    print_registry([best, failed, other], best, registry_path="r.json", best_model_path="b.pth", limit=10)
    out = capsys.readouterr().out
    rows = {line.split("│")[2].strip(): line.split("│")[1].strip() for line in out.splitlines() if line.count("│") > 3}
    assert rows == {"best": "★", "failed": "", "other": "≠"}
    assert "≠: no score on that set yet; task=registry registry.rescore=true scores them there" in out


def test_the_listing_piped_into_a_file_keeps_its_cells_whole(tmp_path: Path, capsys, monkeypatch) -> None:
    """Not a terminal and no COLUMNS: rich took 80 columns and cut every cell to "tra…"."""
    from deepfake.tasks.display import print_registry

    monkeypatch.delenv("COLUMNS", raising=False)
    name = "train_2026-12-01_07-45-30_199d"
    runs = [{"run_name": name, "run_dir": str(tmp_path), "status": "finished", "best_val_auc": 0.6509,
             "backbone": "test_resnet", "dataset": "synthetic", "test_metrics": {"auc": 0.6295, "accuracy": 0.61}}]  # fmt: skip
    print_registry(runs, runs[0], registry_path="r.json", best_model_path="b.pth", limit=10)
    row = next(line for line in capsys.readouterr().out.splitlines() if name in line)
    assert all(cell in row for cell in ("test_resnet", "synthetic", "0.6509", "0.6295", "finished")), row
    assert "…" not in row


def test_a_finished_run_that_fails_afterwards_keeps_its_results_and_its_place(tmp_path: Path) -> None:
    """train.do_cam failing after the run was tested and promoted: the entry said "failed" while
    best_run named it and best_model.pth was its model."""
    registry = _registry(tmp_path)
    assert _register(registry, tmp_path, "a", 0.9, status="finished")
    registry.record_failure({"run_name": "a", "best_val_auc": None}, error="cam.target_layer='x': no such layer")
    saved = json.loads(registry.metadata_path.read_text())
    [entry] = saved["runs"]
    assert (entry["status"], entry["best_val_auc"], saved["best_run"]) == ("finished", 0.9, "a")
    assert entry["error"] == "cam.target_layer='x': no such layer"
    registry.record_failure({"run_name": "b", "best_val_auc": None}, error="bad")  # a run that never finished
    assert json.loads(registry.metadata_path.read_text())["runs"][1]["status"] == "failed"


def _listing_rows(out: str) -> list[tuple[str, str]]:
    """(mark, run) of each table row, in the listed order."""
    cells = [line.split("│") for line in out.splitlines() if line.count("│") > 3]
    return [(row[1].strip(), row[2].strip()) for row in cells if row[2].strip() not in ("", "run")]


def _registry_task_cfg(root: Path, *overrides: str):
    """task=registry's config with every path under ``root`` and no dataset overrides, as typed by hand."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"paths.root_dir={root}", f"paths.output_dir={root}/run",
                                            "task=registry", *overrides])  # fmt: skip


@pytest.mark.parametrize("copied", [False, True])
def test_a_rescore_on_a_registered_runs_test_csv_is_refused(tmp_path, copied):
    """Without the training's dataset overrides, this config's dataset.test_csv was another (missing)
    file, so the check was skipped and the global best was chosen on the runs' test images."""
    from deepfake.data.manifest import file_sha256
    from deepfake.errors import ConfigError
    from deepfake.tasks import registry as registry_task

    test_csv = tmp_path / "data" / "tiny" / "test.csv"
    test_csv.parent.mkdir(parents=True)
    test_csv.write_text(",original_path,id,label,label_str,path\n0,x,0,1,real,test/real/0.jpg\n")
    test = {"auc": 0.6, "test_csv": str(test_csv), "test_csv_sha256": file_sha256(test_csv)}
    registry = _registry(tmp_path)
    _register(registry, tmp_path, "a", 0.9, status="finished", test_metrics=test)
    promotion_csv = test_csv
    if copied:  # the same CSV elsewhere: caught by its bytes
        promotion_csv = tmp_path / "elsewhere" / "promo.csv"
        promotion_csv.parent.mkdir()
        promotion_csv.write_bytes(test_csv.read_bytes())
    before = registry.metadata_path.read_text()
    cfg = _registry_task_cfg(tmp_path, "registry.rescore=true", f"registry.promotion_csv={promotion_csv}",
                             f"registry.promotion_root_dir={test_csv.parent}")  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        registry_task.run(cfg)
    assert str(refused.value) == (
        f"registry.promotion_csv={promotion_csv} is the test CSV of run a ({test_csv}); the global best must be "
        "chosen on validation images: point registry.promotion_csv at a validation CSV"
    )
    assert registry.metadata_path.read_text() == before


def test_after_a_rescore_promotes_a_run_the_listing_ranks_on_the_set_it_won_on(tmp_path, capsys, monkeypatch):
    """The plain listing ranked on the new best's own validation set, where the run it beat on the
    rescore's set is better: the ★ run was listed second, and the set it won on was not named."""
    from deepfake.tasks import promotion
    from deepfake.tasks import registry as registry_task

    monkeypatch.setenv("COLUMNS", "250")
    registry = _registry(tmp_path)
    own = {"key": "v" * 16, "csv": "valid.csv", "rows": 32}
    promo = {"key": "p" * 16, "csv": str(tmp_path / "promo.csv"), "rows": 64}
    for name, own_auc, promo_auc in (("a", 0.9, 0.5), ("b", 0.8, 0.7)):
        run_dir = _checkpoint(tmp_path, name).parent
        _register(registry, tmp_path, name, own_auc, run_dir=str(run_dir), status="finished",
                  promotion={"auc": own_auc, "set": own})  # fmt: skip
        registry.record_score(name, promo, promo_auc)  # scored there already: the rescore reads these
    chosen = promotion.PromotionSet(Path(promo["csv"]), tmp_path, promo)
    monkeypatch.setattr(promotion, "promotion_set", lambda cfg, candidates=(): chosen)

    def listing(*overrides: str) -> tuple[list, str]:
        registry_task.run(_registry_task_cfg(tmp_path, *overrides))
        out = capsys.readouterr().out
        return _listing_rows(out), out

    assert registry.best_run()["run_name"] == "a"
    listing("registry.rescore=true")
    assert registry.best_run()["run_name"] == "b"
    rows, out = listing()
    assert rows == [("★", "b"), ("", "a")], out
    assert "promotion AUC is on promo.csv (64 images, pppppppp)" in out

    # A training run that beats b on its own set takes the place and the ranking back to that set.
    c_dir = _checkpoint(tmp_path, "c").parent
    assert _register(registry, tmp_path, "c", 0.95, run_dir=str(c_dir), status="finished",
                     promotion={"auc": 0.95, "set": own})  # fmt: skip
    rows, out = listing()
    assert rows == [("★", "c"), ("", "a"), ("", "b")], out
    assert (
        "promotion AUC is on valid.csv (32 images, vvvvvvvv)" in out
        and "best_set" not in registry.metadata_path.read_text()
    )
