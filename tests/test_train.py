"""Training: a short real run beats chance on held-out faces; a killed run resumes where it stopped;
the CLI answers --help without loading TensorFlow."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from helpers import history_epochs, kill_after_epochs
from training.train import HISTORY, LAST_MODEL, TrainConfig, lr_at, take_per_class

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, FERLIVE_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# --- pure pieces -------------------------------------------------------------------------------------

def test_take_per_class_caps_each_class_and_split(sample_data):
    sub = take_per_class(sample_data, 5, seed=0)
    assert sub.counts() == {s: [5] * 7 for s in ("PrivateTest", "PublicTest", "Training")}
    again = take_per_class(sample_data, 5, seed=0)
    np.testing.assert_array_equal(sub.faces, again.faces)
    assert take_per_class(sample_data, None, seed=0) is sample_data


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(epochs=10, warmup_epochs=2)
    lrs = [lr_at(e, cfg, 1e-3) for e in range(10)]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.2e-3
    const = TrainConfig(epochs=10, warmup_epochs=0, schedule="constant")
    assert {lr_at(e, const, 1e-3) for e in range(10)} == {1e-3}


def test_config_round_trips_through_json():
    cfg = TrainConfig(model="tiny_cnn", per_class=5)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert TrainConfig.from_dict({**cfg.to_dict(), "augment": None}).augment is None


# --- the CLI -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,expect", [
    ([], ["explore", "train", "pack-data", "pack-model", "soup"]),
    (["train"], ["--model", "--run-dir", "--epochs", "--per-class", "resume", "--time-budget", "--augment-ahead"]),
    (["pack-data"], ["--out", "--splits", "PrivateTest"]),
    (["pack-model"], ["--model-dir", "--out", "float16"]),
    (["export"], ["--keras-only"]),
    (["soup"], ["--run-dir", "--weights", "--uniform", "greedy"]),
    (["explore"], ["--data", "--out"]),
])
def test_cli_help(tmp_path, args, expect):
    out = subprocess.run([sys.executable, "-m", "training", *args, "--help"], cwd=ROOT, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for word in expect:
        assert word in out.stdout


def test_train_and_explore_import_no_tensorflow():
    code = ("import sys, training.train, training.explore, training.augment; "
            "heavy = {'keras', 'tensorflow', 'matplotlib'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# --- real training -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_short_run_beats_chance_on_held_out_faces(images_zip, tmp_path, monkeypatch):
    """tiny_cnn on ~6k real Training faces for a few epochs; balanced accuracy on PrivateTest faces
    (never seen in training nor used to pick a checkpoint) must clear chance (1/7) by a wide margin."""
    import keras

    from training.data import load_fer2013
    from training.train import train, xy

    monkeypatch.setenv("FERLIVE_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(model="tiny_cnn", data=str(images_zip), run_dir=str(tmp_path / "run"), epochs=8,
                      batch_size=64, lr=1e-2, schedule="cosine", warmup_epochs=0, label_smoothing=0.0,
                      augment=None, per_class=1000, seed=1)
    t0 = time.perf_counter()
    history = train(cfg, verbose=0)
    seconds = time.perf_counter() - t0
    assert len(history.history["loss"]) == 8
    assert history.history["loss"][-1] < history.history["loss"][0]

    held = take_per_class(load_fer2013(images_zip).split("PrivateTest"), 50, seed=0)
    x, _ = xy(held)
    model = keras.models.load_model(tmp_path / "run" / LAST_MODEL)
    pred = np.asarray(model(x, training=False)).argmax(axis=1)
    recall = [float((pred[held.labels == c] == c).mean()) for c in range(7)]
    balanced = float(np.mean(recall))
    assert balanced > 0.20, f"balanced accuracy {balanced:.3f} (chance 0.143), recall {recall}, {seconds:.0f}s"
    assert len(set(pred.tolist())) >= 3, "the model collapsed onto one or two classes"
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    assert (tmp_path / "run" / "best.weights.h5").exists()


def test_rerun_with_other_options_is_refused(sample_csv, tmp_path):
    from training.train import CONFIG, train

    run = tmp_path / "run"
    run.mkdir()
    (run / CONFIG).write_text(json.dumps(TrainConfig(model="tiny_cnn", data=str(sample_csv),
                                                     run_dir=str(run)).to_dict()))
    with pytest.raises(ValueError, match="another config"):
        train(TrainConfig(model="tiny_cnn", data=str(sample_csv), run_dir=str(run), lr=0.5))


@pytest.mark.slow
def test_resume_after_kill(sample_csv, tmp_path):
    """SIGKILL a CLI run after two epochs are done; the same command carries on from the next epoch."""
    run = tmp_path / "run"
    epochs = 8
    cmd = [sys.executable, "-m", "training", "train", "--model", "tiny_cnn", "--data", str(sample_csv),
           "--run-dir", str(run), "--epochs", str(epochs), "--batch-size", "16", "--seed", "3"]
    proc = kill_after_epochs(cmd, ROOT, _env(tmp_path), run, 2, tmp_path / "first.log", 240)
    assert proc.returncode == -signal.SIGKILL
    killed_timing = json.loads((run / "timing.json").read_text())  # the killed session's epochs count
    assert killed_timing["sessions"] == 1 and killed_timing["epochs_done"] >= 2 and killed_timing["seconds"] > 0
    before = history_epochs(run / HISTORY)
    assert before == list(range(len(before))) and 2 <= len(before) < epochs, before
    assert not (run / LAST_MODEL).exists()

    second = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    after = history_epochs(run / HISTORY)
    assert after[:len(before)] == before
    resumed = after[len(before):]
    # the next epoch, or (killed between its history row and its backup) the last one again: never earlier
    assert resumed and resumed[0] in (before[-1] + 1, before[-1]), (before, after)
    assert resumed == list(range(resumed[0], epochs)), (before, after)
    assert f"Epoch 1/{epochs}" not in second.stdout + second.stderr
    assert (run / LAST_MODEL).exists()
    timing = json.loads((run / "timing.json").read_text())
    assert timing["sessions"] == 2 and timing["epochs_done"] == epochs
    assert timing["seconds"] > killed_timing["seconds"]
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"] == "tiny_cnn" and saved["batch_size"] == 16


# --- starting from trained weights -------------------------------------------------------------------

def _weights_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_init_from_run_dir_and_exported_dir_copies_the_network(tiny_run_dir, tmp_path, sample_csv):
    """--init-from takes a run directory, a .weights.h5 or an exported model directory (a flip-TTA
    wrapper included) and copies every weighted layer; the augmentation block stays as built."""
    from training.augment import AugmentConfig, build_augmentation
    from training.export import export_model, load_run
    from training.models import create_model
    from training.train import load_initial_weights

    trained, _ = load_run(tiny_run_dir)
    exported = tmp_path / "exported"
    export_model(tiny_run_dir, exported, data=sample_csv, flip_tta=True, max_int8_drop=None)
    for source in (tiny_run_dir, tiny_run_dir / "best.weights.h5", exported):
        model = create_model("tiny_cnn", augment=build_augmentation(AugmentConfig(), seed=0))
        assert not _weights_equal(model.get_layer("probs"), trained.get_layer("probs"))
        copied = load_initial_weights(model, source)
        assert copied == sum(1 for layer in trained.layers if layer.weights)
        for layer in trained.layers:
            assert _weights_equal(model.get_layer(layer.name), layer), (source, layer.name)


def test_init_from_refuses_another_architecture_or_a_stray_path(tiny_run_dir, tmp_path):
    from training.models import create_model
    from training.train import load_initial_weights

    with pytest.raises(ValueError, match="tiny_cnn run"):
        load_initial_weights(create_model("mini_xception"), tiny_run_dir)
    with pytest.raises(FileNotFoundError, match="--init-from"):
        load_initial_weights(create_model("tiny_cnn"), tmp_path)


def test_init_source_and_its_training_time_reach_the_card(tmp_path):
    """A fine-tuned run records where its weights came from and how that was trained; its export adds
    the chain's time, even after the source directory is gone."""
    from training.export import _training_record
    from training.train import record_init_source

    donor = tmp_path / "exported"
    donor.mkdir()
    (donor / "card.json").write_text(json.dumps({"name": "xception_wide", "training": {
        "command": "ferlive train --epochs 25", "timing": {"seconds": 100.0, "sessions": 1}}}))
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    info = record_init_source(tuned, donor)
    assert info["training"]["command"] == "ferlive train --epochs 25" and info["card_name"] == "xception_wide"
    (tuned / "timing.json").write_text(json.dumps({"seconds": 10.0, "sessions": 1}))
    (donor / "card.json").unlink()
    record = _training_record(tuned, "best", {"command": "ferlive train --init-from exported", "model": "x"})
    assert record["init_from"]["source"] == str(donor)
    assert record["timing"]["seconds"] == 10.0 and record["timing"]["seconds_with_init_chain"] == 110.0

    again = tmp_path / "again"  # a run initialised from that run directory chains both
    again.mkdir()
    (tuned / "config.json").write_text(json.dumps({"command": "ferlive train --init-from exported"}))
    record_init_source(again, tuned)
    (again / "timing.json").write_text(json.dumps({"seconds": 1.0, "sessions": 1}))
    assert _training_record(again, "best", {})["timing"]["seconds_with_init_chain"] == 11.0


