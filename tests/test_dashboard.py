"""optuna-dashboard (``make dashboard DB=...``) serves a study's trials over HTTP on 127.0.0.1; ``make mlflow``
starts the MLflow UI as the docs say."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna

from helpers import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def test_the_dashboard_serves_a_study_and_its_trials(tmp_path: Path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="softmax", storage=storage, direction="maximize")
    lr = optuna.distributions.FloatDistribution(0.02, 0.5, log=True)
    for value in (0.8, 0.85):
        trial = study.ask({"optim.lr": lr})
        study.tell(trial, value)
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    server = subprocess.Popen(
        [str(dashboard), storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None and time.monotonic() < deadline and server.poll() is None:
            try:
                studies = get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, server.stderr.read().decode() if server.poll() is not None else "no answer"
        assert [(s["study_name"], s["directions"]) for s in studies] == [("softmax", ["maximize"])]
        trials = get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}?after=0")["trials"]
        assert [(t["number"], t["state"], t["values"]) for t in trials] == [
            (0, "Complete", [0.8]),
            (1, "Complete", [0.85]),
        ]
        assert [t["params"][0]["name"] for t in trials] == ["optim.lr", "optim.lr"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode is not None


def make_recipe(target: str, *installed: str) -> str:
    """The shell command of a make target, its prerequisites taken as installed."""
    skip = [arg for stamp in installed for arg in ("-o", stamp)]
    return subprocess.run(["make", "-n", *skip, target], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_make_mlflow_starts_one_quiet_worker_that_sends_no_usage_data_unless_told_to():
    """On 2 cores: one web worker and none of the job runners of MLflow's GenAI features; its web stack's
    deprecation (starlette's WSGI middleware) not printed."""
    recipe = make_recipe("mlflow", ".venv/.mlflow-ui-stamp")
    assert "MLFLOW_DISABLE_TELEMETRY=${MLFLOW_DISABLE_TELEMETRY:-true}" in recipe and "mlflow ui" in recipe
    assert "mlflow ui --workers 1" in recipe and "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in recipe
    assert 'PYTHONWARNINGS="ignore:starlette.middleware.wsgi is deprecated"' in recipe
