"""model_card.md: every section, the right numbers from the run's files, and the card travelling with
the checkpoint when the registry promotes it."""

import dataclasses
import hashlib
import json
import re

import torch
import yaml

from deepfake.reports.card_facts import collect_facts
from deepfake.reports.model_card import render_model_card, write_model_card
from deepfake.tracking.checkpoint import CHECKPOINT_FORMAT, atomic_save
from deepfake.tracking.registry import Registry

SECTIONS = ["Model", "Data", "Training recipe", "Evaluation", "Operating point", "Intended use", "Limitations",
            "Ethics, consent and access", "Using it"]  # fmt: skip


def make_run(root, *, with_test=True):
    """A run dir as task=train leaves it: checkpoint, resolved config, git.txt, metrics_test.json, CSVs."""
    run = root / "outputs" / "train" / "run-1"
    run.mkdir(parents=True)
    data = root / "data"
    data.mkdir()
    # Kaggle polarity: label 1 = real. train: 3 real, 2 fake; valid: 1 real, 1 fake; test: 2 fake.
    for name, labels in {"train": [1, 1, 1, 0, 0], "valid": [1, 0], "test": [0, 0]}.items():
        rows = "".join(f"{i},x,{i},{label},l,{name}/{i}.jpg\n" for i, label in enumerate(labels))
        (data / f"{name}.csv").write_text(",original_path,id,label,label_str,path\n" + rows)
    config = {
        "seed": 7, "deterministic": True, "init_from": None,
        "train": {"precision": "32", "accumulate_grad_batches": 2, "threshold": 0.5, "do_test": with_test},
        "backbone": {"_target_": "deepfake.models.create_detector", "name": "test_resnet", "pretrained": False,
                     "weights": "/weights/r.safetensors"},
        "phase": {"head_epochs": 2, "finetune_epochs": 3, "lr_head": 0.001, "lr_backbone": 2.5e-05, "warmup_epochs": 1},
        "optimizer": {"_target_": "torch.optim.AdamW", "_partial_": True, "weight_decay": 0.05},
        "scheduler": {"_target_": "timm.scheduler.CosineLRScheduler", "lr_min": 1e-06},
        "augment": {"_target_": "deepfake.data.transforms.build_train_transform", "hflip": 0.5},
        "dataset": {"name": "kaggle_140k", "root_dir": str(data), "real_label": 1, "img_size": 32, "batch_size": 16,
                    "train_csv": str(data / "train.csv"), "val_csv": str(data / "valid.csv"),
                    "test_csv": str(data / "test.csv"), "reader": {"path_column": "path", "label_column": "label"}},
    }  # fmt: skip
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    (run / "git.txt").write_text("commit 0123abcd\ndirty false\n")
    atomic_save({
        "format": CHECKPOINT_FORMAT, "kind": "best", "model": {"w": torch.zeros(2)},
        "model_spec": {"name": "test_resnet", "kwargs": {}},
        "preprocess": {"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"},
        "threshold": 0.4375, "threshold_policy": "youden", "temperature": 1.25, "run_name": "run-1", "epoch": 4,
        "phase": "finetune", "val_metrics": {"val_auc": 0.953125, "val_loss": 0.3125, "val_accuracy": 0.8125},
    }, run / "best.pth")  # fmt: skip
    if with_test:
        test = {"auc": 0.91234, "accuracy": 0.875, "eer": 0.125, "n_samples": 2, "n_damaged": 1,
                "confusion_matrix": [[0, 0], [1, 1]], "test_csv": str(data / "test.csv"),
                "robustness": {"jpeg_q50": {"auc": 0.71}}, "intervals": {"auc": [0.49037999999999987, 0.99]},
                "tpr_at_fpr": [{"fpr": 0.01, "tpr": 0.5, "threshold": 0.93}],
                "checkpoint_sha256": sha256_of(run / "best.pth")}  # fmt: skip
        (run / "metrics_test.json").write_text(json.dumps(test))
    entry = {"run_name": "run-1", "run_dir": str(run), "epochs": 5, "best_epoch": 4, "best_val_auc": 0.953125,
             "damaged_images": {"train": 3}, "status": "finished", "checkpoint_sha256": sha256_of(run / "best.pth")}  # fmt: skip
    return run, entry


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_card_has_every_section_and_the_run_s_numbers(tmp_path):
    run, entry = make_run(tmp_path)
    checkpoint = torch.load(run / "best.pth", weights_only=True)

    card = render_model_card(collect_facts(run / "best.pth", checkpoint, entry))

    assert re.findall(r"^## (.+)$", card, flags=re.M) == SECTIONS
    assert hashlib.sha256((run / "best.pth").read_bytes()).hexdigest() in card
    data = section(card, "Data")
    train_sha = hashlib.sha256((tmp_path / "data" / "train.csv").read_bytes()).hexdigest()
    assert f"| train | {tmp_path / 'data' / 'train.csv'} | 5 | 3 | 2 | 3 | `{train_sha}` |" in data
    assert "| valid | " in data and " | 2 | 1 | 1 | 0 | " in data
    assert f"| test | {tmp_path / 'data' / 'test.csv'} | 2 | 0 | 2 | 1 | " in data  # damaged from the test report
    recipe = section(card, "Training recipe")
    assert "head only: 2 epoch(s) at lr_head 0.001; fine-tuning: 3 epoch(s) at lr_backbone 2.5e-05" in recipe
    assert (
        "| seed | 7 (deterministic kernels: True) |" in recipe
        and "| epochs run | 5; best validation epoch 4 |" in recipe
    )
    assert "AdamW(weight_decay=0.05)" in recipe and "| batch | 16 x 2 accumulated, precision 32, at 32 px |" in recipe
    model = section(card, "Model")
    assert (
        "git commit 0123abcd (uncommitted changes: false)" in model and "weights file /weights/r.safetensors" in model
    )
    evaluation = section(card, "Evaluation")
    assert (
        "| val_auc | 0.9531 |" in evaluation
        and "| val_accuracy at p(fake) 0.5 | 0.8125 |" in evaluation
        and "| auc | 0.9123 |" in evaluation
        and "| eer | 0.1250 |" in evaluation
    )
    assert "| fake | 1 | 1 |" in evaluation  # the confusion matrix, true class by row
    # A list of records row by row, an interval on one row, rounded (raw Python lists before).
    assert "| tpr_at_fpr[0].fpr | 0.0100 |" in evaluation and "| tpr_at_fpr[0].tpr | 0.5000 |" in evaluation
    assert "| intervals.auc | [0.4904, 0.99] |" in evaluation
    point = section(card, "Operating point")
    assert "| threshold | 0.4375 |" in point and "| policy | youden |" in point and "| temperature | 1.2500 |" in point
    assert "| robustness.jpeg_q50.auc | 0.7100 |" in section(card, "Limitations")
    ethics = section(card, "Ethics, consent and access")
    assert "consent" in ethics and "non-consensual" in ethics and "authorised people" in ethics


