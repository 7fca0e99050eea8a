"""Log records through the shared rich console (deepfake.tracking.console)."""

from __future__ import annotations

import logging
import logging.config
import re
from collections.abc import Iterator

import pytest
from rich.progress import Progress

from deepfake.tracking.console import ConsoleHandler, console, make_console_handler


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("deepfake.tests.console")
    log.propagate = False
    yield log
    log.handlers.clear()
    log.propagate = True


def test_long_message_with_brackets_stays_one_literal_line(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logger.addHandler(make_console_handler())
    logger.setLevel(logging.INFO)
    message = "overrides [bold]backbone=cvt_13[/bold] :smile: " + "x" * 400

    logger.info(message)

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].endswith("[INFO] " + message)
    assert lines[0].startswith("[") and lines[0][9:11] == "][" and lines[0][3] == ":"


def test_handler_level_filters_records(logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    logger.addHandler(make_console_handler(level="WARNING"))
    logger.setLevel(logging.DEBUG)

    logger.info("hidden")
    logger.warning("shown")

    assert capsys.readouterr().err.splitlines()[0].endswith("[WARNING] shown")


def test_dict_config_factory(logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"bare": {"format": "%(name)s|%(message)s"}},
            "handlers": {
                "console": {
                    "()": "deepfake.tracking.console.make_console_handler",
                    "level": "DEBUG",
                    "formatter": "bare",
                }
            },
            "loggers": {logger.name: {"handlers": ["console"], "level": "DEBUG", "propagate": False}},
        }
    )
    [handler] = logger.handlers
    assert isinstance(handler, ConsoleHandler) and handler.level == logging.DEBUG

    logger.debug("configured")

    assert capsys.readouterr().err == f"{logger.name}|configured\n"


def test_records_during_a_progress_bar_stay_whole_above_it(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under pytest stderr is no terminal and rich would not draw the live bar at all.
    monkeypatch.setattr(console, "_force_terminal", True)
    logger.addHandler(make_console_handler())
    logger.setLevel(logging.INFO)
    message = "step one done " + "y" * 300

    with Progress(console=console, auto_refresh=False) as progress:
        task = progress.add_task("epoch 1", total=2)
        progress.refresh()
        logger.info(message)
        progress.advance(task)
        progress.refresh()

    lines = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line) for line in capsys.readouterr().err.splitlines()]
    [log_line] = [index for index, line in enumerate(lines) if message in line]
    assert lines[log_line].endswith("[INFO] " + message)
    assert any("epoch 1" in line and "50%" in line for line in lines[log_line + 1 :])


def test_a_users_mistake_reads_error_what_then_what_to_do(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    logger.addHandler(make_console_handler())
    logger.setLevel(logging.INFO)
    logger.error("%s", "ckpt=x.pth: no such checkpoint; pass a run dir or a .pth file")
    logger.warning("a warning keeps its time stamp")
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        logger.exception("a bug keeps its traceback")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "ERROR ckpt=x.pth: no such checkpoint; pass a run dir or a .pth file"
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\]\[WARNING\] a warning keeps its time stamp", lines[1])
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\]\[ERROR\] a bug keeps its traceback", lines[2]) and "Traceback" in lines[3]


def test_a_predict_summary_prints_bracketed_paths_as_they_are(tmp_path, capsys):
    """File names are the user's text: 'holiday [edited].jpg' must not lose '[edited]' to rich markup."""
    from types import SimpleNamespace

    import pandas as pd

    from deepfake.tasks.display import print_predict_summary

    frame = pd.DataFrame({"path": ["/photos/holiday [edited].jpg", "/photos/[red]x[/red].png"],
                          "p_fake": [0.9, 0.1], "label": ["fake", "real"], "damaged": [None, None]})  # fmt: skip
    inputs = SimpleNamespace(skipped=[], labelled=False)

    print_predict_summary(frame, inputs, tmp_path / "predictions.csv", threshold=0.5, top_k=2,
                          images_per_second=None, metrics=None, overlays=None)  # fmt: skip

    out = capsys.readouterr().out
    assert "holiday [edited].jpg" in out and "[red]x[/red].png" in out


def test_a_long_damage_reason_wraps_and_leaves_the_path_readable_on_one_line():
    """The reason column did not wrap, so an 80-column console folded the path three letters a line."""
    import pandas as pd
    from rich.console import Console

    from deepfake.tasks.display import _print_paths

    console = Console(width=80, record=True)
    bomb = "too large to decode safely (Image size (200000000 pixels) exceeds limit of 178956970 pixels, could be "
    rows = pd.DataFrame({"damaged": [bomb + "decompression bomb DOS attack.)"], "path": ["/data/a/b/huge_200mp.png"]})
    _print_paths(console, "damaged", rows, "damaged")
    assert "/data/a/b/huge_200mp.png" in console.export_text()
