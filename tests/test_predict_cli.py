"""`ferlive predict` on many images: files, folders and globs; one JSON or CSV for all with the API's result
shape; annotated copies; batched inference equal to one image at a time; unreadable files skipped by name."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.analyzer import FaceAnalyzer
from shared.labels import EMOTIONS
from shared.synthetic import place_faces
from training.predict import expand_inputs, predict_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(sample_data, tmp_path_factory) -> Path:
    """A folder of scenes (faces placed into frames), face crops in a sub-folder, and one broken file."""
    d = tmp_path_factory.mktemp("photos")
    (d / "crops").mkdir()
    rng = np.random.default_rng(0)
    for k in range(5):
        frame, _ = place_faces(sample_data.faces[2 * k:2 * k + 2], rng=rng, background="textured", face_px=(120, 170))
        cv2.imwrite(str(d / f"scene{k}.jpg"), frame)
        cv2.imwrite(str(d / "crops" / f"face{k}.png"), sample_data.faces[20 + k])
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return d


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", "predict", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


def test_inputs_expand_folders_and_globs(photos):
    paths, missing = expand_inputs([str(photos / "crops"), str(photos / "scene*.jpg"), str(photos / "nope.png")])
    assert [p.name for p in paths] == [f"face{k}.png" for k in range(5)] + [f"scene{k}.jpg" for k in range(5)]
    assert missing == [str(photos / "nope.png")]


def test_batched_equals_one_at_a_time(photos, tiny_model_dir):
    analyzer = FaceAnalyzer.load(tiny_model_dir)
    paths, _ = expand_inputs([str(photos)])
    batched = {p: r for p, _, r in predict_images(analyzer, paths, batch=4)}
    for p in paths:
        if p.name == "broken.jpg":
            assert isinstance(batched[p], FileNotFoundError)
            continue
        one = analyzer.analyze(cv2.imread(str(p)))
        assert batched[p].to_json() == one.to_json()


def test_one_csv_and_one_json_for_all_and_annotated_copies(photos, tiny_model_dir, tmp_path):
    r = run(str(photos), "--model-dir", str(tiny_model_dir), "--out", str(tmp_path / "all.json"),
            "--annotate", str(tmp_path / "ann"))
    assert r.returncode == 1, r.stderr  # the broken file
    assert "skipped" in r.stderr and "broken.jpg" in r.stderr
    results = json.loads((tmp_path / "all.json").read_text())
    assert len(results) == 10 and all(set(f) == {"box", "emotion", "scores", "landmarks"}
                                      for x in results for f in x["faces"])
    scenes = [x for x in results if "scene" in x["image"]]
    assert sum(len(x["faces"]) for x in scenes) >= 3  # faces were found in the scenes (their count: test_detector)
    crops = [x for x in results if "face" in Path(x["image"]).name]
    assert all(len(x["faces"]) == 1 and x["faces"][0]["landmarks"] is None for x in crops)  # 48 px: one crop each
    assert len(list((tmp_path / "ann").iterdir())) == 10
    r = run(str(photos / "scene*.jpg"), "--model-dir", str(tiny_model_dir), "--out", str(tmp_path / "all.csv"))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "all.csv")))
    assert len(rows) == sum(len(x["faces"]) for x in scenes)
    by_image = {x["image"]: x["faces"] for x in scenes}
    for row in rows:
        face = by_image[row["image"]][int(row["face"])]
        assert [int(row[c]) for c in "xywh"] == face["box"] and row["emotion"] == face["emotion"]
        assert [float(row[e]) for e in EMOTIONS] == pytest.approx([face["scores"][e] for e in EMOTIONS])
