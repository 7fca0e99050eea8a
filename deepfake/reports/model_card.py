"""model_card.md: what a checkpoint is, what it was trained and measured on, how it decides, what it
is for and what it must not be used for (after Mitchell et al., "Model Cards for Model Reporting", 2019).

Rendering only: the facts come from ``card_facts.collect_facts``. Figures the run did not produce
are said to be missing, never invented; figures added later (an evaluation's calibration or
robustness reports) are listed as they are found.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from deepfake.data.images import DECODE_RULES
from deepfake.data.transforms import framing_rules
from deepfake.reports.card_facts import CardFacts, describe_source
from deepfake.tracking.checkpoint import atomic_write_text

log = logging.getLogger(__name__)

CARD_NAME = "model_card.md"
# The checkpoints whose outputs take the plain names: a run's best model and the registry's global best.
BEST_NAMES = ("best.pth", "best_model.pth")
# The test report's headline figures, in this order; any other figure follows them.
TEST_FIGURES = ("auc", "ap", "eer", "accuracy", "real_accuracy", "fake_accuracy", "precision", "recall", "f1",
                "log_loss", "threshold", "n_samples", "n_real", "n_fake", "n_damaged")  # fmt: skip
BOOKKEEPING = {"checkpoint", "checkpoint_sha256", "run_name", "test_csv", "evaluated_at", "confusion_matrix"}


def output_beside(checkpoint_path: str | os.PathLike, name: str, best_model: str | os.PathLike | None = None) -> Path:
    """``name`` beside the checkpoint (the model card, an export), prefixed with the checkpoint's stem
    unless it is a best model (a run's best.pth, the registry's ``best_model``, whatever paths.best_model
    names it): ``last.model_card.md``, ``model_a.model.onnx``. The outputs of two checkpoints in one
    folder (a run's last.pth beside its best.pth, two copies) replaced each other."""
    path = Path(checkpoint_path)
    best = path.name in BEST_NAMES or (best_model is not None and Path(best_model).resolve() == path.resolve())
    return path.parent / (name if best else f"{path.stem}.{name}")


def card_path(checkpoint_path: str | os.PathLike, best_model: str | os.PathLike | None = None) -> Path:
    return output_beside(checkpoint_path, CARD_NAME, best_model)


def write_model_card(facts: CardFacts) -> Path:
    """The card, written; or the card already there, kept when it describes this very checkpoint and
    this one's run dir is gone (archived, moved): rewriting it lost the data, recipe and test report."""
    path = card_path(facts.checkpoint_path, facts.best_model)
    if facts.run_dir is None and _fuller_card_of(path, facts.checkpoint_sha256):
        log.info("kept %s: it describes this checkpoint (sha256 %s) with its run's facts, and its run dir is no "
                 "longer found", path, facts.checkpoint_sha256)  # fmt: skip
        return path
    atomic_write_text(path, render_model_card(facts))
    return path


def _fuller_card_of(path: Path, sha256: str) -> bool:
    """Whether the card at ``path`` names ``sha256`` in its header and was written with its run dir found."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    header = text.split("\n## ", 1)[0]
    return f"(sha256 `{sha256}`)" in header and not re.search(r"^\| run dir \| not found \|$", text, flags=re.M)


def render_model_card(facts: CardFacts) -> str:
    parts = [
        _header(facts), _model(facts), _data(facts), _recipe(facts), _evaluation(facts), _operating_point(facts),
        INTENDED_USE, _limitations(facts), ETHICS, _usage(facts),
    ]  # fmt: skip
    return "\n\n".join(part.strip() for part in parts) + "\n"


def cell(value) -> str:
    """A value fit for a Markdown table cell: numbers rounded for reading, pipes and newlines escaped."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e5 or value == 0 else f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows, header=("", "")) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _header(facts: CardFacts) -> str:
    name = facts.checkpoint.get("run_name") or facts.checkpoint_path.name
    return (
        f"# Model card: deepfake detector `{name}`\n\n"
        f"Written {facts.written_at} by deepfake {facts.version} for `{facts.checkpoint_path}` "
        f"(sha256 `{facts.checkpoint_sha256}`). A real-vs-fake face image classifier: it outputs "
        "p(fake) for an aligned face crop."
    )


def _model(facts: CardFacts) -> str:
    ckpt, backbone = facts.checkpoint, facts.config.get("backbone") or {}
    spec, pre = ckpt.get("model_spec") or {}, ckpt.get("preprocess") or {}
    start = "from scratch"
    if backbone.get("weights"):
        start = f"weights file {backbone['weights']}"
    elif backbone.get("pretrained"):
        start = "timm's pretrained weights"
    source = facts.checkpoint.get("initialised_from") or facts.entry.get("initialised_from")
    if source:
        start += f", then initialised from {describe_source(source)}"
    elif facts.config.get("init_from"):  # an older run, which recorded only the setting
        start += f", then initialised from {facts.config['init_from']}"
    rows = [
        ("backbone", f"{spec.get('name')} {spec.get('kwargs') or ''}".strip()),
        ("initial weights", start),
        ("output", "one logit; p(fake) = sigmoid(logit / temperature); fake is the positive class"),
        ("input", f"{pre.get('img_size')} x {pre.get('img_size')} RGB, normalised with mean {pre.get('mean')} "
                  f"std {pre.get('std')}"),
        ("image decoding", DECODE_RULES),
        ("framing", framing_rules(pre.get("img_size"), pre.get("interpolation"))),
        ("checkpoint", f"epoch {ckpt.get('epoch')} (phase {ckpt.get('phase')}) of run {ckpt.get('run_name')}"),
        ("run dir", facts.run_dir or "not found"),
        ("code", f"git commit {facts.git.get('commit', 'unknown')} (uncommitted changes: {facts.git.get('dirty', 'unknown')})"),
    ]  # fmt: skip
    return "## Model\n\n" + table(rows)


def _data(facts: CardFacts) -> str:
    dataset = facts.config.get("dataset") or {}
    if not facts.data:
        return "## Data\n\nNot recorded: the run's config (config_resolved.yaml) was not found."
    damaged = {**(facts.entry.get("damaged_images") or {}), "test": facts.test.get("n_damaged")}
    rows = []
    for split, info in facts.data.items():
        if "error" in info:
            rows.append(
                (split, info["csv"], None, None, None, damaged.get(split, 0), f"unreadable now: {info['error']}")
            )
        else:
            rows.append((split, info["csv"], info["images"], info["real"], info["fake"], damaged.get(split, 0),
                         f"`{info['sha256']}`"))  # fmt: skip
    return (
        "## Data\n\n"
        f"Dataset `{dataset.get('name')}`, images under `{dataset.get('root_dir')}`; CSV label "
        f"{dataset.get('real_label')} means real. Counts and sha256 are of the CSVs as found when this card "
        "was written; damaged images (replaced by black images in training, counted per split) come from "
        "the run's records.\n\n" + table(rows, ("split", "CSV", "images", "real", "fake", "damaged", "sha256"))
    )


def _recipe(facts: CardFacts) -> str:
    config = facts.config
    if not config:
        return "## Training recipe\n\nNot recorded: the run's config was not found."
    phase, data, train = config.get("phase") or {}, config.get("dataset") or {}, config.get("train") or {}
    optimizer = config.get("optimizer") or {}
    rows = [
        ("phases", f"head only: {phase.get('head_epochs')} epoch(s) at lr_head {phase.get('lr_head')}; fine-tuning: "
                   f"{phase.get('finetune_epochs')} epoch(s) at lr_backbone {phase.get('lr_backbone')}, lr_head "
                   f"{phase.get('lr_head')}, warmup {phase.get('warmup_epochs')} epoch(s)"),
        ("optimizer", _target_and_args(optimizer)),
        ("scheduler", _target_and_args(config.get("scheduler") or {})),
        ("augmentation", _target_and_args(config.get("augment") or {})),
        ("batch", f"{data.get('batch_size')} x {train.get('accumulate_grad_batches')} accumulated, precision "
                  f"{train.get('precision')}, at {data.get('img_size')} px"),
        ("seed", f"{config.get('seed')} (deterministic kernels: {config.get('deterministic')})"),
        ("epochs run", f"{facts.entry.get('epochs', 'n/a')}; best validation epoch {facts.entry.get('best_epoch', 'n/a')}"),
    ]  # fmt: skip
    return "## Training recipe\n\n" + table(rows)


def _target_and_args(node: dict) -> str:
    args = ", ".join(f"{k}={v}" for k, v in node.items() if not k.startswith("_"))
    return f"{str(node.get('_target_', '?')).rsplit('.', 1)[-1]}({args})"


def _evaluation(facts: CardFacts) -> str:
    parts = ["## Evaluation"]
    val = facts.checkpoint.get("val_metrics") or {}
    # metrics_log.csv's accuracy is at p(fake) 0.5: no threshold exists until training has ended.
    named = [("val_accuracy at p(fake) 0.5" if key == "val_accuracy" else key, value) for key, value in val.items()]
    parts.append(
        "### Validation (the epoch kept)\n\n" + (table(named, ("figure", "value")) if val else "Not recorded.")
    )
    if facts.test:
        note = f"; {facts.no_test}" if facts.no_test else ""
        ordered = [k for k in TEST_FIGURES if k in facts.test]
        others = [k for k in facts.test if k not in TEST_FIGURES and k not in BOOKKEEPING]
        flat = [(k, facts.test[k]) for k in ordered] + [row for k in others for row in _flatten(k, facts.test[k])]
        source = facts.test.get("test_csv", "the test CSV")
        matrix = facts.test.get("confusion_matrix")
        text = f"### Test ({source}, evaluated {facts.test.get('evaluated_at', 'n/a')}{note})\n\n" + table(
            flat, ("figure", "value")
        )
        if matrix:
            text += "\n\n" + table([("real", *matrix[0]), ("fake", *matrix[1])], ("true \\ called", "real", "fake"))
        parts.append(text)
    else:  # a checkpoint without a threshold (a last.pth, an unfinished run's best.pth) cannot be tested as is
        how = "" if facts.checkpoint.get("threshold") is None else "; run `python scripts/main.py task=test ckpt=...`"
        parts.append(f"### Test\n\n{facts.no_test}{how}.")
    extra = [row for key in ("cam_metrics",) if facts.entry.get(key) for row in _flatten(key, facts.entry[key])]
    if extra:
        parts.append("### Explanations (GradCAM against a random-map baseline)\n\n" + table(extra, ("figure", "value")))
    return "\n\n".join(parts)


def _flatten(prefix: str, value) -> list[tuple[str, object]]:
    """Nested reports as ``a.b.c`` rows, a list of records as ``a[i].b`` rows (the TPR at each FPR, each
    test set, each perturbation), a list of numbers (an interval) on one row; floats to 4 significant
    digits, as the tables they came from (Python's repr showed 0.49037999999999987)."""
    if isinstance(value, dict):
        return [row for key, item in value.items() for row in _flatten(f"{prefix}.{key}", item)]
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [row for index, item in enumerate(value) for row in _flatten(f"{prefix}[{index}]", item)]
    if isinstance(value, list):
        return [(prefix, "[" + ", ".join(str(_rounded(item)) for item in value) + "]")]
    return [(prefix, _rounded(value))]


def _rounded(value):
    return float(f"{value:.4g}") if isinstance(value, float) else value


def _operating_point(facts: CardFacts) -> str:
    ckpt = facts.checkpoint
    temperature = ckpt.get("temperature")
    if ckpt.get("threshold") is None:  # a last.pth, or a training stopped before choosing one
        threshold, policy = "none chosen: give one (eval.threshold, predict.threshold) to call images fake", "n/a"
    else:
        threshold, policy = ckpt["threshold"], ckpt.get("threshold_policy") or "not recorded (an older checkpoint)"
    rows = [
        ("threshold", threshold),
        ("rule", "called fake when p(fake) >= threshold"),
        ("policy", policy),
        ("temperature", "1.0 (not calibrated)" if temperature is None else temperature),
    ]
    return ("## Operating point\n\nChosen on validation images, never on test images; every task that says "
            "\"fake\" uses it unless the command line overrides it.\n\n" + table(rows))  # fmt: skip


INTENDED_USE = """
## Intended use

- Research on detecting GAN-generated face images, and screening images that look like the training
  data: single, roughly frontal faces, cropped and aligned as the training images were (for the Kaggle
  set: FFHQ-style crops, the face filling about half of the square). For ordinary photos, use
  `predict.face_crop=true`, which finds faces and crops them with that framing.
- A score to help a person decide, with the evidence (`predict.cam=true` draws what the model looked at);
  never the sole basis for an accusation, a moderation decision or any decision about a person.
"""

LIMITATIONS = """
## Limitations

- It knows the generators it was trained on. Images from unseen generators (other GANs, diffusion
  models, face swaps, editing tools) can be missed entirely: a high AUC here says nothing about them.
- Compression, resizing, screenshots, filters and re-uploads erase the traces detectors rely on;
  scores on such images degrade, often towards "real".
- Faces that are not framed like the training crops (whole photos, profiles, several people, tiny
  faces) are outside what it was trained on, and so are non-face images.
- Figures measured on one dataset describe that dataset; its people, cameras and generators are not
  the world's. Check performance across groups of people before relying on it for any of them.
"""


def _limitations(facts: CardFacts) -> str:
    measured = [row for key, value in {**facts.entry, **facts.test}.items() if "robust" in key and value is not None
                for row in _flatten(key, value)]  # fmt: skip
    if not measured:
        return LIMITATIONS + "\nNo robustness measurements were recorded for this checkpoint."
    return LIMITATIONS + "\nMeasured robustness:\n\n" + table(measured, ("figure", "value"))


ETHICS = """
## Ethics, consent and access

- Face images are personal data. Training or evaluating needs the rights to use them: the licence of
  each source and the consent of the people shown (see DATA_LICENSE.md and PRIVACY_AND_CONSENT.md).
- Do not publish or deploy a model trained on private, scraped-without-permission or non-consensual
  images; honour removal requests by retraining without the removed images.
- A checkpoint can leak facts about its training images. Keep datasets and checkpoints trained on
  faces to authorised people, and share them only under the terms of the data they came from.
- A detector can be used to tune fakes until they pass it; weigh that before publishing one.
"""


def _usage(facts: CardFacts) -> str:
    path = facts.checkpoint_path
    onnx = output_beside(path, "model.onnx", facts.best_model)
    return f"""
## Using it

```bash
python scripts/main.py task=predict ckpt={path} predict.input=<image | folder | CSV>
python scripts/main.py task=predict ckpt={path} predict.input=<photos> predict.face_crop=true
python scripts/main.py task=export ckpt={path}            # {onnx.name} + {onnx.with_suffix(".json").name} beside it
```
"""
