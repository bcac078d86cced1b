"""A multirun's summary, written into the sweep dir when it ends: ``summary.csv`` and ``summary.md``.

One row per job, best ``val/acc_best`` first; when the sweep varies ``seed``, also the mean ± std
over seeds of every other configuration (``summary_seeds.csv``).
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fashion_mnist_softmax import metrics as m

SUMMARY_CSV, SUMMARY_MD, SEEDS_CSV = "summary.csv", "summary.md", "summary_seeds.csv"
SUMMARY_METRICS = (m.VAL_ACC_BEST, m.TEST_ACC, m.TEST_LOSS)
SEED = "seed"


class SweepSummary(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): summarises the sweep dir at the end of a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(Path(config.hydra.sweep.dir))


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Each job dir's overrides (``.hydra/overrides.yaml``) and metrics (empty if the job left none)."""
    jobs = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        overrides = dict(o.split("=", 1) for o in yaml.safe_load(overrides_file.read_text()) or [])
        found = m.read_metrics(job_dir) if (job_dir / m.METRICS_FILE).is_file() else {}
        jobs.append(
            {"job": job_dir.name, "overrides": overrides, "metrics": {k: found.get(k) for k in SUMMARY_METRICS}}
        )
    return jobs


def _best_first(value: float | None) -> float:
    return -value if value is not None else float("inf")


def summary_rows(jobs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One row per job (varying overrides + metrics), best first; and the overrides all jobs share."""
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    varying = [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]
    common = {k: jobs[0]["overrides"][k] for k in keys if k not in varying}
    rows = [{"job": job["job"], **{k: job["overrides"].get(k, "") for k in varying}, **job["metrics"]} for job in jobs]
    return sorted(rows, key=lambda row: _best_first(row[m.VAL_ACC_BEST])), common


def seed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of each configuration (the other varying overrides)."""
    config_keys = [k for k in rows[0] if k not in ("job", SEED, *SUMMARY_METRICS)]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row[m.VAL_ACC_BEST] is not None:
            groups.setdefault(tuple(row[k] for k in config_keys), []).append(row)
    out = []
    for config, members in groups.items():
        out_row: dict[str, Any] = dict(zip(config_keys, config, strict=True))
        out_row["seeds"] = len(members)
        for metric in SUMMARY_METRICS:
            values = [r[metric] for r in members]
            out_row[f"{metric} mean"] = statistics.fmean(values)
            out_row[f"{metric} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(out_row)
    return sorted(out, key=lambda row: _best_first(row[f"{m.VAL_ACC_BEST} mean"]))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _cell(value: Any) -> str:
    if value is None:
        return "failed"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _markdown_table(header: list[str], lines: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(li) + " |" for li in lines)]
    )


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Write ``summary.csv``/``summary.md`` (and ``summary_seeds.csv``) into ``sweep_dir``; return the rows."""
    jobs = read_jobs(sweep_dir)
    if not jobs:
        return []
    rows, common = summary_rows(jobs)
    _write_csv(sweep_dir / SUMMARY_CSV, rows)
    md = [f"# Sweep {sweep_dir}", "", f"{len(rows)} jobs, best `{m.VAL_ACC_BEST}` first."]
    if common:
        md += ["", "Common overrides: " + " ".join(f"`{k}={v}`" for k, v in common.items())]
    md += ["", _markdown_table(list(rows[0]), [[_cell(v) for v in row.values()] for row in rows])]
    if SEED in rows[0] and (seeds := seed_rows(rows)):
        _write_csv(sweep_dir / SEEDS_CSV, seeds)
        n_config = len(seeds[0]) - 2 * len(SUMMARY_METRICS)  # the configuration's overrides and "seeds"
        lines = [
            [_cell(v) for v in list(row.values())[:n_config]]
            + [f"{row[f'{x} mean']:.4f} ± {row[f'{x} std']:.4f}" for x in SUMMARY_METRICS]
            for row in seeds
        ]
        md += [
            "",
            "## Mean ± std over seeds",
            "",
            _markdown_table([*list(seeds[0])[:n_config], *SUMMARY_METRICS], lines),
        ]
    (sweep_dir / SUMMARY_MD).write_text("\n".join(md) + "\n")
    return rows
