"""A multirun's summary in its sweep dir: ``summary.csv`` and ``summary.md``, rewritten as each job ends.

One row per job, best ``val/acc_best`` first, then pruned and interrupted jobs with the epoch they stopped at,
failed jobs last with their reason; with Optuna, the trial number; when the sweep varies ``seed``, also the mean
± std over seeds of every other configuration (``summary_seeds.csv``). The summary is written when each job
ends, so that it is there even when the sweep is stopped, and when the multirun ends, which then names it, and
ends with status 1 if a job failed: the sweepers (``hydra/sweeper=grid``, ``optuna``) go on past failed jobs.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import json
import logging
import math
import statistics
import sys
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from fashion_mnist_softmax.run.failures import ERROR_FILE
from fashion_mnist_softmax.run.metrics import (
    INTERRUPTED,
    METRICS_FILE,
    PRUNED,
    STATUS,
    TEST_ACC,
    TEST_LOSS,
    VAL_ACC_BEST,
)
from fashion_mnist_softmax.run.run_dirs import in_multirun

SUMMARY_CSV, SUMMARY_MD, SEEDS_CSV = "summary.csv", "summary.md", "summary_seeds.csv"
LOCK = ".summary.lock"
SUMMARY_METRICS = (VAL_ACC_BEST, TEST_ACC, TEST_LOSS)
SEED, REASON, TRIAL = "seed", "reason", "trial"
NOT_STARTED = "not started"
log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): the sweep dir's summary, after every job and at the end."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            with contextlib.suppress(OSError):  # a full disk, which the job says: the sweep's end writes it, or says so
                write_summary(Path(config.hydra.sweep.dir), config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir, config, final=True)
        (sweep_dir / LOCK).unlink(missing_ok=True)  # no job is left to write the summary
        jobs = f"{len(rows)} job{'s' * (len(rows) != 1)} ({status_counts(rows)})"
        log.info(f"{jobs} in {sweep_dir}; summary: {sweep_dir / SUMMARY_MD}")
        if failed := sum(row[STATUS] == "failed" for row in rows):
            print(f"{failed} of {len(rows)} jobs failed: see {sweep_dir / SUMMARY_MD}.", file=sys.stderr, flush=True)
            sys.exit(1)  # an exception here would only be a warning of Hydra's


def _parsed(path: Path) -> Any:
    """A job's YAML or JSON file, parsed again only once it changed: each job that ends reads every job's files.
    Not to be changed by the caller."""
    stat = path.stat()
    return _parse(path, stat.st_ino, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4096)
def _parse(path: Path, inode: int, mtime_ns: int, size: int) -> Any:
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def planned_jobs(sweep_dir: Path) -> list[dict[str, str]]:
    """The overrides of every job of a grid sweep (``hydra/sweeper=grid``, Hydra's basic sweeper), in the order of
    their numbers, from the sweep's ``multirun.yaml``: the grid of ``hydra.sweeper.params`` and the command line's
    sweeps, as the basic sweeper makes it. Empty for another sweeper."""
    saved = sweep_dir / "multirun.yaml"
    config = _parsed(saved) if saved.is_file() else None
    sweeper = (config or {}).get("hydra", {}).get("sweeper", {})
    if not str(sweeper.get("_target_")).endswith(("GridSweeper", "BasicSweeper")):
        return []
    grid = {
        key: [*override.sweep_string_iterator()]
        if override.is_sweep_override()
        else [override.get_value_element_as_str()]
        for key, override in _given(sweeper.get("params"), config["hydra"]["overrides"]["task"]).items()
    }
    return [dict(zip(grid, job, strict=True)) for job in itertools.product(*grid.values())]


def _given(params: Mapping[str, Any] | None, task: Iterable[str]) -> dict[str, Override]:
    """A sweep's overrides by key: its sweeper's ``params``, then the command line's, which has the last word on a
    key in both (in the place where the key came first)."""
    given = [f"{k}={v}" for k, v in (params or {}).items()] + [*task]
    return {o.get_key_element(): o for o in OverridesParser.create().parse_overrides(given)}


def read_jobs(sweep_dir: Path, final: bool = False) -> list[dict[str, Any]]:
    """Each job dir's overrides, status, reason if it failed, and metrics; and, in a grid sweep, each job that has
    not started (a stopped sweep's)."""
    jobs = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml"), key=lambda p: int(p.parent.parent.name)):
        job_dir = overrides_file.parent.parent
        # key=value, and a delete override (~key) as key ~key with the value ""
        overrides = dict(o.partition("=")[::2] for o in _parsed(overrides_file) or [])
        found, status, reason = {}, "running", ""
        if (job_dir / METRICS_FILE).is_file():
            found = _parsed(job_dir / METRICS_FILE)
            status = found[STATUS] if found.get(STATUS) in (PRUNED, INTERRUPTED) else "ok"
            reason = f"{status} after epoch {len(found['history'])}" if status != "ok" else ""
        elif (job_dir / ERROR_FILE).is_file():
            status, reason = "failed", (job_dir / ERROR_FILE).read_text().split("\n\n")[0].strip()
        elif final:
            status, reason = "failed", "the job left neither metrics.json nor error.txt (killed?)"
        metrics = {k: found.get(k) for k in SUMMARY_METRICS}
        jobs.append({"job": job_dir.name, "overrides": overrides, STATUS: status, REASON: reason, "metrics": metrics})
    started = {job["job"] for job in jobs}
    for num, overrides in enumerate(planned_jobs(sweep_dir)):
        if str(num) not in started:
            unstarted = {STATUS: NOT_STARTED, REASON: "", "metrics": dict.fromkeys(SUMMARY_METRICS)}
            jobs.append({"job": str(num), "overrides": overrides, **unstarted})
    return jobs


def _optuna_search(config: DictConfig) -> bool:
    return "optuna" in str(config.hydra.sweeper.get("_target_", ""))


def searched_keys(config: DictConfig) -> set[str]:
    """The keys an Optuna search draws: the sweeps of its ``params`` and of the command line."""
    if not _optuna_search(config):
        return set()
    given = _given(config.hydra.sweeper.get("params"), config.hydra.overrides.task)
    return {key for key, override in given.items() if override.is_sweep_override()}


def trial_numbers(config: DictConfig, jobs: list[dict[str, Any]]) -> dict[str, int] | None:
    """Each job's Optuna trial number (its job number in an in-memory study); None without Optuna."""
    sweeper = config.hydra.sweeper
    if not _optuna_search(config):
        return None
    if not sweeper.get("storage"):
        return {job["job"]: int(job["job"]) for job in jobs}
    import optuna

    numbers = {}
    trials = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage).trials
    for job in jobs:  # the sweeper writes a trial's parameters into the job's overrides as name=str(value)
        same = [t.number for t in trials if all(job["overrides"].get(k) == str(v) for k, v in t.params.items())]
        if same:
            numbers[job["job"]] = same[-1]
    return numbers


def _best_first(row: dict[str, Any]) -> tuple:
    value = row[VAL_ACC_BEST]
    return ({"ok": 0, PRUNED: 1, NOT_STARTED: 3}.get(row[STATUS], 2), -value if value is not None else 0.0)


def summary_rows(
    jobs: list[dict[str, Any]], trials: dict[str, int] | None = None, searched: Collection[str] = ()
) -> tuple[list[dict], dict]:
    """One row per job (varying overrides, status, metrics, reason), best first; and the overrides all jobs share.
    A key in ``searched`` is a column, even where every trial drew the same value: a search did not fix it."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"] if k != TRIAL))  # numbered apart
    varying = [k for k in keys if k in searched or len({job["overrides"].get(k) for job in jobs}) > 1]
    common = {k: jobs[0]["overrides"][k] for k in keys if k not in varying}
    rows = []
    for job in jobs:
        row = {"job": job["job"]} | ({TRIAL: trials.get(job["job"], "")} if trials is not None else {})
        row |= {k: job["overrides"].get(k, "") for k in varying} | {STATUS: job[STATUS]} | job["metrics"]
        rows.append(row | {REASON: job[REASON]})
    return sorted(rows, key=_best_first), common


def seed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of each configuration (the other varying overrides)."""
    config_keys = [k for k in rows[0] if k not in ("job", TRIAL, SEED, STATUS, REASON, *SUMMARY_METRICS)]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row[STATUS] == "ok":
            groups.setdefault(tuple(row[k] for k in config_keys), []).append(row)
    out = []
    for config, members in groups.items():
        out_row: dict[str, Any] = dict(zip(config_keys, config, strict=True)) | {"seeds": len(members)}
        for metric in SUMMARY_METRICS:  # val/acc_best is None where no validation ran
            values = [r[metric] for r in members if r[metric] is not None]
            mean = statistics.fmean(values) if values else None
            # the sample std in floats (statistics.stdev is exact, in fractions, and a summary is written per job),
            # 0 for equal values, where a float mean may be off by a last bit
            spread = len(set(values)) > 1
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if spread else 0.0
            out_row[f"{metric} mean"], out_row[f"{metric} std"] = mean, std if values else None
        out.append(out_row)
    return sorted(out, key=lambda row: _best_first(row | {STATUS: "ok", VAL_ACC_BEST: row[f"{VAL_ACC_BEST} mean"]}))


def status_counts(rows: list[dict[str, Any]]) -> str:
    """How many jobs ended how, best first: "3 ok, 1 pruned"."""
    return ", ".join(f"{n} {status}" for status, n in Counter(row[STATUS] for row in rows).items())


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cell(value: Any) -> str:
    """A value for reading: metrics to 4 decimals, numbers given on the command line to 4 significant digits, a
    metric a job does not have (failed, pruned before testing) as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    try:
        return f"{float(value):.4g}" if isinstance(value, str) and "." in value else str(value)
    except ValueError:
        return str(value)


def _override(key: str, value: str) -> str:
    """An override as typed: ``key=value``, or ``~key`` for a delete override without a value."""
    return key if key.startswith("~") and value == "" else f"{key}={value}"


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    header = list(rows[0])
    lines = [[_cell(v).replace("|", "/") for v in row.values()] for row in rows]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(li) + " |" for li in lines),
    ]


def write_summary(sweep_dir: Path, config: DictConfig | None = None, final: bool = False) -> list[dict[str, Any]]:
    """Write ``summary.csv``/``summary.md`` (and ``summary_seeds.csv``) into ``sweep_dir``; return the rows."""
    with FileLock(str(sweep_dir / LOCK)):  # jobs that end together write one after the other
        jobs = read_jobs(sweep_dir, final)
        if not jobs:
            return []
        trials = trial_numbers(config, jobs) if config is not None else None
        rows, common = summary_rows(jobs, trials, searched_keys(config) if config is not None else set())
        _write_csv(sweep_dir / SUMMARY_CSV, rows)
        md = [f"# Sweep {sweep_dir}", "", f"{len(rows)} jobs, {status_counts(rows)}, best `{VAL_ACC_BEST}` first."]
        if common:
            md += ["", "Common overrides: " + " ".join(f"`{_override(k, v)}`" for k, v in common.items())]
        md += ["", *_markdown_table(rows)]
        if SEED in rows[0] and (seeds := seed_rows(rows)):
            _write_csv(sweep_dir / SEEDS_CSV, seeds)
            shown = [
                {k: v for k, v in row.items() if not k.endswith((" mean", " std"))}
                | {
                    x: f"{row[f'{x} mean']:.4f} ± {row[f'{x} std']:.4f}" if row[f"{x} mean"] is not None else ""
                    for x in SUMMARY_METRICS
                }
                for row in seeds
            ]
            md += ["", "## Mean ± std over seeds", "", *_markdown_table(shown)]
        (sweep_dir / SUMMARY_MD).write_text("\n".join(md) + "\n")
    return rows


def sweep_stopped(where: str) -> None:
    """In a multirun, which stops with an interrupted job: its summary says so, and which jobs ran."""
    if in_multirun():
        sweep_dir = Path(HydraConfig.get().sweep.dir)
        write_summary(sweep_dir)
        print(f"The sweep stopped{where}: see {sweep_dir / SUMMARY_MD}")
