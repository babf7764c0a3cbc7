"""export (model directory, card, gates), evaluate (metrics, report, PNG) and the CLI end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.labels import EMOTIONS
from shared.model import CARD, MODEL_FILES
from training.evaluate import classification_report, format_report, plot_confusion, with_flip_tta
from training.export import ExportError, check_int8_gate

ROOT = Path(__file__).resolve().parents[1]


def ferlive(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_classification_report_by_hand():
    labels = np.array([0, 0, 1, 3, 3, 3])
    probs = np.eye(7)[[0, 3, 1, 3, 3, 0]]
    r = classification_report(labels, probs)
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["angry"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert r["per_class"]["happy"]["recall"] == pytest.approx(2 / 3)
    assert r["per_class"]["fear"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    cm = np.array(r["confusion"])
    assert cm.sum() == 6 and cm[0, 3] == 1 and cm[3, 0] == 1 and cm[3, 3] == 2
    text = format_report(r, "t")
    assert all(e in text for e in EMOTIONS) and "0.6667" in text


def test_flip_tta_averages_mirror():
    def predict(faces):  # "probability" of class 0 = mean of the left half
        p = np.zeros((len(faces), 7))
        p[:, 0] = faces[:, :, :24].mean(axis=(1, 2)) / 255
        return p
    faces = np.zeros((1, 48, 48), np.uint8)
    faces[:, :, :24] = 255
    assert with_flip_tta(predict)(faces)[0, 0] == pytest.approx(0.5)


def test_int8_gate():
    assert check_int8_gate(0.60, 0.595)["passed"]
    with pytest.raises(ExportError, match="points below float32"):
        check_int8_gate(0.60, 0.585)


def test_plot_confusion_writes_png(tmp_path):
    plot_confusion(np.eye(7, dtype=int).tolist(), tmp_path / "cm.png", "t")
    assert cv2.imread(str(tmp_path / "cm.png")) is not None


def test_export_writes_model_dir_and_card(tiny_model_dir, tiny_run_dir, sample_data):
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == sorted(MODEL_FILES)
    card = json.loads((tiny_model_dir / CARD).read_text())
    assert card["architecture"] == "tiny_cnn" and card["labels"] == list(EMOTIONS)
    assert card["input"]["shape"] == [48, 48, 1] and card["input"]["range"] == [0.0, 1.0]
    q = card["quantization"]["int8"]
    assert q["input"]["dtype"] == q["output"]["dtype"] == "int8"
    assert q["input"]["scale"] == pytest.approx(1 / 255) and q["input"]["zero_point"] == -128
    assert card["calibration"] == {"split": "Training", "count": 7 * 60, "seed": 0}
    for split in ("PublicTest", "PrivateTest"):
        assert card["metrics"][split]["n"] == len(sample_data.split(split))
        for form in ("keras", "float32", "int8"):
            for key in ("accuracy", "accuracy_flip_tta"):
                assert 0.0 <= card["metrics"][split][form][key] <= 1.0
        assert card["metrics"][split]["keras"]["accuracy"] == card["metrics"][split]["float32"]["accuracy"]
    report = card["metrics"]["int8_PrivateTest"]
    assert list(report["recall"]) == list(EMOTIONS)
    assert np.array(report["confusion"]).sum() == len(sample_data.split("PrivateTest"))
    assert card["checks"]["float32_vs_keras_max_abs_diff"] < 1e-4
    train = card["training"]
    assert train["config"]["model"] == "tiny_cnn" and train["config"]["per_class"] == 30
    assert train["timing"]["seconds"] > 0 and "command" in train
    assert Path(train["run_dir"]) == tiny_run_dir


def test_export_flip_tta_bakes_the_mirror_into_every_form(tiny_run_dir, sample_csv, sample_data, tmp_path):
    from shared.model import FacialExpressionModel
    from training.export import export_model
    card = export_model(tiny_run_dir, tmp_path / "tta", data=sample_csv, flip_tta=True, max_int8_drop=None)
    assert card["flip_tta"] and set(card["without_flip_tta"]) == {"PublicTest", "PrivateTest"}
    faces = sample_data.split("PublicTest").faces[:16]
    for kw in ({"backend": "keras"}, {"precision": "float32"}):
        m = FacialExpressionModel(tmp_path / "tta", **kw)
        np.testing.assert_allclose(m.predict_proba(faces), m.predict_proba(faces[:, :, ::-1]), atol=1e-5)


def test_cli_export_fails_on_the_int8_gate(tiny_run_dir, sample_csv, tmp_path):
    # a negative allowance demands int8 beat float32 by 100 points: the gate must refuse
    r = ferlive("export", "--run-dir", str(tiny_run_dir), "--out", str(tmp_path / "m"), "--data", str(sample_csv),
                "--max-int8-drop", "-100")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "export failed: int8 PublicTest accuracy" in r.stderr
    card = json.loads((tmp_path / "m" / CARD).read_text())
    assert card["checks"]["int8_gate"]["passed"] is False


def test_cli_evaluate_writes_report_and_png(tiny_model_dir, sample_csv, tmp_path, capsys):
    from training.cli import main  # in-process: the subprocess path is covered by export and predict
    assert main(["evaluate", "--model-dir", str(tiny_model_dir), "--form", "int8", "--split", "PrivateTest",
                 "--data", str(sample_csv), "--tta", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "confusion (rows: true, columns: predicted)" in out and "with flip TTA" in out
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["n"] == 140 and list(report["per_class"]) == list(EMOTIONS)
    assert cv2.imread(str(tmp_path / "ev" / "confusion.png")) is not None


def test_cli_evaluate_run_dir_matches_card(tiny_run_dir, tiny_model_dir, capsys):
    from training.cli import main
    assert main(["evaluate", "--run-dir", str(tiny_run_dir), "--split", "PublicTest"]) == 0
    card = json.loads((tiny_model_dir / CARD).read_text())
    assert f"accuracy {card['metrics']['PublicTest']['keras']['accuracy']:.4f}" in capsys.readouterr().out


def test_cli_predict(tiny_model_dir, sample_data, tmp_path):
    face, blank = tmp_path / "face.png", tmp_path / "blank.png"
    cv2.imwrite(str(face), sample_data.faces[0])
    cv2.imwrite(str(blank), np.full((200, 300, 3), 128, np.uint8))
    r = ferlive("predict", str(face), str(blank), "--model-dir", str(tiny_model_dir), "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    by_image = {d["image"]: d for d in lines}
    assert by_image[str(blank)]["faces"] == []
    (hit,) = by_image[str(face)]["faces"]
    assert hit["box"] == [0, 0, 48, 48] and hit["emotion"] in EMOTIONS and hit["landmarks"] is None
    assert list(hit["scores"]) == list(EMOTIONS) and sum(hit["scores"].values()) == pytest.approx(1, abs=1e-3)


def test_export_ensemble_averages_the_members_in_every_form(tiny_run_dir, sample_csv, sample_data, tmp_path):
    """Two runs exported together: every form is the mean of the members' outputs (each with flip TTA)."""
    from shared.model import FacialExpressionModel
    from training.evaluate import keras_predict, with_flip_tta
    from training.export import export_model, load_run
    from training.train import TrainConfig, train

    other = tmp_path / "other"
    train(TrainConfig(model="tiny_cnn", data=str(sample_csv), run_dir=str(other), epochs=2, batch_size=32,
                      lr=1e-2, schedule="constant", warmup_epochs=0, augment=None, per_class=30, seed=7), verbose=0)
    card = export_model([tiny_run_dir, other], tmp_path / "ens", data=sample_csv, flip_tta=True, max_int8_drop=None)
    assert card["ensemble_members"] == 2 and card["architecture"] == "tiny_cnn"
    assert [r["run_dir"] for r in card["training"]["ensemble"]] == [str(tiny_run_dir), str(other)]
    assert len(card["members_alone"]["PublicTest"]) == 2
    faces = sample_data.split("PublicTest").faces[:32]
    expected = np.mean([with_flip_tta(keras_predict(load_run(r)[0]))(faces) for r in (tiny_run_dir, other)], axis=0)
    for kw in ({"backend": "keras"}, {"precision": "float32"}):
        got = FacialExpressionModel(tmp_path / "ens", **kw).predict_proba(faces)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    int8 = FacialExpressionModel(tmp_path / "ens").predict_proba(faces)
    assert np.abs(int8 - expected).max() < 0.1


