"""Shared fixtures: the real FER2013 data beside the checkout, and a tiny exported model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import training  # noqa: E402,F401  before any test runs TensorFlow: keeps oneDNN to AVX2 (training/__init__.py)

ROOT = Path(__file__).resolve().parents[1]
FER_DIR = ROOT.parent / "shared" / "datasets" / "fer2013"
SAMPLE_CSV = FER_DIR / "fer2013-sample.csv"
IMAGES_ZIP = FER_DIR / "fer2013-images.zip"


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    if not SAMPLE_CSV.exists():
        pytest.fail(f"FER2013 sample not found at {SAMPLE_CSV} (../shared beside the checkout)")
    return SAMPLE_CSV


@pytest.fixture(scope="session")
def images_zip() -> Path:
    if not IMAGES_ZIP.exists():
        pytest.fail(f"FER2013 zip not found at {IMAGES_ZIP} (../shared beside the checkout)")
    return IMAGES_ZIP


@pytest.fixture(scope="session")
def sample_data(sample_csv):
    from training.data import load_fer2013
    return load_fer2013(sample_csv)


@pytest.fixture(scope="session")
def tiny_run_dir(sample_csv, tmp_path_factory) -> Path:
    """A `tiny_cnn` training run: 8 epochs on 30 faces per class of the sample CSV (a few seconds)."""
    from training.train import TrainConfig, train
    run = tmp_path_factory.mktemp("tiny_run")
    train(TrainConfig(model="tiny_cnn", data=str(sample_csv), run_dir=str(run), epochs=8, batch_size=32,
                      lr=1e-2, schedule="constant", warmup_epochs=0, label_smoothing=0.0, augment=None,
                      per_class=30), verbose=0)
    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_run_dir, tmp_path_factory) -> Path:
    """That run exported to a model directory (the int8 accuracy gate is off: the model is near chance)."""
    from training.export import export_model
    out = tmp_path_factory.mktemp("tiny_model") / "model"
    export_model(tiny_run_dir, out, max_int8_drop=None)
    return out


@pytest.fixture(scope="session")
def detector():
    """The pipeline's face detector with its default (measured) configuration."""
    from shared.detector import FaceDetector
    return FaceDetector()
