"""The model registry: one JSON entry per run and a copy of the best model across runs.

Runs of a sweep finish at the same moment and all update the same files, so every read-modify-write
happens under a file lock. The JSON and the best model are each replaced atomically, so readers
(``runs``, ``get``) need no lock: they always see a whole file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from deepfake.errors import UserError
from deepfake.tracking.checkpoint import atomic_copy, atomic_write_text

REGISTRY_VERSION = 1
DEFAULT_LOCK_TIMEOUT_S = 600.0


def _finite_or_none(value: Any) -> float | None:
    """The value as a float when it is a finite number, else None (NaN never ranks or promotes)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


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
        companions: Sequence[str | os.PathLike[str]] = (),
    ) -> bool:
        """Add or replace the entry named ``entry["run_name"]``; promote its checkpoint when its
        ``best_val_auc`` beats the current best strictly and its ``status`` (default finished) is
        ``finished``: a failed run is recorded, never promoted. Return whether it was promoted.

        ``companions`` (the checkpoint's model card) are copied beside the best model under their
        own names when it is promoted, under the same lock, so they always describe it."""
        run_name = entry["run_name"]
        with self._locked():
            registry = self._read()
            champion = self._find(registry, registry.get("best_run"))
            champion_auc = _finite_or_none(champion.get("best_val_auc")) if champion else None
            candidate_auc = _finite_or_none(entry.get("best_val_auc"))
            finished = entry.get("status", "finished") == "finished"
            promote = finished and candidate_auc is not None and (champion_auc is None or candidate_auc > champion_auc)
            if promote:
                # Copy before writing the JSON: if the JSON write then fails, the best model on
                # disk is still a better one than the registry claims, never a worse one.
                atomic_copy(best_checkpoint, self.best_model_path)
                for companion in map(Path, companions):
                    atomic_copy(companion, self.best_model_path.with_name(companion.name))
                registry["best_run"] = run_name
            registry["runs"] = [run for run in registry["runs"] if run.get("run_name") != run_name]
            registry["runs"].append(_json_safe(entry))
            self._write(registry)
        return promote

    def record_failure(self, entry: dict[str, Any], *, error: str) -> None:
        """Record a failed run with its one-line ``error``; never promoted, never the best.

        Several layers may report one failure (training with how far it got, then the job with the
        error line): what an earlier report knew is kept where a later one has no value for it.
        """
        with self._locked():
            registry = self._read()
            existing = self._find(registry, entry["run_name"]) or {}
            known = {key: value for key, value in entry.items() if value is not None or key not in existing}
            merged = _json_safe({**existing, **known, "status": "failed", "error": error})
            registry["runs"] = [run for run in registry["runs"] if run.get("run_name") != entry["run_name"]]
            registry["runs"].append(merged)
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
            auc = _finite_or_none(entry.get("best_val_auc"))
            return (auc is None, -(auc or 0.0))

        return sorted(entries, key=rank)

    def best_run(self) -> dict[str, Any] | None:
        """The entry whose checkpoint is ``best_model_path``, or None before any promotion."""
        registry = self._read()
        return self._find(registry, registry.get("best_run"))

    def get(self, run_name: str) -> dict[str, Any] | None:
        return self._find(self._read(), run_name)

    @staticmethod
    def _find(registry: dict[str, Any], run_name: str | None) -> dict[str, Any] | None:
        if run_name is None:
            return None
        return next((run for run in registry["runs"] if run.get("run_name") == run_name), None)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self._lock_path, timeout=self.lock_timeout)
        try:
            lock.acquire()
        except Timeout:
            raise UserError(
                f"registry {self.metadata_path} stayed locked by another run for {self.lock_timeout:g} s "
                f"({self._lock_path}); wait for it to finish or raise the lock timeout"
            ) from None
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
        return registry

    def _write(self, registry: dict[str, Any]) -> None:
        text = json.dumps(registry, indent=2, allow_nan=False) + "\n"
        atomic_write_text(self.metadata_path, text)