def test_export_makes_tflite_forms_of_a_keras_only_teacher(tiny_run_dir, tiny_model_dir, sample_csv, sample_data,
                                                           tmp_path):
    """A Keras-only directory (made where TensorFlow is absent, e.g. a joined teacher from a GPU) exported here:
    the TFLite forms compute what its Keras graph computes, its flip averaging is kept, not doubled."""
    import shutil

    from shared.model import FacialExpressionModel
    from training.export import export_keras_only, export_model

    export_keras_only([tiny_run_dir], tmp_path / "k", data=sample_csv, flip_tta=True)
    card = export_model(tmp_path / "k", tmp_path / "t", data=sample_csv, max_int8_drop=None)
    assert card["flip_tta"] and card["training"]["model_dir"] == str(tmp_path / "k")
    assert (tmp_path / "t" / "model_int8.tflite").is_file()
    faces = sample_data.split("PublicTest").faces[:32]
    keras_only = FacialExpressionModel(tmp_path / "k", backend="keras").predict_proba(faces)
    np.testing.assert_allclose(FacialExpressionModel(tmp_path / "t", precision="float32").predict_proba(faces),
                               keras_only, atol=1e-5)
    assert card["parameters"] == json.loads((tmp_path / "k" / "card.json").read_text())["parameters"]
    # joined with an exported single network (no flip inside) whose model.json names its output in a list, as
    # models/vgg_medium_distilled's does: read back, it returns a list of one tensor
    listed = tmp_path / "listed"
    shutil.copytree(tiny_model_dir, listed)
    graph = json.loads((listed / "model.json").read_text())
    graph["config"]["output_layers"] = [graph["config"]["output_layers"]]
    (listed / "model.json").write_text(json.dumps(graph))
    joined = export_keras_only([tmp_path / "k", listed], tmp_path / "j", data=sample_csv, flip_tta=True)
    assert joined["flip_tta"] and joined["ensemble_members"] == 2
    single = FacialExpressionModel(tiny_model_dir, backend="keras").predict_proba
    expected = (keras_only + (single(faces) + single(np.ascontiguousarray(faces[:, :, ::-1]))) / 2) / 2
    np.testing.assert_allclose(FacialExpressionModel(tmp_path / "j", backend="keras").predict_proba(faces), expected,
                               atol=1e-5)