@pytest.mark.slow
def test_training_from_init_weights_starts_where_they_left_off(tiny_run_dir, sample_csv, tmp_path, monkeypatch):
    """A fine-tuning run's first epoch starts from the donor's accuracy, not from scratch."""
    from training.train import train

    monkeypatch.setenv("FERLIVE_CACHE", str(tmp_path / "cache"))
    common = dict(model="tiny_cnn", data=str(sample_csv), epochs=1, batch_size=32, lr=1e-9, schedule="constant",
                  warmup_epochs=0, label_smoothing=0.0, augment=None, per_class=30)
    fresh = train(TrainConfig(run_dir=str(tmp_path / "fresh"), **common), verbose=0)
    tuned = train(TrainConfig(run_dir=str(tmp_path / "tuned"), init_from=str(tiny_run_dir), **common), verbose=0)
    donor = np.genfromtxt(tiny_run_dir / HISTORY, delimiter=",", names=True)
    # with no learning, the first epoch's loss is the donor's (only BatchNorm's running statistics move)
    assert tuned.history["loss"][0] < fresh.history["loss"][0], (tuned.history, fresh.history)
    at_best = float(donor["loss"][int(np.nanargmax(donor["val_accuracy"]))])
    assert tuned.history["loss"][0] <= 1.1 * at_best, (tuned.history, donor)


