"""Distillation and the FER+ votes: the votes join the zip's rows and only Training rows become targets; the
targets mix as documented; a student learns from a real teacher's soft targets on real faces, exports with
the FER+ second metric on its card, and a killed distillation run resumes on the same cached targets."""
from __future__ import annotations

import json
import os
from dataclasses import replace
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.labels import EMOTION_TO_CODE, NUM_CLASSES
from training.distill import TEACHER_CACHE, mix_targets, soften
from training.ferplus import EXCLUDED, VOTE_COLUMNS, FerPlusVotes, load_ferplus, read_votes_csv
from helpers import kill_after_epochs
from training.train import HISTORY, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fer_zip_data(images_zip):
    from training.data import load_fer2013
    return load_fer2013(images_zip)


@pytest.fixture(scope="module")
def votes(images_zip):
    return load_ferplus(images_zip)


@pytest.fixture(scope="module")
def zip_subset_for_route(fer_zip_data, images_zip, tmp_path_factory):
    """A packed copy (`ferlive pack-data`'s format) of 40 Training and 10 PublicTest faces per class."""
    from training.data import write_packed, zip_image_paths

    votes = load_ferplus(images_zip)
    keep = np.concatenate([np.flatnonzero((fer_zip_data.splits == split) & (fer_zip_data.labels == c))[:n]
                           for split, n in (("Training", 40), ("PublicTest", 10)) for c in range(NUM_CLASSES)])
    keep.sort()
    paths = np.asarray(zip_image_paths(images_zip))[keep].tolist()
    out = tmp_path_factory.mktemp("packed") / "route.npz.xz"
    return write_packed(fer_zip_data.subset(keep), paths, out, votes.counts[keep], votes.matched[keep])


# --- FER+ votes ------------------------------------------------------------------------------------------

def test_votes_join_every_matched_row_of_the_zip(fer_zip_data, votes):
    assert len(votes) == len(fer_zip_data) == 35887
    matched = {s: int(votes.matched[fer_zip_data.splits == s].sum()) for s in ("Training", "PublicTest", "PrivateTest")}
    assert matched == {"Training": 28486, "PublicTest": 3510, "PrivateTest": 3573}  # the votes README's counts
    assert (votes.counts[~votes.matched] == 0).all()
    assert (votes.counts[votes.matched].sum(axis=1) == 10).mean() > 0.99  # ten taggers per image


def test_vote_distributions_are_normalised_over_the_seven_expressions(votes):
    dist, usable = votes.distributions()
    assert dist.shape == (len(votes), NUM_CLASSES)
    assert np.allclose(dist[usable].sum(axis=1), 1.0)
    assert (dist[~usable] == 0).all()
    one = FerPlusVotes(np.array([[5, 0, 0, 0, 3, 0, 0, 1, 1, 0]]), np.array([True]))  # neutral 5, anger 3
    d, u = one.distributions()
    assert u[0] and d[0, EMOTION_TO_CODE["neutral"]] == pytest.approx(5 / 8)
    assert d[0, EMOTION_TO_CODE["angry"]] == pytest.approx(3 / 8)


def test_the_join_is_right_where_the_labels_are_clean(fer_zip_data, votes):
    """FER+ agrees with FER2013's happy labels for ~92% of images and fear for only ~13% (votes README):
    a misaligned join would agree ~1/7 of the time for every class."""
    maj = votes.majority(fer_zip_data, "Training")
    labels = fer_zip_data.labels[fer_zip_data.splits == "Training"]
    agree = {c: float((maj[labels == EMOTION_TO_CODE[c]] == EMOTION_TO_CODE[c]).mean()) for c in ("happy", "fear")}
    assert agree["happy"] > 0.85 and agree["fear"] < 0.3, agree


