"""`ferlive soup`: fine-tunes of one network averaged weight by weight, chosen on PublicTest, exported."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fine_tunes(tiny_run_dir, sample_csv, tmp_path_factory) -> list[Path]:
    """Two short fine-tunes of the tiny run (same start, different learning rates and seeds)."""
    from training.train import TrainConfig, train

    runs = []
    for i, lr in enumerate((3e-3, 1e-2)):
        run = tmp_path_factory.mktemp(f"ft{i}")
        train(TrainConfig(model="tiny_cnn", data=str(sample_csv), run_dir=str(run), epochs=2, batch_size=32, lr=lr,
                          schedule="constant", warmup_epochs=0, label_smoothing=0.0, augment=None, per_class=30,
                          seed=3 + i, init_from=str(tiny_run_dir)), verbose=0)
        runs.append(run)
    return runs


def _layer_weights(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights and layer.name != "augment"}


def test_uniform_soup_is_the_mean_of_the_final_weights_in_every_form(fine_tunes, sample_csv, sample_data, tmp_path):
    from shared.model import FacialExpressionModel, load_keras_network
    from training.export import load_run
    from training.soup import make_soup

    card = make_soup(fine_tunes, tmp_path / "soup", data=sample_csv, weights="last", greedy=False,
                     max_int8_drop=1.0)
    assert card["name"] == "tiny_cnn_soup" and card["ensemble_members"] == 1 and not card["flip_tta"]
    soup = card["training"]["soup"]
    assert soup["method"] == "uniform" and soup["kept"] == [0, 1] and soup["judged_on"] == "PublicTest"
    assert [r["run_dir"] for r in card["training"]["ingredients"]] == [str(r) for r in fine_tunes]
    assert all(r["weights"] == "last.keras" for r in card["training"]["ingredients"])
    own = [json.loads((r / "timing.json").read_text())["seconds"] for r in fine_tunes]
    assert card["training"]["timing"]["seconds"] == pytest.approx(sum(own))
    assert card["training"]["timing"]["seconds_with_init_chain"] > sum(own)  # the tiny run they started from

    ingredients = [_layer_weights(load_run(r, "last")[0]) for r in fine_tunes]
    assert any(not np.allclose(a, b) for n in ingredients[0] for a, b in zip(ingredients[0][n], ingredients[1][n]))
    got = _layer_weights(load_keras_network(tmp_path / "soup"))
    assert set(got) == set(ingredients[0])
    for name, arrays in got.items():
        for i, w in enumerate(arrays):
            np.testing.assert_allclose(w, (ingredients[0][name][i] + ingredients[1][name][i]) / 2, rtol=1e-6,
                                       atol=1e-7)
    faces = sample_data.split("PublicTest").faces[:32]
    keras_p = FacialExpressionModel(tmp_path / "soup", backend="keras").predict_proba(faces)
    np.testing.assert_allclose(FacialExpressionModel(tmp_path / "soup", precision="float32").predict_proba(faces),
                               keras_p, atol=1e-5)
    assert {"PublicTest", "PrivateTest"} <= set(card["metrics"])


def test_greedy_soup_starts_from_the_best_ingredient_and_never_falls_below_it(fine_tunes, sample_csv, sample_data,
                                                                               tmp_path):
    from training.evaluate import keras_predict, predict_all
    from training.export import load_run
    from training.soup import cook
    from shared.preprocess import to_model_input

    public = sample_data.split("PublicTest")
    models = [load_run(r)[0] for r in fine_tunes] + [load_run(fine_tunes[0], "last")[0]]
    soup, record = cook(models, to_model_input(public.faces), public.labels, greedy=True)
    alone = record["ingredients_alone"]
    assert alone == [float(np.mean(predict_all(keras_predict(m), public.faces).argmax(1) == public.labels))
                     for m in models]
    assert int(np.argmax(alone)) in record["kept"]
    assert record["accuracy"] >= max(alone)
    assert len(record["greedy_steps"]) == len(models) - 1
    assert record["accuracy"] == float(np.mean(predict_all(keras_predict(soup), public.faces).argmax(1)
                                               == public.labels))


def test_soup_refuses_different_networks_and_a_single_ingredient(tiny_run_dir, tmp_path):
    from training.models import create_model
    from training.soup import check_ingredients

    with pytest.raises(ValueError, match="b.*mini_xception.*differ from a"):
        check_ingredients([create_model("tiny_cnn"), create_model("mini_xception")], ["a", "b"])
    r = subprocess.run([sys.executable, "-m", "training", "soup", "--run-dir", str(tiny_run_dir), "--out",
                        str(tmp_path / "s")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "at least two ingredients" in r.stderr
    r = subprocess.run([sys.executable, "-m", "training", "soup", "--run-dir", str(tiny_run_dir),
                        str(tmp_path / "missing"), "--out", str(tmp_path / "s")], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "missing" in r.stderr
    assert not (tmp_path / "s").exists()


def test_greedy_soup_judged_on_both_metrics_scores_the_mean_with_the_ferplus_majority(fine_tunes, images_zip,
                                                                                        sample_csv, tmp_path):
    from training.data import load_fer2013
    from training.evaluate import keras_predict, predict_all
    from training.export import load_run
    from training.ferplus import EXCLUDED, load_ferplus
    from training.soup import cook, make_soup
    from shared.preprocess import to_model_input

    fer = load_fer2013(images_zip)
    public = fer.split("PublicTest")
    majority = load_ferplus(images_zip).majority(fer, "PublicTest")[:800]
    faces, labels = public.faces[:800], public.labels[:800]
    keep = majority != EXCLUDED
    assert 0 < keep.sum() < len(keep)  # some faces have no FER+ majority: they count in the label part only

    def both(model) -> float:
        pred = predict_all(keras_predict(model), faces).argmax(1)
        return 0.5 * (float(np.mean(pred == labels)) + float(np.mean(pred[keep] == majority[keep])))

    models = [load_run(r)[0] for r in fine_tunes] + [load_run(fine_tunes[1], "last")[0]]
    soup, record = cook(models, to_model_input(faces), labels, greedy=True, majority=majority)
    assert record["judged_on"].startswith("PublicTest: mean") and "FER+ majority" in record["judged_on"]
    assert record["ingredients_alone"] == pytest.approx([both(m) for m in models], abs=1e-9)
    _, by_labels = cook(models, to_model_input(faces), labels, greedy=True)
    assert by_labels["ingredients_alone"] != record["ingredients_alone"]
    assert record["accuracy"] == pytest.approx(both(soup), abs=1e-9) and record["accuracy"] >= max(
        record["ingredients_alone"])

    with pytest.raises(ValueError, match="--judge both needs the FER\\+ votes"):  # the sample CSV has none
        make_soup(fine_tunes, tmp_path / "s", data=sample_csv, judge="both")
    assert not (tmp_path / "s").exists()