def test_cli_export_ensemble_refuses_one_weights_path_for_several_runs(tiny_run_dir, tmp_path):
    r = ferlive("export", "--run-dir", str(tiny_run_dir), str(tiny_run_dir), "--weights", "x.weights.h5",
                "--out", str(tmp_path / "m"))
    assert r.returncode == 2 and "--weights PATH takes one --run-dir" in r.stderr


def test_export_without_the_float32_file_keeps_its_metrics(tiny_run_dir, sample_csv, sample_data, tmp_path):
    """--no-float32-file: the float32 TFLite is measured, then deleted; the rest of the directory works
    and asking for the missing form names the missing file."""
    from shared.model import FacialExpressionModel
    from training.export import export_model

    out = tmp_path / "slim"
    card = export_model(tiny_run_dir, out, data=sample_csv, max_int8_drop=None, keep_float32_file=False)
    assert not (out / "model_float32.tflite").exists() and "float32" not in card["files"]
    assert json.loads((out / "card.json").read_text())["metrics"]["PublicTest"]["float32"]["accuracy"] > 0
    for name in card["files"].values():
        assert (out / name).is_file(), name
    faces = sample_data.split("PublicTest").faces[:8]
    assert FacialExpressionModel(out).predict_proba(faces).shape == (8, 7)
    with pytest.raises(FileNotFoundError, match="model_float32.tflite is missing"):
        FacialExpressionModel(out, precision="float32").predict_proba(faces)
