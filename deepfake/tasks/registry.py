"""task=registry: the registered runs as a table (optionally one sweep's), and a fair re-ranking.

``registry.rescore=true`` scores the chosen runs' best.pth on one promotion set
(``registry.promotion_csv``), keeps each score in its entry, and makes the best of them the global
best, so runs validated on different images can be ranked after the fact.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from deepfake.errors import ConfigError
from deepfake.tasks import session, values
from deepfake.tasks.display import print_registry
from deepfake.tracking.promotion import score_on

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    registry = session.open_registry(cfg)
    runs = registry.runs()
    title, set_key = None, registry.ranking_set()
    if cfg.task.get("sweep"):
        runs = runs_of_sweep(runs, str(cfg.task.sweep), Path(cfg.paths.multirun_dir), key="task.sweep")
        title = f"sweep {cfg.task.sweep}"
    runs, chosen = matching(runs, cfg.task.get("match"), cfg.task.get("tags"))
    if chosen:
        title = ", ".join(filter(None, [title, chosen]))
    if cfg.registry.rescore:
        rescored = {run["run_name"] for run in runs}
        set_key, title = rescore(cfg, registry, runs)
        runs = [run for run in registry.runs() if run["run_name"] in rescored]
    print_registry(
        runs,
        registry.best_run(),
        registry_path=cfg.paths.registry,
        best_model_path=cfg.paths.best_model,
        limit=values.positive_int(cfg.task.limit, "task.limit"),  # -1 sliced the last run off, silently
        title=title,
        set_key=set_key,
    )


def matching(runs: list[dict], match: str | None, tags) -> tuple[list[dict], str]:
    """The entries whose run name or ``name`` holds ``match`` and that carry every tag of ``tags``
    (``task.tags=x`` or ``[x,y]``), and a title saying so ("" when nothing narrows them)."""
    wanted = session.text_list(tags)
    if match:
        runs = [run for run in runs if str(match) in run["run_name"] or str(match) in str(run.get("name") or "")]
    if wanted:
        runs = [run for run in runs if set(wanted) <= set(run.get("tags") or [])]
    said = [f"matching {match!r}"] * bool(match) + [f"tagged {', '.join(wanted)}"] * bool(wanted)
    return runs, ", ".join(said)


def runs_of_sweep(runs: list[dict], sweep: str, multirun_dir: Path, key: str) -> list[dict]:
    """The entries whose run dir lies in the sweep dir ``sweep``: a path, or a name under multirun_dir.
    ``key`` is the setting that gave it (task.sweep, compare.sweep), named in the error."""
    # As given (from here), a stamp under multirun_dir, or multirun/<stamp> from the root beside it.
    tried = [Path(sweep).expanduser(), multirun_dir / sweep, multirun_dir.parent / sweep]
    sweep_dir = next((path for path in tried if path.is_dir()), None)
    if sweep_dir is None:
        raise ConfigError(f"{key}={sweep}: no such sweep dir (looked in {multirun_dir}); pass <stamp> (a folder "
                          "there) or the sweep dir's path")  # fmt: skip
    sweep_dir = sweep_dir.resolve()
    return [run for run in runs if sweep_dir in Path(run.get("run_dir", "")).resolve().parents]


def rescore(cfg: DictConfig, registry, runs: list[dict]) -> tuple[str, str]:
    """Score the chosen finished runs (and the current best) on the promotion set; promote the top."""
    from deepfake.tasks.promotion import promotion_set, rescorer

    wanted = set(session.text_list(cfg.registry.get("runs"))) or None
    if wanted and (unknown := wanted - {run["run_name"] for run in registry.runs()}):
        raise ConfigError(f"registry.runs: {', '.join(sorted(unknown))} not in {cfg.paths.registry}; see task=registry")
    best = registry.best_run()
    candidates = [
        run for run in runs
        if run.get("status", "finished") == "finished" and (wanted is None or run["run_name"] in wanted)
    ]  # fmt: skip
    if best is not None and best["run_name"] not in {run["run_name"] for run in candidates}:
        candidates.append(best)  # the current best always takes part: it is what a new top would replace
    chosen = promotion_set(cfg, candidates)
    score = rescorer(cfg, chosen)
    best_name = best["run_name"] if best is not None else None
    scored = {}
    for run in candidates:
        checkpoint = Path(run.get("run_dir", "")) / "best.pth"
        if run["run_name"] == best_name and registry.best_model_path.is_file():
            checkpoint = registry.best_model_path  # its own copy: the run dir may be archived or gone
        auc = score_on(run, chosen.key)
        if auc is None:
            auc = score(checkpoint) if checkpoint.is_file() else None
            if auc is None:
                log.error("skipped %s: %s cannot be scored (missing or unreadable)", run["run_name"], checkpoint)
                continue
            registry.record_score(run["run_name"], chosen.identity, auc)
        scored[run["run_name"]] = (auc, checkpoint)
    if best_name is not None and best_name not in scored:  # never replaced unseen, as register_run keeps it
        log.error("the global best %s could not be scored on %s: it stays the global best", best_name, chosen)
    elif scored:
        top = max(scored, key=lambda name: (scored[name][0], name == best_name))  # a tie keeps the incumbent
        if top != best_name:
            card = scored[top][1].with_name("model_card.md")
            registry.promote(top, scored[top][1], companions=[card], set_key=chosen.key)
            log.info(
                "re-ranked %d run(s) on %s: %s is the global best (AUC %.4f)", len(scored), chosen, top, scored[top][0]
            )
        else:
            log.info(
                "re-ranked %d run(s) on %s: %s stays the global best (AUC %.4f)",
                len(scored),
                chosen,
                top,
                scored[top][0],
            )
    return chosen.key, f"scores on {chosen}"
