"""Shared fixtures: the real FER2013 data beside the checkout, and a tiny exported model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