def test_majority_leaves_out_non_expressions_ties_and_unmatched():
    from training.data import FerData
    counts = np.array([[0, 7, 0, 0, 0, 0, 0, 0, 3, 0],    # happiness
                       [0, 0, 0, 0, 0, 0, 0, 6, 4, 0],    # contempt: left out
                       [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],   # not a face: left out
                       [5, 5, 0, 0, 0, 0, 0, 0, 0, 0],    # tie: left out
                       [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])   # no votes
    data = FerData(np.zeros((5, 48, 48), np.uint8), np.zeros(5, np.int64), np.array(["PrivateTest"] * 5))
    got = FerPlusVotes(counts, np.array([True, True, True, True, False])).majority(data, "PrivateTest")
    assert got.tolist() == [EMOTION_TO_CODE["happy"], EXCLUDED, EXCLUDED, EXCLUDED, EXCLUDED]


def test_training_targets_come_only_from_training_rows(fer_zip_data, votes):
    dist, usable = votes.training_targets(fer_zip_data)
    n_train = int((fer_zip_data.splits == "Training").sum())
    assert dist.shape == (n_train, NUM_CLASSES) and usable.shape == (n_train,)
    with pytest.raises(ValueError, match="same zip"):
        votes.training_targets(fer_zip_data.split("PrivateTest"))


def test_votes_csv_errors_name_the_row(tmp_path):
    bad = tmp_path / "votes.csv"
    bad.write_text("path,ferplus_image," + ",".join(VOTE_COLUMNS) + "\ntrain/a/x.png,fer1.png,1,2,3\n")
    with pytest.raises(ValueError, match="row 2"):
        read_votes_csv(bad)


# --- targets -----------------------------------------------------------------------------------------------

def test_mix_targets_weights_and_fallback_to_the_label():
    labels = np.array([0, 3])
    teacher = np.full((2, NUM_CLASSES), 1 / NUM_CLASSES, np.float32)
    ferplus = np.zeros((2, NUM_CLASSES), np.float32)
    ferplus[:, 6] = 1.0
    t = mix_targets(labels, teacher, 0.4, ferplus, np.array([True, False]), 0.2)
    assert np.allclose(t.sum(axis=1), 1.0)
    assert t[0, 0] == pytest.approx(0.4 + 0.4 / 7) and t[0, 6] == pytest.approx(0.2 + 0.4 / 7)
    assert t[1, 3] == pytest.approx(0.6 + 0.4 / 7) and t[1, 6] == pytest.approx(0.4 / 7)  # no votes: the label
    assert np.array_equal(mix_targets(labels), np.eye(NUM_CLASSES, dtype=np.float32)[labels])
    with pytest.raises(ValueError, match="sum to at most 1"):
        mix_targets(labels, teacher, 0.8, ferplus, np.array([True, True]), 0.3)


def test_soften_flattens_and_keeps_the_order():
    p = np.array([[0.7, 0.2, 0.1, 0, 0, 0, 0]], np.float32)
    s = soften(p, 2.0)
    assert np.isclose(s.sum(), 1) and s[0, 0] < 0.7 and np.argmax(s) == 0 and s[0, 1] > 0.2
    assert np.allclose(soften(p, 1.0)[0, :3], p[0, :3], atol=1e-6)


# --- end to end on real faces with the real bundled teacher ------------------------------------------------

@pytest.mark.slow
def test_student_learns_the_teachers_soft_targets_and_exports(images_zip, tmp_path):
    from shared.model import CARD, DEFAULT_MODEL_DIR
    from training.export import export_model
    from training.train import train

    run = tmp_path / "student"
    cfg = TrainConfig(model="tiny_cnn", data=str(images_zip), run_dir=str(run), epochs=6, batch_size=32,
                      lr=1e-2, schedule="constant", warmup_epochs=0, label_smoothing=0.0, augment=None,
                      per_class=40, teacher=str(DEFAULT_MODEL_DIR), teacher_weight=1.0, temperature=1.0)
    hist = train(cfg, verbose=0).history
    # With teacher weight 1 the loss is the cross-entropy to the teacher's distributions: it falls.
    assert hist["loss"][-1] < hist["loss"][0] - 0.05, hist["loss"]
    stats = json.loads((run / "targets.json").read_text())
    assert stats["n"] == 7 * 40 and 0.5 < stats["teacher_agrees_with_label"] <= 1.0
    with np.load(run / TEACHER_CACHE) as z:
        probs = z["probs"].astype(np.float32)
    assert probs.shape == (7 * 40, NUM_CLASSES) and np.allclose(probs.sum(axis=1), 1, atol=0.02)

    card = export_model(run, tmp_path / "model", max_int8_drop=None)
    assert card["training"]["config"]["teacher"] == str(DEFAULT_MODEL_DIR)
    assert card["training"]["config"]["teacher_weight"] == 1.0
    fp = card["metrics"]["ferplus_majority"]["PrivateTest"]["int8"]
    assert fp["n"] + fp["excluded"] == 3589 and 0.0 <= fp["accuracy"] <= 1.0
    assert json.loads((tmp_path / "model" / CARD).read_text())["metrics"]["ferplus_majority"] == \
        card["metrics"]["ferplus_majority"]


@pytest.mark.slow
def test_killed_distillation_resumes_on_the_same_targets(images_zip, tmp_path):
    from shared.model import DEFAULT_MODEL_DIR

    run = tmp_path / "run"
    epochs = 6
    cmd = [sys.executable, "-m", "training", "distill", "--model", "tiny_cnn", "--data", str(images_zip),
           "--teacher", str(DEFAULT_MODEL_DIR), "--per-class", "20", "--run-dir", str(run), "--epochs",
           str(epochs), "--batch-size", "16", "--no-augment"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    kill_after_epochs(cmd, ROOT, env, run, 2, tmp_path / "first.log", 300)
    cache_mtime = (run / TEACHER_CACHE).stat().st_mtime_ns
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert (run / TEACHER_CACHE).stat().st_mtime_ns == cache_mtime  # the same targets, not recomputed
    assert "Training faces ..." in (tmp_path / "first.log").read_text()  # computed once, by the first session
    assert "Training faces ..." not in second.stdout + second.stderr
    rows = (run / HISTORY).read_text().splitlines()[1:]
    assert int(rows[-1].split(",")[0]) == epochs - 1
    assert json.loads((run / "timing.json").read_text())["sessions"] == 2


def test_distill_cli_needs_a_teacher_and_refuses_unknown_models(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-m", "training", "distill", "--run-dir", str(tmp_path / "r")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--teacher" in out.stderr
    out = subprocess.run([sys.executable, "-m", "training", "train", "--model", "nope", "--run-dir",
                          str(tmp_path / "r2")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "unknown model 'nope'" in out.stderr and "vgg_small" in out.stderr
    assert not (tmp_path / "r2").exists()  # a typo leaves no empty run folder


def test_training_targets_refuse_test_rows(fer_zip_data, votes):
    test_row = int(np.flatnonzero(fer_zip_data.splits == "PrivateTest")[0])
    with pytest.raises(ValueError, match="never training targets"):
        votes.training_targets(fer_zip_data, np.array([0, test_row]))


# --- consistent teaching: the teacher labels the very views the student trains on ----------------------

def test_augmented_views_are_seeded_distinct_and_never_mirrored(fer_zip_data):
    from training.augment import AugmentConfig
    from training.distill import augmented_views

    faces = fer_zip_data.faces[:64]
    views = augmented_views(faces, AugmentConfig(erasing=0.25), 3, seed=5)
    assert views.shape == (3, 64, 48, 48) and views.dtype == np.uint8
    assert (views == augmented_views(faces, AugmentConfig(erasing=0.25), 3, seed=5)).all()  # reproducible
    assert not (views == augmented_views(faces, AugmentConfig(erasing=0.25), 3, seed=6)).all()
    diff = np.abs(views.astype(int) - faces.astype(int)).mean(axis=(2, 3))
    assert (diff > 1).mean() > 0.9  # nearly every view is changed ...
    assert not (views[0] == views[1]).all()
    # ... only a little: a view stays closer to its own face than to a mirror of it (flip stays online)
    mirror = np.abs(views.astype(int) - faces[:, :, ::-1].astype(int)).mean(axis=(2, 3))
    assert (diff < mirror).mean() > 0.9
    plain = augmented_views(faces, AugmentConfig(flip=True, rotation=0, zoom=0, shift=0, contrast=0,
                                                 brightness=0, erasing=0), 1, seed=5)
    assert (plain[0] == faces).all()  # nothing but the flip asked for: the faces come back as they are


def test_views_cache_makes_the_views_once(fer_zip_data, tmp_path, monkeypatch):
    """FERLIVE_VIEWS_CACHE: the second run side by side loads the first one's views instead of making them; another
    seed or other faces make (and keep) their own; a truncated file is made again, not trusted."""
    import training.augment
    from training.augment import AugmentConfig
    from training.distill import augmented_views

    faces = fer_zip_data.faces[:32]
    monkeypatch.setenv("FERLIVE_VIEWS_CACHE", str(tmp_path / "views"))
    made = augmented_views(faces, AugmentConfig(), 2, seed=3)
    (file,) = (tmp_path / "views").glob("views-*.npy")
    with monkeypatch.context() as m:
        m.setattr(training.augment, "build_augmentation", lambda *a, **k: pytest.fail("views were made again"))
        assert (augmented_views(faces, AugmentConfig(), 2, seed=3) == made).all()
    assert not (augmented_views(faces, AugmentConfig(), 2, seed=4) == made).all()
    augmented_views(faces[:16], AugmentConfig(), 2, seed=3)
    assert len(list((tmp_path / "views").glob("views-*.npy"))) == 3
    np.save(file, made[:1])  # wrong shape: made again and rewritten
    assert (augmented_views(faces, AugmentConfig(), 2, seed=3) == made).all()
    assert np.load(file).shape == made.shape
    file.write_bytes(file.read_bytes()[:100])  # cut short: made again, not an error
    assert (augmented_views(faces, AugmentConfig(), 2, seed=3) == made).all()


def test_view_batches_cover_every_face_once_with_its_own_views_targets():
    from training.distill import ViewBatches

    k, n = 3, 50
    views = np.arange(k * n, dtype=np.uint8).reshape(k, n, 1, 1).repeat(48, 2).repeat(48, 3)
    targets = np.zeros((k, n, NUM_CLASSES), np.float32)
    targets[np.arange(k)[:, None], np.arange(n)[None, :], np.arange(k)[:, None]] = 1.0  # view v -> class v
    b = ViewBatches(views, targets, batch_size=16, seed=3)
    seen = []
    for i in range(len(b)):
        x, y = b.batch(i)
        assert x.shape[1:] == (48, 48, 1) and x.dtype == np.float32 and y.shape == (len(x), NUM_CLASSES)
        v, row = np.divmod(np.rint(x[:, 0, 0, 0] * 255).astype(int), n)  # what each image is
        assert (y.argmax(1) == v).all()  # the targets of that very view
        seen.extend(row.tolist())
    assert len(b) == 4 and sorted(seen) == list(range(n))
    first = b.view.copy()
    b.set_epoch(1)
    assert not (b.view == first).all() and len(set(b.view.tolist())) == k  # new views each epoch
    b.set_epoch(0)
    assert (b.view == first).all()  # the same epoch draws the same views (resume)
    with pytest.raises(ValueError, match="disagree"):
        ViewBatches(views, targets[:, :10], 16, 0)


def test_mixed_views_blend_each_face_with_a_seeded_partner(fer_zip_data):
    from training.distill import mixed_views

    views = np.stack([fer_zip_data.faces[:40], fer_zip_data.faces[40:80]])
    mixed, partner, lam = mixed_views(views, 0.5, seed=2)
    assert mixed.shape == views.shape and mixed.dtype == np.uint8
    assert partner.shape == lam.shape == (2, 40)
    for v in range(2):
        assert sorted(partner[v].tolist()) == list(range(40))  # every face is some face's partner once
        want = lam[v][:, None, None] * views[v] + (1 - lam[v][:, None, None]) * views[v, partner[v]]
        assert np.abs(mixed[v].astype(np.float32) - want).max() <= 0.5 + 1e-3  # the blend, rounded
    assert (lam >= 0.5).all() and (lam <= 1).all() and lam.std() > 0.05  # face i stays the main one
    assert not (partner[0] == partner[1]).all()  # each view pairs the faces anew
    again = mixed_views(views, 0.5, seed=2)
    assert (again[0] == mixed).all() and (again[1] == partner).all()  # seeded: a resumed run gets the same
    assert not (mixed_views(views, 0.5, seed=3)[0] == mixed).all()
    with pytest.raises(ValueError, match="teacher-mixup"):
        mixed_views(views, 0.0, seed=2)


def test_view_targets_mix_the_label_share_like_the_images():
    from training.distill import view_targets

    rng = np.random.default_rng(0)
    k, n = 3, 20
    labels = rng.integers(0, NUM_CLASSES, n)
    teacher = rng.dirichlet(np.ones(NUM_CLASSES), (k, n)).astype(np.float32)
    votes = rng.dirichlet(np.ones(NUM_CLASSES), n).astype(np.float32)
    usable = rng.random(n) > 0.3
    plain = view_targets(teacher, labels, 0.6, votes, usable, 0.2)
    for v in range(k):  # plain views: exactly mix_targets with that view's teacher distribution
        assert np.allclose(plain[v], mix_targets(labels, teacher[v], 0.6, votes, usable, 0.2), atol=1e-6)
    partner = np.stack([rng.permutation(n) for _ in range(k)])
    lam = rng.uniform(0.5, 1.0, (k, n)).astype(np.float32)
    mixed = view_targets(teacher, labels, 0.6, votes, usable, 0.2, partner, lam)
    assert np.allclose(mixed.sum(axis=2), 1, atol=1e-5)
    rest = mix_targets(labels, None, 0.0, votes, usable, 0.2 / 0.4)  # label + FER+ share of one face
    v, i = 1, 7
    want = 0.6 * teacher[v, i] + 0.4 * (lam[v, i] * rest[i] + (1 - lam[v, i]) * rest[partner[v, i]])
    assert np.allclose(mixed[v, i], want, atol=1e-6)
    assert np.allclose(view_targets(teacher, labels, 1.0, None, None, 0.0, partner, lam), teacher)  # all teacher
    with pytest.raises(ValueError, match="sum to at most 1"):
        view_targets(teacher, labels, 0.9, votes, usable, 0.2)


def test_consistent_teaching_trains_on_the_teachers_views_and_caches_them(images_zip, tmp_path):
    from shared.model import DEFAULT_MODEL_DIR
    from training.augment import AugmentConfig
    from training.distill import VIEWS_CACHE
    from training.train import train

    run = tmp_path / "views"
    cfg = TrainConfig(model="tiny_cnn", data=str(images_zip), run_dir=str(run), epochs=5, batch_size=32,
                      lr=1e-2, schedule="constant", warmup_epochs=0, label_smoothing=0.0,
                      augment=AugmentConfig(erasing=0.25), per_class=20, teacher=str(DEFAULT_MODEL_DIR),
                      teacher_weight=1.0, temperature=1.0, teacher_views=2)
    hist = train(cfg, verbose=0).history
    assert hist["loss"][-1] < hist["loss"][0] - 0.05, hist["loss"]
    stats = json.loads((run / "targets.json").read_text())
    assert stats["views"] == 2 and stats["n"] == 7 * 20 and 0.4 < stats["teacher_agrees_with_label"] <= 1.0
    with np.load(run / VIEWS_CACHE) as z:
        probs = z["probs"].astype(np.float32)
    assert probs.shape == (2, 7 * 20, NUM_CLASSES) and np.allclose(probs.sum(axis=2), 1, atol=0.02)
    assert np.abs(probs[0] - probs[1]).max() > 0.05  # the teacher's word differs between the views
    assert json.loads((run / "config.json").read_text())["teacher_views"] == 2
    # function matching: the same views blended with partners; the teacher labels the blends
    mix_run = tmp_path / "mix"
    train(replace(cfg, run_dir=str(mix_run), epochs=1, teacher_mixup=0.5), verbose=0)
    stats = json.loads((mix_run / "targets.json").read_text())
    assert stats["mixup_alpha"] == 0.5 and 0.5 < stats["mean_mixup_lambda"] < 1
    with np.load(mix_run / VIEWS_CACHE) as z:
        mixed_probs = z["probs"].astype(np.float32)
    assert mixed_probs.shape == probs.shape and np.abs(mixed_probs - probs).max() > 0.05
    with pytest.raises(ValueError, match="--teacher"):
        train(TrainConfig(model="tiny_cnn", data=str(images_zip), run_dir=str(tmp_path / "no_teacher"), epochs=1,
                          per_class=5, ferplus_weight=0.2, teacher_views=2), verbose=0)
    with pytest.raises(ValueError, match="needs --teacher-views"):
        train(TrainConfig(model="tiny_cnn", data=str(images_zip), run_dir=str(tmp_path / "no_views"), epochs=1,
                          per_class=5, teacher=str(DEFAULT_MODEL_DIR), teacher_weight=0.5, teacher_mixup=0.5),
              verbose=0)
    assert not (tmp_path / "no_views").exists()  # refused before the run folder is made


def test_teacher_and_ferplus_weights_may_sum_to_one_in_floating_point():
    """0.9 + 0.1 is 1.0000000000000002: still a whole target, with no share left for the label."""
    from training.distill import view_targets

    labels = np.array([0, 3, 6])
    teacher = np.full((3, NUM_CLASSES), 1 / NUM_CLASSES, np.float32)
    votes = np.eye(NUM_CLASSES, dtype=np.float32)[[1, 1, 1]]
    usable = np.array([True, True, False])
    t = mix_targets(labels, teacher, 0.9, votes, usable, 0.1)
    np.testing.assert_allclose(t.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(t[0], 0.9 / NUM_CLASSES + 0.1 * votes[0], atol=1e-6)
    np.testing.assert_allclose(t[2], 0.9 / NUM_CLASSES + 0.1 * np.eye(NUM_CLASSES)[6], atol=1e-6)  # no votes
    v = view_targets(teacher[None], labels, 0.9, votes, usable, 0.1)
    np.testing.assert_allclose(v[0], t, atol=1e-6)
    with pytest.raises(ValueError, match="sum to at most 1"):
        mix_targets(labels, teacher, 0.9, votes, usable, 0.2)


def test_a_keras_only_teacher_labels_views_without_tflite(tiny_run_dir, sample_data, sample_csv, tmp_path):
    """`export --keras-only` writes the Keras files and a card measured in Keras, no TFLite; such a directory
    is a teacher that runs in Keras (flip baked in once, not twice), and its cache key follows its weights."""
    import shutil

    import keras

    from shared.model import FacialExpressionModel
    from shared.preprocess import to_model_input
    from training.distill import _teacher_key, is_keras_teacher, teacher_probabilities
    from training.export import export_keras_only

    out = tmp_path / "teacher"
    card = export_keras_only([tiny_run_dir], out, flip_tta=True, name="kt")
    assert set(card["files"]) == {"card", "keras_json", "keras_weights"} and card["flip_tta"]
    assert not list(out.glob("*.tflite")) and is_keras_teacher(out)
    assert set(card["metrics"]) == {"PublicTest", "PrivateTest"}  # the sample CSV holds both
    public = sample_data.split("PublicTest")
    keras_form = FacialExpressionModel(out, backend="keras")
    acc = float(np.mean(keras_form.predict_proba(public.faces).argmax(1) == public.labels))
    assert card["metrics"]["PublicTest"]["keras"]["accuracy"] == pytest.approx(acc, abs=1e-9)

    faces = sample_data.split("Training").faces[:64]
    probs = teacher_probabilities(out, faces)
    np.testing.assert_allclose(probs, keras_form.predict_proba(faces), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    mirrored = teacher_probabilities(out, np.ascontiguousarray(faces[:, :, ::-1]))
    np.testing.assert_allclose(mirrored, probs, atol=1e-5)  # flip-averaged inside the graph: symmetric

    other = tmp_path / "other"
    shutil.copytree(out, other)
    model = keras.models.model_from_json((other / "model.json").read_text())
    model.load_weights(str(other / "model.weights.h5"))
    model.set_weights([w * 1.01 for w in model.get_weights()])
    model.save_weights(str(other / "model.weights.h5"))
    assert _teacher_key(out, faces) != _teacher_key(other, faces)  # new weights never reuse old targets
    from training.distill import _load_keras_teacher
    _load_keras_teacher.cache_clear()
    before = teacher_probabilities(other, faces)
    teacher_probabilities(other, faces[:8])
    assert _load_keras_teacher.cache_info().misses == 1  # loaded once: its compiled predict serves view after view
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save_weights(str(other / "model.weights.h5"))
    assert not np.allclose(teacher_probabilities(other, faces), before, atol=1e-4)  # rewritten weights: loaded again
    assert _load_keras_teacher.cache_info().misses == 2
    pair = export_keras_only([tiny_run_dir, tiny_run_dir], tmp_path / "pair")  # an ensemble of look-alikes
    assert pair["architecture"] == "tiny_cnn" and pair["ensemble_members"] == 2
    alone = pair["metrics"]["PublicTest"]["members_alone"]
    assert alone[0] == alone[1] == pytest.approx(pair["metrics"]["PublicTest"]["keras"]["accuracy"], abs=1e-9)

    # an exported model directory is a member too (e.g. the bundled ensemble beside new runs): its mirror
    # averaging is not done twice, each member weighs the same, and the card says the whole is flip-averaged
    from training.export import load_run
    mixed = export_keras_only([out, tiny_run_dir], tmp_path / "mixed", flip_tta=True, data=str(sample_csv))
    assert mixed["flip_tta"] and mixed["ensemble_members"] == 2
    assert mixed["training"]["ensemble"][0]["model_dir"] == str(out)
    run_model, _ = load_run(tiny_run_dir)
    x = to_model_input(faces)
    own = (run_model.predict(x, verbose=0) + run_model.predict(x[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(teacher_probabilities(tmp_path / "mixed", faces), (probs + own) / 2, atol=1e-5)
    again = export_keras_only([out], tmp_path / "again", flip_tta=True, data=str(sample_csv))
    assert again["flip_tta"] and again["parameters"] == card["parameters"]
    np.testing.assert_allclose(teacher_probabilities(tmp_path / "again", faces), probs, atol=1e-6)
    with pytest.raises(ValueError, match="--data is needed"):
        export_keras_only([out], tmp_path / "nodata")


@pytest.mark.slow
def test_gpu_route_runs_on_keras_jax_without_tensorflow(zip_subset_for_route, tmp_path):
    """The GPU recipe's pieces on a packed copy, in a process where TensorFlow, TFLite and ZeroMQ cannot be
    imported and Keras runs on JAX (here on the CPU): a teacher trained on views made up front, exported Keras-only,
    labels a student's views; the student trains with the FER+ votes from the packed copy."""
    pytest.importorskip("jax")
    data = zip_subset_for_route
    blocked = tmp_path / "blocked.py"
    blocked.write_text(
        "import importlib.abc, runpy, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'ai_edge_litert', 'zmq'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (blocked)', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "sys.argv = ['training'] + sys.argv[1:]\n"
        "runpy.run_module('training', run_name='__main__')\n")
    env = dict(os.environ, KERAS_BACKEND="jax", FERLIVE_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))

    def ferlive(*args):
        out = subprocess.run([sys.executable, str(blocked), *map(str, args)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    teacher_run, teacher, student = tmp_path / "t", tmp_path / "teacher", tmp_path / "s"
    ferlive("train", "--model", "tiny_cnn", "--data", data, "--run-dir", teacher_run, "--epochs", "3",
            "--lr", "0.01", "--augment-ahead", "2", "--time-budget", "120")
    ferlive("export", "--keras-only", "--flip-tta", "--run-dir", teacher_run, "--out", teacher, "--data", data)
    card = json.loads((teacher / "card.json").read_text())
    assert card["exported"]["backend"] == "jax" and "PrivateTest" not in card["metrics"]
    ferlive("distill", "--model", "tiny_cnn", "--teacher", teacher, "--teacher-weight", "0.9", "--ferplus-weight",
            "0.1", "--teacher-views", "2", "--epochs", "2", "--run-dir", student, "--data", data)
    stats = json.loads((student / "targets.json").read_text())
    assert stats["views"] == 2 and stats["ferplus_usable"] > 0.9 * stats["n"]
    rows = (student / HISTORY).read_text().strip().splitlines()
    assert len(rows) == 1 + 2 and (student / "best.weights.h5").is_file()


def test_pack_model_halves_the_weights_and_stays_a_keras_teacher(tiny_model_dir, sample_data, tmp_path, capsys):
    """`ferlive pack-model`: float16 weights, no TFLite forms; the copy is a Keras-only teacher whose
    probabilities match the original's to float16 precision; a directory lacking its weights is refused."""
    import shutil

    from shared.model import FacialExpressionModel
    from training.cli import main
    from training.distill import is_keras_teacher
    from training.pack import pack_model

    out = tmp_path / "half"
    assert main(["pack-model", "--model-dir", str(tiny_model_dir), "--out", str(out)]) == 0
    assert "as float16" in capsys.readouterr().out
    import h5py

    def payload(path):  # bytes of the stored arrays (the tiny model's file is mostly HDF5 bookkeeping)
        with h5py.File(path, "r") as f:
            sizes = []
            f.visititems(lambda _, o: sizes.append(o.nbytes) if isinstance(o, h5py.Dataset) else None)
            return sum(sizes)

    assert payload(out / "model.weights.h5") == payload(tiny_model_dir / "model.weights.h5") // 2
    assert is_keras_teacher(out) and not list(out.glob("*.tflite"))
    assert set(json.loads((out / "card.json").read_text())["files"]) == {"card", "keras_json", "keras_weights"}
    faces = sample_data.split("PublicTest").faces[:64]
    full = FacialExpressionModel(tiny_model_dir, backend="keras").predict_proba(faces)
    half = FacialExpressionModel(out, backend="keras").predict_proba(faces)
    np.testing.assert_allclose(half, full, atol=5e-3)
    assert (half.argmax(1) == full.argmax(1)).mean() >= 0.95
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.weights.h5").unlink()
    with pytest.raises(FileNotFoundError, match="model.weights.h5"):
        pack_model(broken, tmp_path / "x")
    with pytest.raises(ValueError, match="itself"):
        pack_model(out, out)