@pytest.mark.slow
def test_ema_validates_and_keeps_the_averaged_weights(sample_csv, tmp_path, monkeypatch):
    """With --ema the logged PublicTest accuracy, the best checkpoint and the final model are the weights'
    moving average, not the last step's weights; the backup keeps the trained weights for a resume."""
    import keras

    from training.data import load_fer2013
    from training.models import create_model
    from training.train import BEST_WEIGHTS, train, xy

    monkeypatch.setenv("FERLIVE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    cfg = TrainConfig(model="tiny_cnn", data=str(sample_csv), run_dir=str(run), epochs=4, batch_size=16,
                      lr=5e-2, schedule="constant", warmup_epochs=0, label_smoothing=0.0, augment=None,
                      per_class=30, ema=0.9)
    history = train(cfg, verbose=0)
    val = history.history["val_accuracy"]
    best_epoch = int(np.argmax(val))

    data = take_per_class(load_fer2013(sample_csv), 30, seed=1)
    x_va, y_va = xy(data.split("PublicTest"))
    model = create_model("tiny_cnn")
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    model.load_weights(run / BEST_WEIGHTS)
    assert model.evaluate(x_va, y_va, verbose=0)[1] == pytest.approx(val[best_epoch], abs=1e-6)

    final = keras.models.load_model(run / LAST_MODEL)
    ema_vars = final.optimizer._model_variables_moving_average
    for w, avg in zip(final.trainable_variables, ema_vars):  # the average was kept as the final weights
        np.testing.assert_allclose(np.asarray(w), np.asarray(avg), atol=1e-6)
    assert final.evaluate(x_va, y_va, verbose=0)[1] == pytest.approx(val[-1], abs=1e-6)

    with pytest.raises(ValueError, match="ema"):
        train(TrainConfig(model="tiny_cnn", data=str(sample_csv), run_dir=str(tmp_path / "bad"), epochs=1,
                          per_class=30, ema=1.5), verbose=0)