def test_card_says_what_is_missing_instead_of_inventing_it(tmp_path):
    run, _ = make_run(tmp_path, with_test=False)
    checkpoint = torch.load(run / "best.pth", weights_only=True)
    (tmp_path / "data" / "valid.csv").unlink()
    del checkpoint["threshold_policy"], checkpoint["temperature"]

    card = render_model_card(collect_facts(run / "best.pth", checkpoint, None))

    assert "Not evaluated (train.do_test=false)" in section(card, "Evaluation")
    assert "valid.csv: CSV file not found" in section(card, "Data")
    assert (
        "| temperature | 1.0 (not calibrated) |" in card and "| policy | not recorded (an older checkpoint) |" in card
    )
    assert "No robustness measurements were recorded" in card
    # eval.robustness=false writes "robustness": null: still nothing measured, not a row of n/a.
    facts = dataclasses.replace(collect_facts(run / "best.pth", checkpoint, None), test={"robustness": None})
    assert "No robustness measurements were recorded" in render_model_card(facts)


def test_card_of_the_global_best_finds_its_run_dir_and_travels_with_promotion(tmp_path):
    run, entry = make_run(tmp_path)
    card = write_model_card(collect_facts(run / "best.pth", torch.load(run / "best.pth", weights_only=True), entry))
    assert card == run / "model_card.md"
    registry = Registry(tmp_path / "models" / "model_metadata.json", tmp_path / "models" / "best_model.pth")

    assert registry.register_run(entry, run / "best.pth", companions=[card])
    assert (tmp_path / "models" / "model_card.md").read_bytes() == card.read_bytes()
    worse = {**entry, "run_name": "run-2", "best_val_auc": 0.5}
    card.write_text("run-2's card")
    assert not registry.register_run(worse, run / "best.pth", companions=[card])
    assert "run-1" in (tmp_path / "models" / "model_card.md").read_text()  # not replaced: run-2 was not promoted

    best = tmp_path / "models" / "best_model.pth"
    facts = collect_facts(best, torch.load(best, weights_only=True), registry.get("run-1"))
    assert facts.run_dir == run and facts.test["auc"] == 0.91234  # found through the registry entry

    # A better run without a card: run-1's card must not stay beside run-3's model.
    cardless = {**entry, "run_name": "run-3", "best_val_auc": 0.99}
    assert registry.register_run(cardless, run / "best.pth", companions=[tmp_path / "absent" / "model_card.md"])
    assert not (tmp_path / "models" / "model_card.md").exists()


