"""notebooks/softmax_regression.ipynb runs end to end on the synthetic data, as a learner runs it cell by cell."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient
from omegaconf import OmegaConf

from helpers import ROOT, tiny_overrides

NOTEBOOK = ROOT / "notebooks" / "softmax_regression.ipynb"


def test_the_notebook_runs_and_shows_the_chapters_numbers_and_figures(fake_archives: Path, tmp_path: Path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "outputs are not committed"
    (parameters,) = (cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", []))
    data = [o for o in tiny_overrides(fake_archives, tmp_path / "data", tmp_path) if o.startswith("data.")]
    parameters.source = f"overrides = {data!r}\nmax_epochs = 2"  # as papermill injects parameters
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()

    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "(tensor(1.4979), tensor(0.5000))" in text  # the chapter's cross-entropy example
    losses = [float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith("step ")]
    assert len(losses) == 5 and losses[-1] < losses[0]  # SGD by hand lowers the batch's loss
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split(",")[0] for line in epochs] == ["epoch 1", "epoch 2"] * 2  # the chapter's line, per model
    tested = dict(line.split(": ", 1) for line in text.splitlines() if "test accuracy" in line)
    assert tested.keys() == {"scratch", "concise"}
    assert tested["scratch"] == tested["concise"]  # scratch ≡ concise: test accuracy and loss to 4 digits
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # samples, weight templates, confusion matrix, predictions


def test_the_notebook_names_every_key_the_optuna_search_varies():
    searched = OmegaConf.load(ROOT / "conf" / "hparams_search" / "optuna.yaml").hydra.sweeper.params
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (said,) = [item for cell in nb.cells for item in cell.source.split("\n- ") if "hparams_search=optuna" in item]
    assert [key for key in searched if f"`{key}`" not in said] == []
