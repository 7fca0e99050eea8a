"""The model registry: one JSON entry per run and a copy of the best model across runs.

Runs of a sweep finish at the same moment and all update the same files, so every read-modify-write
happens under a file lock. The JSON and the best model are each replaced atomically, so readers
(``runs``, ``get``) need no lock: they always see a whole file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from deepfake.errors import ConfigError, UserError
from deepfake.tracking.checkpoint import atomic_copy, atomic_write_text
from deepfake.tracking.promotion import describe, finite_or_none, promotion_key, score_on

log = logging.getLogger(__name__)

REGISTRY_VERSION = 1
DEFAULT_LOCK_TIMEOUT_S = 600.0
MAX_RESCORE_ROUNDS = 5


def _json_safe(value: Any) -> Any:
    """Strict JSON has no NaN or Infinity: store them as null so any JSON reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item"):  # numpy / torch scalars coming straight from metric code
        return _json_safe(value.item())
    return value


class Registry:
    """``models/model_metadata.json`` plus ``models/best_model.pth``, shared by every run."""

    def __init__(
        self,
        metadata_path: str | os.PathLike[str],
        best_model_path: str | os.PathLike[str],
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        self.metadata_path = Path(metadata_path)
        self.best_model_path = Path(best_model_path)
        self.lock_timeout = lock_timeout
        self._lock_path = self.metadata_path.with_name(self.metadata_path.name + ".lock")

    def register_run(
        self,
        entry: dict[str, Any],
        best_checkpoint: str | os.PathLike[str],
        *,
        rescore_incumbent: Callable[[Path], float | None] | None = None,
        companions: Sequence[str | os.PathLike[str]] = (),
    ) -> bool:
        """Add or replace the entry named ``entry["run_name"]``; promote its checkpoint when it beats
        the incumbent strictly **on the same promotion set** and its ``status`` (default finished) is
        ``finished``: a failed run is recorded, never promoted. Return whether it was promoted.

        The candidate's score is ``entry["promotion"]["auc"]`` on ``entry["promotion"]["set"]``. An
        incumbent scored on another set is first re-scored there by ``rescore_incumbent(best model
        path)``, outside the lock (it takes a pass over the images); the decision and the copy then
        happen under the lock on a fresh read, and if the best changed meanwhile, the new one is
        scored in turn. Without a comparable score for the incumbent nothing is replaced.

        ``companions`` (the checkpoint's model card) are copied beside the best model under their
        own names when it is promoted, under the same lock, so they always describe it; one the new
        best does not have is removed from beside it.
        """
        key = promotion_key(entry)
        rescored: dict[str, float | None] = {}  # incumbent run -> its AUC on this set, measured here
        for _ in range(MAX_RESCORE_ROUNDS):
            incumbent = self.best_run()
            if self._needs_rescore(incumbent, key, rescored) and rescore_incumbent is not None:
                rescored[incumbent["run_name"]] = rescore_incumbent(self.best_model_path)
            with self._locked():
                registry = self._read()
                self._refuse_another_runs_name(registry, entry)
                incumbent = self._find(registry, registry.get("best_run"))
                if self._needs_rescore(incumbent, key, rescored) and rescore_incumbent is not None:
                    continue  # another run became the best while this one was scoring the old best
                promote = self._decide(entry, incumbent, key, rescored)
                if promote:
                    # Copy before writing the JSON: if the JSON write then fails, the best model on
                    # disk is still a better one than the registry claims, never a worse one.
                    self._copy_best(best_checkpoint, companions)
                    registry["best_run"] = entry["run_name"]
                    registry.pop("best_set", None)  # decided on the new best's own set, the default
                registry["runs"] = [run for run in registry["runs"] if run.get("run_name") != entry["run_name"]]
                registry["runs"].append(_json_safe(entry))
                self._write(registry)
            return promote
        raise UserError(
            f"registry {self.metadata_path}: the best run kept changing while this run re-scored it "
            f"({MAX_RESCORE_ROUNDS} times); register it again with task=registry registry.rescore=true"
        )

    def _copy_best(self, checkpoint: str | os.PathLike[str], companions: Sequence[str | os.PathLike[str]]) -> None:
        self._remove_former_exports(Path(checkpoint))
        atomic_copy(checkpoint, self.best_model_path)
        for companion in map(Path, companions):
            beside = self.best_model_path.with_name(companion.name)
            if companion.is_file():
                atomic_copy(companion, beside)
            else:  # the new best has none: the previous best's must not stay to describe it
                beside.unlink(missing_ok=True)

    def _remove_former_exports(self, checkpoint: Path) -> None:
        """task=export's default output beside best_model.pth (model.onnx + model.json), when it is of the
        former best: it went on scoring that model with its threshold, looking like the new one's.
        Removed before the new best arrives, so no reader finds the two together; the graph before its
        sidecar, so a crash leaves a lone sidecar, which cannot score and is found again next time. An
        export the user named (export.output) is theirs to keep: loading it warns that its source changed."""
        sidecar = self.best_model_path.with_name("model.json")
        try:
            source = json.loads(sidecar.read_text(encoding="utf-8")).get("source_checkpoint")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return
        if not isinstance(source, dict) or Path(str(source.get("path"))).resolve() != self.best_model_path.resolve():
            return
        from deepfake.data.manifest import file_sha256

        if source.get("sha256") == file_sha256(checkpoint):  # the same model promoted again: its export stands
            return
        sidecar.with_suffix(".onnx").unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        log.info("removed model.onnx and model.json, the export of the former best; task=export makes one of the "
                 "new best")  # fmt: skip

    @staticmethod
    def _needs_rescore(incumbent: dict[str, Any] | None, key: str | None, rescored: dict) -> bool:
        return incumbent is not None and score_on(incumbent, key) is None and incumbent["run_name"] not in rescored

    def _decide(self, entry: dict[str, Any], incumbent: dict[str, Any] | None, key: str | None, rescored: dict) -> bool:
        """Whether ``entry`` replaces ``incumbent``; both scores go into the entries, the reason to the log."""
        candidate = score_on(entry, key)
        if entry.get("status", "finished") != "finished" or candidate is None:
            return False
        if incumbent is None or not self.best_model_path.is_file():
            return True
        name = incumbent["run_name"]
        if name in rescored and rescored[name] is not None:
            incumbent.setdefault("rescored", {})[key] = {"auc": rescored[name], "set": entry["promotion"]["set"]}
        held = score_on(incumbent, key)
        promote = held is not None and candidate > held
        where = describe((entry.get("promotion") or {}).get("set")) if key else "its validation set"
        if held is None:
            log.warning(
                "the incumbent %s has no score on %s (its best model could not be scored); it stays the best "
                "until task=registry registry.rescore=true", name, where,
            )  # fmt: skip
        elif name in rescored:
            log.info("re-scored the incumbent %s on %s: %.4f vs new %.4f, %s", name, where, held, candidate,
                     "promoted" if promote else "kept")  # fmt: skip
        if key is not None:
            entry["promotion"]["incumbent"] = {"run_name": name, "auc": held, "rescored": name in rescored}
        return promote

    def record_failure(self, entry: dict[str, Any], *, error: str) -> None:
        """Record a failed run with its one-line ``error``; never promoted, never the best.

        Several layers may report one failure (training with how far it got, then the job with the
        error line): what an earlier report knew is kept where a later one has no value for it. A run
        already registered as finished (tested, perhaps promoted) that failed in a step after that keeps
        its results, status and place, with the error beside them: "failed" on the global best lied.
        """
        with self._locked():
            registry = self._read()
            self._refuse_another_runs_name(registry, entry)
            existing = self._find(registry, entry["run_name"]) or {}
            known = {key: value for key, value in entry.items() if value is not None or key not in existing}
            if existing.get("status") == "finished":
                merged = _json_safe({**existing, "error": error})
            else:
                merged = _json_safe({**existing, **known, "status": "failed", "error": error})
            registry["runs"] = [run for run in registry["runs"] if run.get("run_name") != entry["run_name"]]
            registry["runs"].append(merged)
            self._write(registry)

    def record_score(self, run_name: str, identity: dict[str, Any], auc: float | None) -> None:
        """Keep a run's AUC on another promotion set (``entry["rescored"][key]``) for later comparisons."""
        with self._locked():
            registry = self._read()
            entry = self._find(registry, run_name)
            if entry is None:
                raise UserError(f"run {run_name!r} is not in the registry {self.metadata_path}")
            entry.setdefault("rescored", {})[identity["key"]] = _json_safe({"auc": auc, "set": identity})
            self._write(registry)

    def promote(
        self,
        run_name: str,
        checkpoint: str | os.PathLike[str],
        companions: Sequence[str | os.PathLike[str]] = (),
        *,
        set_key: str | None = None,
    ) -> None:
        """Make ``run_name`` the global best with ``checkpoint`` (after a fair re-ranking on the set
        ``set_key``, kept as ``best_set``: ranked on the best's own set, the listing put it below runs
        that beat it there)."""
        with self._locked():
            registry = self._read()
            if self._find(registry, run_name) is None:
                raise UserError(f"run {run_name!r} is not in the registry {self.metadata_path}")
            self._copy_best(checkpoint, companions)
            registry["best_run"] = run_name
            if set_key is None:
                registry.pop("best_set", None)
            else:
                registry["best_set"] = set_key
            self._write(registry)

    def update_run(self, run_name: str, *, missing_ok: bool = False, **fields: Any) -> bool:
        """Merge ``fields`` into the entry of ``run_name`` (e.g. test metrics after a test task).

        With ``missing_ok`` an unregistered run (a checkpoint from elsewhere) is left alone and False
        returned; the look-up happens under the lock, so no writer can slip in between.
        """
        with self._locked():
            registry = self._read()
            entry = self._find(registry, run_name)
            if entry is None:
                if missing_ok:
                    return False
                raise UserError(
                    f"run {run_name!r} is not in the registry {self.metadata_path}; register it by training first"
                )
            entry.update(_json_safe(fields))
            self._write(registry)
            return True

    def runs(self) -> list[dict[str, Any]]:
        """All entries, highest ``best_val_auc`` first; runs without a finite AUC last."""
        entries = self._read()["runs"]

        def rank(entry: dict[str, Any]) -> tuple[bool, float]:
            auc = finite_or_none(entry.get("best_val_auc"))
            return (auc is None, -(auc or 0.0))

        return sorted(entries, key=rank)

    def best_run(self) -> dict[str, Any] | None:
        """The entry whose checkpoint is ``best_model_path``, or None before any promotion."""
        registry = self._read()
        return self._find(registry, registry.get("best_run"))

    def ranking_set(self) -> str | None:
        """The key of the set the global best won on: the one a rescore promoted it on, else its own
        (registries written before ``best_set`` was kept say nothing else)."""
        registry = self._read()
        return registry.get("best_set") or promotion_key(self._find(registry, registry.get("best_run")))

    def get(self, run_name: str) -> dict[str, Any] | None:
        return self._find(self._read(), run_name)

    def check_name_free(self, run_name: str, run_dir: str | os.PathLike[str]) -> None:
        """Refuse, before a run's compute, a name the registry already holds for another run dir."""
        self._refuse_another_runs_name(self._read(), {"run_name": run_name, "run_dir": str(run_dir)})

    def _refuse_another_runs_name(self, registry: dict[str, Any], entry: dict[str, Any]) -> None:
        """An entry is named by its run dir's last folder: two run dirs of one name (``a/dup`` and
        ``b/dup``) would replace each other's entry, and best_run would name a model it does not hold."""
        existing = self._find(registry, entry["run_name"])
        theirs, ours = (existing or {}).get("run_dir"), entry.get("run_dir")
        if theirs and ours and Path(theirs).resolve() != Path(ours).resolve():
            raise UserError(
                f"registry {self.metadata_path} already holds a run named {entry['run_name']} from {theirs}; this "
                f"one ({ours}) would replace its entry: give hydra.run.dir (for a sweep, hydra.sweep.dir) a last "
                "folder name of its own"
            )

    def entry_for_run_dir(self, run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The entry recorded for ``run_dir`` (the same folder, however spelled), or None."""
        target = Path(run_dir).resolve()
        runs = self._read()["runs"]
        return next((run for run in runs if run.get("run_dir") and Path(run["run_dir"]).resolve() == target), None)

    def check_writable(self) -> None:
        """Fail now the way register_run would fail at the end of a run: an invalid registry (UserError),
        a lock that cannot be taken or a folder that cannot be written (ConfigError). Leaves only the lock file."""
        with self._locked():
            self._read()
            for folder in {self.metadata_path.parent, self.best_model_path.parent}:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    with tempfile.TemporaryFile(dir=folder):
                        pass
                except OSError as error:
                    raise self._unwritable(error) from None

    def _unwritable(self, error: OSError) -> ConfigError:
        return ConfigError(
            f"the registry {self.metadata_path} cannot be written ({error}); point paths.models_dir (or "
            "paths.registry and paths.best_model) at a writable folder"
        )

    @staticmethod
    def _find(registry: dict[str, Any], run_name: str | None) -> dict[str, Any] | None:
        if run_name is None:
            return None
        return next((run for run in registry["runs"] if run.get("run_name") == run_name), None)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock = FileLock(self._lock_path, timeout=self.lock_timeout)
        try:
            self._lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout:
            raise UserError(
                f"registry {self.metadata_path} stayed locked by another run for {self.lock_timeout:g} s "
                f"({self._lock_path}); wait for it to finish or raise registry.lock_timeout_s"
            ) from None
        except OSError as error:  # a models dir that is not a writable folder (or no longer is: read-only, full)
            raise self._unwritable(error) from None
        try:
            yield
        finally:
            lock.release()

    def _read(self) -> dict[str, Any]:
        if not self.metadata_path.exists():
            return {"version": REGISTRY_VERSION, "best_run": None, "runs": []}
        try:
            registry = json.loads(self.metadata_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(
                f"registry {self.metadata_path} is not valid JSON ({error}); repair it or move it away "
                "(it is never overwritten automatically)"
            ) from None
        if (
            not isinstance(registry, dict)
            or registry.get("version") != REGISTRY_VERSION
            or not isinstance(registry.get("runs"), list)
        ):
            raise UserError(
                f"registry {self.metadata_path} is not a version {REGISTRY_VERSION} model registry "
                "(expected keys version, best_run, runs); repair it or move it away"
            )
        for number, entry in enumerate(registry["runs"], start=1):
            if problem := _entry_problem(entry):
                raise UserError(f"registry {self.metadata_path}: run {number} {problem}; repair it or move it away")
        return registry

    def _write(self, registry: dict[str, Any]) -> None:
        text = json.dumps(registry, indent=2, allow_nan=False) + "\n"
        atomic_write_text(self.metadata_path, text)


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with a run's entry in a hand-edited registry, in the fields every reader relies on
    (each was a traceback in task=registry, prune or archive), or None."""
    if not isinstance(entry, dict):
        return f"is {entry!r}, not an entry"
    if not isinstance(entry.get("run_name"), str):
        return "has no run_name"
    auc = entry.get("best_val_auc")
    if auc is not None and (isinstance(auc, bool) or not isinstance(auc, int | float)):
        return f"({entry['run_name']}) has best_val_auc {auc!r}, not a number"
    if not isinstance(entry.get("tags", []), list):
        return f"({entry['run_name']}) has tags {entry['tags']!r}, not a list"
    return None