def test_a_card_of_last_pth_leaves_the_best_models_card_alone(tmp_path):
    from deepfake.reports.model_card import card_path

    assert card_path(tmp_path / "run" / "best.pth") == tmp_path / "run" / "model_card.md"
    assert card_path(tmp_path / "run" / "last.pth") == tmp_path / "run" / "last.model_card.md"
    assert card_path(tmp_path / "models" / "best_model.pth") == tmp_path / "models" / "model_card.md"


def test_outputs_of_two_checkpoints_in_one_folder_are_named_after_each(tmp_path):
    """cp/model_a.pth and cp/model_b.pth both wrote cp/model_card.md (and cp/model.onnx): the second
    replaced the first's without a word."""
    from deepfake.reports.model_card import card_path, output_beside

    assert card_path(tmp_path / "cp" / "model_a.pth") == tmp_path / "cp" / "model_a.model_card.md"
    assert card_path(tmp_path / "cp" / "model_b.pth") == tmp_path / "cp" / "model_b.model_card.md"
    assert output_beside(tmp_path / "cp" / "model_a.pth", "model.onnx") == tmp_path / "cp" / "model_a.model.onnx"
    assert output_beside(tmp_path / "run" / "last.pth", "model.onnx") == tmp_path / "run" / "last.model.onnx"
    assert output_beside(tmp_path / "run" / "best.pth", "model.onnx") == tmp_path / "run" / "model.onnx"
    assert output_beside(tmp_path / "models" / "best_model.pth", "model.onnx") == tmp_path / "models" / "model.onnx"
    from deepfake.tasks.export import default_output  # task=export writes where the card says it does

    assert default_output(tmp_path / "cp" / "model_a.pth") == tmp_path / "cp" / "model_a.model.onnx"
    # The registry's best under another name (paths.best_model): its outputs keep the plain names, as the
    # card a promotion copies beside it does.
    champion = tmp_path / "models" / "champion.pth"
    assert card_path(champion, best_model=champion) == tmp_path / "models" / "model_card.md"
    assert default_output(champion, champion) == tmp_path / "models" / "model.onnx"
    run, entry = make_run(tmp_path)
    copy = tmp_path / "cp" / "model_a.pth"
    copy.parent.mkdir()
    copy.write_bytes((run / "best.pth").read_bytes())
    card = write_model_card(collect_facts(copy, torch.load(copy, weights_only=True), entry))
    assert card == tmp_path / "cp" / "model_a.model_card.md"
    assert "task=export ckpt=" + str(copy) + "            # model_a.model.onnx + model_a.model.json beside it" in (
        card.read_text()
    )


