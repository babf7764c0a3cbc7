"""`ferlive explore`: the counts table and the three PNGs, on the real sample CSV."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.labels import EMOTIONS
from training.explore import AUGMENTED_PNG, BALANCE_PNG, SAMPLES_PNG, counts_table

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_counts_table(sample_data):
    table = counts_table(sample_data)
    lines = table.splitlines()
    assert lines[0].split() == ["class", "Training", "PublicTest", "PrivateTest", "total"]
    for name in EMOTIONS:
        row = next(line for line in lines if line.split()[0] == name)
        assert row.split()[1:] == ["60", "20", "20", "100"]
    assert lines[-1].split() == ["total", "420", "140", "140", "700"]


def test_counts_table_with_unlabelled_test_faces(sample_data):
    from training.data import FerData
    test = FerData(sample_data.faces[:5], np.full(5, -1), np.array(["Test"] * 5))
    table = counts_table(test)
    assert table.splitlines()[0].split() == ["class", "Test", "total"]
    assert "5 unlabelled" in table


def test_augment_batch_changes_faces(sample_data):
    from training.explore import augment_batch
    faces = sample_data.faces[:8]
    out = augment_batch(faces, seed=1)
    assert out.shape == (8, 48, 48) and 0.0 <= out.min() and out.max() <= 1.0
    assert not np.allclose(out, faces / 255.0)


@pytest.mark.slow
def test_explore_cli_writes_table_and_pngs(sample_csv, tmp_path):
    env = dict(os.environ, FERLIVE_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-m", "training", "explore", "--data", str(sample_csv),
                          "--out", str(tmp_path / "explore")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "700 faces" in out.stdout
    assert "happy" in out.stdout and "PublicTest" in out.stdout
    for name in (SAMPLES_PNG, BALANCE_PNG, AUGMENTED_PNG):
        png = tmp_path / "explore" / name
        assert png.read_bytes()[:8] == PNG_MAGIC, name
        assert png.stat().st_size > 10_000, name
