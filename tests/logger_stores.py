"""Read back what a run logged to MLflow's sqlite store and to a W&B offline run, with no network."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from wandb.proto import wandb_internal_pb2

Logged = dict[str, list[tuple[int, float]]]  # (step, value) per metric


def mlflow_runs(db: Path, experiment: str = "train") -> dict[str, dict]:
    """Each run of the experiment by its ``run_dir`` tag: its name, status, metrics, params and artifact names."""
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    found = {}
    for run in runs:
        run_id = run.info.run_id
        metrics = {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in run.data.metrics
        }
        artifacts = [Path(a.path).name for a in client.list_artifacts(run_id, "figures")]
        found[run.data.tags["run_dir"]] = {
            "name": run.info.run_name,
            "status": run.info.status,
            "metrics": metrics,
            "params": run.data.params,
            "artifacts": sorted(artifacts),
        }
    return found


def _records(path: Path):
    """The protobuf records of a ``.wandb`` file: LevelDB's log format (32 KiB blocks of records with a 7-byte
    header: checksum, length, type; a record split across blocks is FIRST, MIDDLE..., LAST) after a 7-byte header."""
    data, block, pos, parts = path.read_bytes(), 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_run(run_dir: Path) -> dict:
    """The one offline W&B run in ``run_dir/wandb``: its name, its tags, its scalars by Lightning's step, its config
    keys, its images."""
    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    metrics: Logged = {}
    config, exit_code, name, tags = set(), None, None, []
    for record in _records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            name, tags = record.run.display_name, list(record.run.tags)
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for key, value in row.items():
                if not key.startswith("_") and key != "trainer/global_step" and isinstance(value, int | float):
                    metrics.setdefault(key, []).append((row["trainer/global_step"], value))
        elif kind == "config":
            config |= {item.key for item in record.config.update}
        elif kind == "exit":
            exit_code = record.exit.exit_code
    images = sorted(p.name.split("_")[0] for p in path.parent.glob("files/media/images/*.png"))
    return {"name": name, "tags": tags, "metrics": metrics, "config": config, "images": images, "exit_code": exit_code}