def test_a_card_of_last_pth_claims_neither_the_best_models_test_nor_a_threshold(tmp_path):
    """The run's metrics_test.json and registry figures are its best.pth's; a last.pth holds no
    threshold. Its card showed best.pth's test figures and 'policy fixed (train.threshold)'."""
    run, entry = make_run(tmp_path)
    last = torch.load(run / "best.pth", weights_only=True)
    last.update(kind="last", threshold=None, threshold_policy=None)
    atomic_save(last, run / "last.pth")
    entry = {**entry, "test_metrics": {"auc": 0.91234}, "cam_metrics": {"deletion_auc": 0.2}}

    card = render_model_card(collect_facts(run / "last.pth", last, entry))

    evaluation = section(card, "Evaluation")
    assert "0.9123" not in card and "deletion_auc" not in evaluation
    assert "Not evaluated (its run's test report is of best.pth, not this latest epoch)" in evaluation
    point = section(card, "Operating point")
    assert "| threshold | none chosen: give one (eval.threshold, predict.threshold) to call images fake |" in point
    assert "| policy | n/a |" in point and "train.threshold" not in card


def test_a_run_file_that_is_not_utf8_leaves_its_facts_out_and_the_card_is_written(tmp_path):
    """A missing source leaves its facts out, never fails: a git.txt in another encoding stopped the card."""
    run, entry = make_run(tmp_path)
    (run / "git.txt").write_bytes(b"commit caf\xe9\n")
    facts = collect_facts(run / "best.pth", torch.load(run / "best.pth", weights_only=True), entry)
    assert facts.git == {} and "## Ethics, consent and access" in render_model_card(facts)


def early_copy(run, root):
    """A copy of the run's best.pth taken during training (epoch 1): no threshold yet, other weights."""
    early = torch.load(run / "best.pth", weights_only=True)
    early.update(model={"w": torch.ones(2)}, epoch=1, phase="head", threshold=None, threshold_policy=None,
                 temperature=None, val_metrics={"val_auc": 0.3984})  # fmt: skip
    path = root / "share" / "early_epoch.pth"
    path.parent.mkdir()
    atomic_save(early, path)
    return path, early


def test_a_card_of_an_earlier_best_pth_claims_none_of_its_runs_final_figures(tmp_path):
    """Found through its run_name, a copy of epoch 1's best.pth got the run's metrics_test.json (of the
    final best.pth) as its own Test section, and the registry's CAM figures."""
    run, entry = make_run(tmp_path)
    final = sha256_of(run / "best.pth")
    entry = {
        **entry,
        "test_metrics": {"auc": 0.91234, "checkpoint_sha256": final},
        "cam_metrics": {"deletion_auc": 0.2},
    }
    path, early = early_copy(run, tmp_path)

    card = render_model_card(collect_facts(path, early, entry))

    evaluation = section(card, "Evaluation")
    assert "0.9123" not in card and "deletion_auc" not in card and "jpeg_q50" not in card
    assert f"Not evaluated on this checkpoint (its run's test report is of another checkpoint, sha256 {final})." in (
        evaluation
    )
    # The run's own best.pth keeps them.
    own = render_model_card(collect_facts(run / "best.pth", torch.load(run / "best.pth", weights_only=True), entry))
    assert "| auc | 0.9123 |" in own and "| cam_metrics.deletion_auc | 0.2000 |" in own


