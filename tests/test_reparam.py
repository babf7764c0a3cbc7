"""RepVGG blocks (training.reparam): trained with side branches, served as the plain network they fold into."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "vgg_small_mid96_distilled"


def _model_input(sample_data) -> np.ndarray:
    """64 real PublicTest faces as the networks take them: float32 (N,48,48,1) in [0,1]."""
    return sample_data.split("PublicTest").faces[:64, :, :, None].astype(np.float32) / 255.0


def _scramble_side_branches(model, seed: int = 0) -> None:
    """Give every side branch weights and BN statistics far from their start (a trained rep model's)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if "_rep" not in layer.name or not layer.weights:
            continue
        if layer.name.endswith("_bn"):  # gamma, beta, moving mean, moving variance (> 0)
            gamma, beta, mean, var = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.normal(0, 0.5, gamma), rng.normal(0, 0.3, beta), rng.normal(0, 0.3, mean),
                               rng.uniform(0.3, 3.0, var)])
        else:
            layer.set_weights([rng.normal(0, 0.2, w.shape) for w in layer.get_weights()])


def test_the_folded_network_is_the_plain_architecture_and_computes_the_rep_network(sample_data):
    from training.models import create_model
    from training.reparam import fuse

    rep = create_model("vgg_small_mid96_rep")
    _scramble_side_branches(rep)
    faces = _model_input(sample_data)
    plain = fuse(rep)
    assert plain.name == "vgg_small_mid96"
    assert plain.count_params() == create_model("vgg_small_mid96").count_params() < rep.count_params()
    want, got = rep.predict(faces, verbose=0), plain.predict(faces, verbose=0)
    assert np.abs(want - plain.predict(np.zeros_like(faces), verbose=0)).max() > 1e-3  # the faces matter
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert fuse(plain) is plain  # a plain network folds into itself
    bn = rep.get_layer("s2c1_bn")  # a 3x3 branch whose BN scale is zero: its bias passes through instead
    bn.set_weights([np.zeros_like(w) if i == 0 else w for i, w in enumerate(bn.get_weights())])
    np.testing.assert_allclose(fuse(rep).predict(faces, verbose=0), rep.predict(faces, verbose=0), atol=2e-5)


def test_a_rep_model_started_from_the_shipped_network_computes_it(sample_data, tiny_run_dir):
    """--init-from a plain model: the 3x3 branches take its weights, the side branches start silent."""
    from shared.model import load_keras_network
    from training.models import create_model
    from training.reparam import fuse
    from training.train import load_initial_weights

    rep = create_model("vgg_small_mid96_rep")
    side = [l for l in rep.layers if l.name.endswith(("_rep1_bn", "_repid_bn"))]
    assert len(side) == 16 and all(np.all(l.get_weights()[0] == 1) for l in side)  # from scratch: RepVGG's own start
    copied = load_initial_weights(rep, SHIPPED)
    assert all(np.all(l.get_weights()[0] == 0) for l in side)  # from a plain twin: the side branches silenced
    shipped = load_keras_network(SHIPPED)
    assert copied == sum(1 for layer in shipped.layers if layer.weights)
    faces = _model_input(sample_data)
    np.testing.assert_allclose(rep.predict(faces, verbose=0), shipped.predict(faces, verbose=0), atol=1e-6)
    folded = fuse(rep)  # and folds back to the very same weights: soups of fused runs and their start make sense
    for layer in shipped.layers:
        for got, want in zip(folded.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=layer.name)
    with pytest.raises(ValueError, match="tiny_cnn run"):  # a rep model still refuses another architecture
        load_initial_weights(create_model("vgg_small_mid96_rep"), tiny_run_dir)


def test_a_rep_run_trains_its_side_branches_and_exports_folded(sample_csv, sample_data, tmp_path):
    from shared.model import FacialExpressionModel
    from training.export import export_model, load_run
    from training.models import create_model
    from training.train import TrainConfig, load_initial_weights, train

    run = tmp_path / "rep"
    train(TrainConfig(model="vgg_small_mid96_rep", data=str(sample_csv), run_dir=str(run), epochs=1, batch_size=32,
                      lr=1e-3, schedule="constant", warmup_epochs=0, label_smoothing=0.0, augment=None, per_class=20,
                      init_from=str(SHIPPED)), verbose=0)
    rep, cfg = load_run(run, fuse=False)
    assert cfg["model"] == rep.name == "vgg_small_mid96_rep"
    gammas = [rep.get_layer(l.name).get_weights()[0] for l in rep.layers if l.name.endswith("_rep1_bn")]
    assert len(gammas) == 10 and all(np.abs(g).max() > 0 for g in gammas)  # the side branches learned
    plain, _ = load_run(run)
    assert plain.name == "vgg_small_mid96"
    faces = _model_input(sample_data)
    np.testing.assert_allclose(plain.predict(faces, verbose=0), rep.predict(faces, verbose=0), atol=2e-5)

    card = export_model(run, tmp_path / "model", data=sample_csv, max_int8_drop=None)
    assert card["architecture"] == "vgg_small_mid96" and card["parameters"] == plain.count_params()
    assert card["training"]["config"]["model"] == "vgg_small_mid96_rep"  # how it was trained stays on the card
    saved = json.loads((tmp_path / "model" / "card.json").read_text())
    assert saved["architecture"] == "vgg_small_mid96"
    served = FacialExpressionModel(tmp_path / "model", precision="float32").predict_proba(
        sample_data.split("PublicTest").faces[:64])
    np.testing.assert_allclose(served, rep.predict(faces, verbose=0), atol=1e-4)

    again = create_model("vgg_small_mid96")  # a plain fine-tune of the rep run starts from its folded weights
    load_initial_weights(again, run)
    np.testing.assert_allclose(again.predict(faces, verbose=0), plain.predict(faces, verbose=0), atol=1e-6)
