"""notebooks/walkthrough.ipynb runs top to bottom without errors, in a kernel of this very interpreter."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import ipykernel  # noqa: F401  (the kernel the notebook runs on)
import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch):
    """A `python3` kernelspec pointing at sys.executable, found first on JUPYTER_PATH, so a system-wide
    python3 kernel of another interpreter can never be picked up."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ferlive tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("FERLIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))   # the notebook's run and export land here
    return "python3"


@pytest.mark.slow
def test_walkthrough_runs(python3_kernel):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=python3_kernel, timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()   # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    assert images >= 4, f"expected sample faces, balance, augmented batch and live curves; got {images} images"
    train_cell = next(c for c in nb.cells if "train(cfg" in c.source)
    assert any("image/png" in o.get("data", {}) for o in train_cell.outputs), "no live training curves"


def test_walkthrough_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