def test_a_test_report_that_names_no_checkpoint_is_used_only_at_the_checkpoint_s_own_threshold(tmp_path):
    """Reports written before they recorded the checkpoint's sha256: only the best.pth a training ends
    with holds a threshold, and its report was measured at it."""
    run, entry = make_run(tmp_path)
    report = json.loads((run / "metrics_test.json").read_text())
    del report["checkpoint_sha256"]
    (run / "metrics_test.json").write_text(
        # A fixed-policy training of before 2026-12-03 recorded its own threshold as eval.threshold's.
        json.dumps({**report, "threshold": 0.4375, "threshold_source": "eval.threshold"})
    )
    del entry["checkpoint_sha256"]
    entry = {**entry, "operating_point": {"threshold": 0.4375}, "cam_metrics": {"deletion_auc": 0.2}}

    own = render_model_card(collect_facts(run / "best.pth", torch.load(run / "best.pth", weights_only=True), entry))
    assert "| auc | 0.9123 |" in own and "| cam_metrics.deletion_auc | 0.2000 |" in own
    assert "matched to this checkpoint by its threshold: the report names no checkpoint sha256)" in own

    path, early = early_copy(run, tmp_path)
    card = render_model_card(collect_facts(path, early, entry))
    assert "0.9123" not in card and "deletion_auc" not in card
    assert ("Not evaluated on this checkpoint (its run's test report names no checkpoint sha256, and this checkpoint "
            "does not hold the threshold it was measured at).") in section(card, "Evaluation")  # fmt: skip


def test_the_card_of_a_stopped_run_says_it_stopped_before_its_test(tmp_path):
    """It said "Not evaluated (train.do_test=false)" of a run whose config had do_test true."""
    run, _ = make_run(tmp_path, with_test=False)
    config = yaml.safe_load((run / "config_resolved.yaml").read_text())
    config["train"]["do_test"] = True
    (run / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    (run / "status.json").write_text(json.dumps({"status": "stopped", "task": "train"}))
    checkpoint = torch.load(run / "best.pth", weights_only=True)
    checkpoint.update(threshold=None, threshold_policy=None)

    card = render_model_card(collect_facts(run / "best.pth", checkpoint, None))

    test = section(card, "Evaluation").split("### Test", 1)[1]
    assert test.strip() == "Not evaluated (its run stopped before its test; resume it, which tests it)."
    assert "do_test" not in card


def test_a_card_of_the_global_best_whose_run_was_archived_keeps_the_full_card(tmp_path, caplog):
    """With its run dir archived, task=card replaced models/model_card.md (data, recipe, test report)
    with one saying 'not found' and 'Not recorded'."""
    import shutil

    run, entry = make_run(tmp_path)
    card = write_model_card(collect_facts(run / "best.pth", torch.load(run / "best.pth", weights_only=True), entry))
    registry = Registry(tmp_path / "models" / "model_metadata.json", tmp_path / "models" / "best_model.pth")
    assert registry.register_run(entry, run / "best.pth", companions=[card])
    full = (tmp_path / "models" / "model_card.md").read_text()
    shutil.rmtree(run)
    best = tmp_path / "models" / "best_model.pth"

    facts = collect_facts(best, torch.load(best, weights_only=True), registry.get("run-1"))
    assert facts.run_dir is None
    caplog.set_level("INFO", logger="deepfake.reports.model_card")
    assert write_model_card(facts) == tmp_path / "models" / "model_card.md"
    assert (tmp_path / "models" / "model_card.md").read_text() == full and "| auc | 0.9123 |" in full
    assert f"kept {tmp_path / 'models' / 'model_card.md'}: it describes this checkpoint" in caplog.text

    # Another checkpoint's card there is replaced: it does not describe this model.
    (tmp_path / "models" / "model_card.md").write_text(full.replace(sha256_of(best), "0" * 64))
    write_model_card(facts)
    assert "| run dir | not found |" in (tmp_path / "models" / "model_card.md").read_text()


def test_a_card_names_the_run_and_checkpoint_its_weights_were_initialised_from(tmp_path):
    """init_from=best was all the card said: best_model.pth is replaced by each promotion."""
    run, entry = make_run(tmp_path)
    checkpoint = torch.load(run / "best.pth", weights_only=True)
    source = {"checkpoint": "/m/best_model.pth", "run_name": "run-0", "epoch": 3, "sha256": "ab" * 32}

    card = render_model_card(collect_facts(run / "best.pth", {**checkpoint, "initialised_from": source}, entry))

    assert (f"| initial weights | weights file /weights/r.safetensors, then initialised from /m/best_model.pth (run "
            f"run-0, epoch 3, sha256 {'ab' * 32}) |") in section(card, "Model")  # fmt: skip