def test_time_budget_shortens_the_schedule_to_what_fits(sample_csv, tmp_path, monkeypatch):
    """--time-budget: the run stops once the next epoch would not fit, with as many history rows as the
    schedule it fitted, and the cosine's learning rate falls epoch by epoch along the shortened schedule."""
    from training.train import train

    monkeypatch.setenv("FERLIVE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    cfg = TrainConfig(model="tiny_cnn", data=str(sample_csv), run_dir=str(run), epochs=500, batch_size=32,
                      lr=1e-2, warmup_epochs=0, augment=None, per_class=10, time_budget=4.0)
    lrs = train(cfg, verbose=0).history["learning_rate"]
    fitted = json.loads((run / "time_budget.json").read_text())
    assert fitted["planned_epochs"] == 500 and fitted["seconds"] == 4.0
    assert fitted["setup_seconds"] > 0  # loading and compiling count against the budget
    assert 1 <= len(lrs) == fitted["scheduled_epochs"] < 500
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])), lrs
    with pytest.raises(ValueError, match="--time-budget must be a positive"):
        train(TrainConfig(model="tiny_cnn", data=str(sample_csv), run_dir=str(tmp_path / "neg"), time_budget=-24),
              verbose=0)
    assert not (tmp_path / "neg").exists()
    # a rerun with another budget resumes the same run (the budget is this session's, not the run's)
    saved = json.loads((run / "config.json").read_text())
    assert saved["time_budget"] == 4.0


@pytest.mark.parametrize("warmup", [0, 3])
def test_time_budget_gives_epochs_back_when_the_pace_improves(tmp_path, monkeypatch, warmup):
    """Two slow epochs early (a busy machine) shorten the schedule; once the pace recovers, epochs come back up
    to the planned number, the learning rate never rises after the warm-up, and the run ends within its budget."""
    import training.train as tt

    clock = [1000.0]
    monkeypatch.setattr(tt.time, "time", lambda: clock[0])
    cfg = TrainConfig(model="tiny_cnn", run_dir=str(tmp_path / "run"), epochs=40, lr=1e-2,
                      warmup_epochs=warmup, schedule="cosine", time_budget=1000.0)
    (tmp_path / "run").mkdir()
    budget = next(c for c in tt._callbacks(cfg, tmp_path / "run", 1e-2, started=clock[0])
                  if type(c).__name__ == "TimeBudget")
    budget.set_model(types.SimpleNamespace(stop_training=False))
    budget.on_train_begin()
    lrs, lengths = [], []
    paces = [10.0, 100.0, 100.0] + [10.0] * 200  # compiling, two slow epochs, then the machine's real pace
    for epoch, seconds in enumerate(paces):
        lrs.append(tt.lr_at(epoch, budget.sched, 1e-2))
        clock[0] += seconds
        budget.on_epoch_end(epoch)
        lengths.append(budget.sched.epochs)
        if budget.model.stop_training:
            break
    assert lengths[2] < 15  # the slow epochs cut the schedule
    assert lengths[-1] == epoch + 1 > lengths[2]  # ...and the fast ones gave epochs back
    assert max(lengths) <= 40
    assert all(b <= a + 1e-12 for a, b in zip(lrs[warmup:], lrs[warmup + 1:])), lrs
    assert lrs[:warmup + 1] == sorted(lrs[:warmup + 1])  # the warm-up climbs as planned
    assert clock[0] - 1000.0 <= 1000.0


def test_augment_ahead_trains_on_views_made_up_front(sample_csv, tmp_path, monkeypatch):
    """--augment-ahead K: the run's augmentation makes K views of each Training face once; the model keeps only
    the mirror flip online; it learns; combinations that make no sense are refused before the run exists."""
    from training.augment import AugmentConfig
    from training.train import train

    monkeypatch.setenv("FERLIVE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    cfg = TrainConfig(model="tiny_cnn", data=str(sample_csv), run_dir=str(run), epochs=6, batch_size=32, lr=1e-2,
                      schedule="constant", warmup_epochs=0, label_smoothing=0.0, augment=AugmentConfig(erasing=0.25),
                      per_class=30, augment_ahead=2)
    history = train(cfg, verbose=0)
    loss = history.history["loss"]
    assert loss[-1] < loss[0] - 0.05, loss
    online = history.model.get_layer("augment")
    assert [type(layer).__name__ for layer in online.layers] == ["RandomFlip"]
    assert json.loads((run / "config.json").read_text())["augment_ahead"] == 2
    for bad, match in ((dict(augment=None), "--no-augment"),
                       (dict(teacher="x", teacher_weight=0.5, teacher_views=2), "--teacher-views")):
        with pytest.raises(ValueError, match=match):
            train(TrainConfig(**{**cfg.to_dict(), "augment": cfg.augment, "run_dir": str(tmp_path / "bad"),
                                 **bad}), verbose=0)
    assert not (tmp_path / "bad").exists()
