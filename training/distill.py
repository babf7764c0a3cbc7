"""Knowledge distillation: a student learns from a teacher's soft targets, the FER+ crowd votes and the labels.

    ferlive distill --model vgg_small --teacher shared/bundled_model --teacher-weight 0.4 \\
                    --ferplus-weight 0.2 --temperature 2 --epochs 80 --run-dir runs/distill

The student's target for a Training face is

    t = w_teacher * soften(teacher(face), T) + w_ferplus * ferplus_votes(face) + (1 - w_teacher - w_ferplus) * onehot(label)

(a face without usable FER+ votes gives that share to its label). The teacher is any exported model
directory, run in its int8 form with flip averaging when its card does not already bake it in; its
probabilities on Training are computed once and cached in the run directory (`teacher_targets.npz`), so a
resumed run trains on exactly the same targets.

Consistent teaching (`--teacher-views K`): the student above sees an augmented face but learns what the
teacher said of the plain one. With K > 0 the Training faces are augmented K times up front (the run's own
augmentation layers: rotation, zoom, shift, contrast, brightness, erasing), the teacher labels every view,
and each epoch the student trains on one randomly chosen view of each face with the targets made from that
very view; only the mirror flip stays online (the flip-averaged teacher is symmetric, so its target holds
for the mirrored view too). The teacher's probabilities on all views are cached (`teacher_views.npz`),
keyed by the views' bytes.

Function matching (`--teacher-mixup ALPHA`, with `--teacher-views`): every view is also blended with the same
view of a seeded random partner face (mixup, lam ~ Beta(ALPHA, ALPHA) folded to >= 0.5), so the teacher is asked
about images between faces and the student learns its function there too (Beyer et al. 2022, "Knowledge
distillation: a good teacher is patient and consistent"); the label and FER+ shares mix with the same lam.
Everything else — schedule, checkpoints chosen on
PublicTest, resume after a kill, timing — is `ferlive train`'s."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from shared.labels import NUM_CLASSES
from training.data import FerData

log = logging.getLogger(__name__)

TEACHER_CACHE = "teacher_targets.npz"
VIEWS_CACHE = "teacher_views.npz"
WEIGHT_EPS = 1e-9  # 0.9 + 0.1 is 1.0000000000000002 in floating point: still a whole target


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities at temperature T: p**(1/T), renormalised (the softmax of logits/T)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = np.clip(np.asarray(probs, np.float64), 1e-8, 1.0) ** (1.0 / temperature)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def mix_targets(labels: np.ndarray, teacher: np.ndarray | None = None, teacher_weight: float = 0.0,
                ferplus: np.ndarray | None = None, ferplus_usable: np.ndarray | None = None,
                ferplus_weight: float = 0.0) -> np.ndarray:
    """float32 (N,7) targets: the weighted mix of one-hot labels, teacher distributions and FER+ vote
    distributions (rows without usable votes give that weight to the label). Each row sums to 1."""
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    if not (0 <= teacher_weight and 0 <= ferplus_weight and teacher_weight + ferplus_weight <= 1 + WEIGHT_EPS):
        raise ValueError(f"weights must be >= 0 and sum to at most 1: teacher {teacher_weight}, "
                         f"ferplus {ferplus_weight}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= NUM_CLASSES:
        raise ValueError("labels must be FER2013 codes 0-6")
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    out = np.zeros((n, NUM_CLASSES), np.float32)
    w_label = np.full((n, 1), max(0.0, 1.0 - teacher_weight - ferplus_weight), np.float32)
    if teacher_weight > 0:
        if teacher is None or teacher.shape != (n, NUM_CLASSES):
            raise ValueError(f"teacher targets must be ({n},{NUM_CLASSES})")
        out += teacher_weight * teacher
    if ferplus_weight > 0:
        if ferplus is None or ferplus.shape != (n, NUM_CLASSES) or ferplus_usable is None:
            raise ValueError(f"FER+ targets must be ({n},{NUM_CLASSES}) with a usable mask")
        use = np.asarray(ferplus_usable, bool)[:, None]
        out += np.where(use, ferplus_weight * ferplus, 0.0).astype(np.float32)
        w_label += np.where(use, 0.0, ferplus_weight).astype(np.float32)
    out += w_label * onehot
    return out / out.sum(axis=1, keepdims=True)


def is_keras_teacher(model_dir: str | Path) -> bool:
    """A model directory with the Keras files but no int8 TFLite form (`ferlive export --keras-only`, written
    where TensorFlow is absent, e.g. on a lent GPU): the teacher runs in Keras, on whatever Keras runs on."""
    from shared.model import MODEL_JSON, TFLITE_FILES

    d = Path(model_dir)
    return not (d / TFLITE_FILES["int8"]).is_file() and (d / MODEL_JSON).is_file()


KERAS_TEACHER_BATCH = 1024


def _file_stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=2)
def _load_keras_teacher(model_dir: str, stamps: tuple):
    """A Keras-only teacher's network, loaded once per directory and file version (`stamps`): its compiled
    predict is then reused view after view instead of being traced again for every call."""
    from shared.model import load_keras_network

    return load_keras_network(model_dir)


def keras_teacher_probabilities(model_dir: str | Path, faces: np.ndarray, flip: bool | None = None) -> np.ndarray:
    """The (N,7) probabilities of a Keras-only teacher directory on uint8 faces, through Keras's compiled
    predict (fast on an accelerator), averaged with the mirrored face unless the card says it is baked in."""
    from shared.model import MODEL_JSON, WEIGHTS, read_card
    from shared.preprocess import to_model_input

    model_dir = Path(model_dir)
    card = read_card(model_dir)
    model = _load_keras_teacher(str(model_dir.resolve()),
                                (_file_stamp(model_dir / MODEL_JSON), _file_stamp(model_dir / WEIGHTS)))
    flip = not card.get("flip_tta", False) if flip is None else flip
    x = to_model_input(np.asarray(faces, np.uint8))
    probs = model.predict(x, batch_size=KERAS_TEACHER_BATCH, verbose=0)
    if flip:
        probs = 0.5 * (probs + model.predict(np.ascontiguousarray(x[:, :, ::-1]), batch_size=KERAS_TEACHER_BATCH,
                                             verbose=0))
    probs = np.asarray(probs, np.float32)
    return probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)


def teacher_probabilities(model_dir: str | Path, faces: np.ndarray, flip: bool | None = None,
                          threads: int | None = None) -> np.ndarray:
    """The teacher's (N,7) probabilities on uint8 faces: its int8 TFLite form (ai-edge-litert), averaged
    with the mirrored face unless its card says flip averaging is already inside the model. threads: the
    interpreter's threads (None: the cores this process may run on, at most 4). A Keras-only directory
    (`is_keras_teacher`) runs in Keras instead."""
    from shared.model import FacialExpressionModel
    from training.evaluate import predict_all, with_flip_tta

    if is_keras_teacher(model_dir):
        return keras_teacher_probabilities(model_dir, faces, flip)

    if threads is None:  # sched_getaffinity is Linux-only; elsewhere all the cores count
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = min(4, cores)
    model = FacialExpressionModel(model_dir, precision="int8", num_threads=threads)
    if flip is None:
        flip = not model.card.get("flip_tta", False)
    predict = with_flip_tta(model.predict_proba) if flip else model.predict_proba
    return predict_all(predict, faces)


def _teacher_key(model_dir: Path, faces: np.ndarray) -> str:
    h = hashlib.sha1()
    for name in ("card.json", "model_int8.tflite") + (("model.weights.h5",) if is_keras_teacher(model_dir) else ()):
        path = model_dir / name
        h.update(path.read_bytes() if path.is_file() else name.encode())
    h.update(np.ascontiguousarray(faces[:64]).tobytes())
    h.update(str(len(faces)).encode())
    return h.hexdigest()[:16]


def _cached_probs(cache: Path, key: str, shape: tuple[int, ...], compute) -> np.ndarray:
    """compute() -> probabilities of `shape`, stored as float16 in `cache` (an .npz) under `key`; a cache made
    for another key or shape is recomputed. Returns float32, the same values whether computed or loaded."""
    if cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key and z["probs"].shape == shape:
                return z["probs"].astype(np.float32)
        log.warning("%s was made by another teacher or for other faces; recomputing", cache)
    probs = np.asarray(compute(), np.float16)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez_compressed(tmp, probs=probs, key=np.array(key))
    tmp.replace(cache)
    return probs.astype(np.float32)


def cached_teacher_probabilities(model_dir: str | Path, faces: np.ndarray, run: Path) -> np.ndarray:
    """teacher_probabilities, cached in run/teacher_targets.npz keyed by the teacher's files and the faces."""
    model_dir = Path(model_dir)

    def compute():
        log.info("teacher %s on %d Training faces ...", model_dir, len(faces))
        return teacher_probabilities(model_dir, faces)

    return _cached_probs(run / TEACHER_CACHE, _teacher_key(model_dir, faces), (len(faces), NUM_CLASSES), compute)


VIEWS_CACHE_ENV = "FERLIVE_VIEWS_CACHE"


def augmented_views(faces: np.ndarray, augment, k: int, seed: int, batch: int = 2048) -> np.ndarray:
    """uint8 (k,N,48,48): k augmented copies of uint8 (N,48,48) faces, made by the training augmentation
    layers of `augment` (an AugmentConfig) without the mirror flip, seeded so the same call gives the same views.
    With FERLIVE_VIEWS_CACHE set to a folder, the views are kept there (k*N*2304 bytes) keyed by the faces, the
    augmentation, k, seed and Keras backend, so runs side by side make them once (the GPU recipe's students)."""
    import dataclasses

    import keras

    from training.augment import build_augmentation

    if k < 1:
        raise ValueError(f"--teacher-views must be >= 1, got {k}")
    faces = np.asarray(faces, np.uint8)
    cfg = dataclasses.replace(augment, flip=False)
    cache = None
    if os.environ.get(VIEWS_CACHE_ENV):
        h = hashlib.sha1(repr((cfg, k, seed, batch, keras.backend.backend(), faces.shape)).encode())
        h.update(np.ascontiguousarray(faces).tobytes())
        cache = Path(os.environ[VIEWS_CACHE_ENV]) / f"views-{h.hexdigest()[:16]}.npy"
        try:
            views = np.load(cache) if cache.is_file() else None
        except (OSError, ValueError, EOFError) as e:  # a damaged file: made again below
            log.warning("views cache %s is unreadable (%s); making the views again", cache, e)
            views = None
        if views is not None and views.shape == (k,) + faces.shape and views.dtype == np.uint8:
            log.info("views: %d of each face from %s", k, cache)
            return views
    out = np.empty((k,) + faces.shape, np.uint8)
    for v in range(k):
        block = build_augmentation(cfg, seed=seed * 1000 + 17 * v)
        for i in range(0, len(faces), batch):
            x = faces[i:i + batch, :, :, None].astype(np.float32) / 255.0
            y = keras.ops.convert_to_numpy(block(x, training=True)) if block.layers else x
            out[v, i:i + batch] = np.clip(np.rint(y[..., 0] * 255.0), 0, 255).astype(np.uint8)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, out)
        os.replace(tmp, cache)
    return out


def mixed_views(views: np.ndarray, alpha: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mixup of uint8 (k,N,48,48) views: view v of face i becomes lam*x[v,i] + (1-lam)*x[v,partner], with a
    seeded random partner per view and lam ~ Beta(alpha, alpha) folded to [0.5, 1] (face i stays the main one).
    Returns (mixed uint8 views, partner int (k,N), lam float32 (k,N)); the same call gives the same mixes."""
    if alpha <= 0:
        raise ValueError(f"--teacher-mixup must be > 0, got {alpha}")
    k, n = views.shape[:2]
    out = np.empty_like(views)
    partner = np.empty((k, n), np.int64)
    lam = np.empty((k, n), np.float32)
    for v in range(k):
        rng = np.random.default_rng([seed, 7, v])
        partner[v] = rng.permutation(n)
        b = rng.beta(alpha, alpha, n).astype(np.float32)
        lam[v] = np.maximum(b, 1.0 - b)
        w = lam[v][:, None, None]
        mix = w * views[v].astype(np.float32) + (1.0 - w) * views[v, partner[v]].astype(np.float32)
        out[v] = np.clip(np.rint(mix), 0, 255).astype(np.uint8)
    return out, partner, lam


def cached_teacher_view_probabilities(model_dir: str | Path, views: np.ndarray, run: Path,
                                      threads: int | None = None) -> np.ndarray:
    """float32 (k,N,7): the teacher on every view, cached in run/teacher_views.npz keyed by the teacher's
    files and a digest of all the views (so views made differently are never paired with stale targets)."""
    model_dir = Path(model_dir)
    h = hashlib.sha1(_teacher_key(model_dir, views[0]).encode())
    h.update(np.ascontiguousarray(views).tobytes())

    def compute():
        probs = np.empty(views.shape[:2] + (NUM_CLASSES,), np.float16)
        for v in range(len(views)):
            log.info("teacher %s on view %d/%d of %d Training faces ...", model_dir, v + 1, len(views),
                     views.shape[1])
            probs[v] = teacher_probabilities(model_dir, views[v], threads=threads)
        return probs

    return _cached_probs(run / VIEWS_CACHE, h.hexdigest()[:16], views.shape[:2] + (NUM_CLASSES,), compute)


class ViewBatches:
    """Keras training batches for consistent teaching: each epoch, one seeded random view of every face
    with the targets of that view, in a seeded random order. `set_epoch` (a callback calls it) picks the
    epoch's views and order, so a resumed run draws what the uninterrupted one would have."""

    def __init__(self, views: np.ndarray, targets: np.ndarray, batch_size: int, seed: int):
        if views.shape[:2] != targets.shape[:2]:
            raise ValueError(f"views {views.shape[:2]} and targets {targets.shape[:2]} disagree")
        self.views, self.targets, self.batch_size, self.seed = views, targets, batch_size, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        n = self.views.shape[1]
        self.order = rng.permutation(n)
        self.view = rng.integers(0, len(self.views), n)

    def __len__(self) -> int:
        return -(-self.views.shape[1] // self.batch_size)

    def batch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        v = self.view[rows]
        x = self.views[v, rows].astype(np.float32)[..., None] / 255.0
        return x, self.targets[v, rows]

    def keras_dataset(self):
        """A keras.utils.PyDataset over these batches (works on every Keras backend)."""
        import keras

        outer = self

        class _Batches(keras.utils.PyDataset):
            def __len__(self):
                return len(outer)

            def __getitem__(self, i):
                return outer.batch(i)

        return _Batches()

    def epoch_callback(self):
        import keras

        outer = self

        class _SetEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer.set_epoch(epoch)

        return _SetEpoch()


def _labels_and_votes(cfg, full: FerData, keep: np.ndarray):
    data = full.subset(keep)
    train_rows = data.splits == "Training"
    ferplus = usable = None
    if cfg.ferplus_weight > 0:
        from training.data import DEFAULT_DATA
        from training.ferplus import load_ferplus
        votes = load_ferplus(cfg.data if cfg.data is not None else DEFAULT_DATA)
        ferplus, usable = votes.training_targets(full, keep[train_rows])  # refuses any test row
        log.info("FER+ votes usable for %d of %d Training faces", usable.sum(), len(usable))
    return data.faces[train_rows], data.labels[train_rows], ferplus, usable


def view_targets(teacher: np.ndarray, labels: np.ndarray, teacher_weight: float, ferplus: np.ndarray | None,
                 ferplus_usable: np.ndarray | None, ferplus_weight: float, partner: np.ndarray | None = None,
                 lam: np.ndarray | None = None) -> np.ndarray:
    """float32 (k,N,7) targets for k views from the teacher's (k,N,7) distributions on them: like mix_targets per
    view, except that for a mixup view (face i blended with partner[v,i], weight lam[v,i]) the label and FER+
    share is lam * face i's + (1 - lam) * the partner's. partner/lam None: plain views."""
    k, n = teacher.shape[:2]
    w_t, w_f = teacher_weight, ferplus_weight
    if not (0 <= w_t and 0 <= w_f and w_t + w_f <= 1 + WEIGHT_EPS):
        raise ValueError(f"weights must be >= 0 and sum to at most 1: teacher {w_t}, ferplus {w_f}")
    if partner is None:
        partner, lam = np.broadcast_to(np.arange(n), (k, n)), np.ones((k, n), np.float32)
    # the label and FER+ share of one face's target: mix_targets without the teacher, renormalised
    rest = (mix_targets(labels, None, 0.0, ferplus, ferplus_usable, min(1.0, w_f / (1.0 - w_t))) if w_t < 1
            else np.zeros((n, NUM_CLASSES), np.float32))
    lam3 = np.asarray(lam, np.float32)[..., None]
    return (w_t * teacher + (1.0 - w_t) * (lam3 * rest[None] + (1.0 - lam3) * rest[partner])).astype(np.float32)


def view_distillation_targets(cfg, full: FerData, keep: np.ndarray, run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Consistent teaching: (views uint8 (k,N,48,48), targets float32 (k,N,7)) for the Training rows of
    full.subset(keep); targets mix like `distillation_targets`, with the teacher's word on each view. With
    cfg.teacher_mixup the views are mixups of two faces and the label/FER+ share mixes with the same weight."""
    if not cfg.teacher or cfg.teacher_weight <= 0:
        raise ValueError("--teacher-views needs --teacher MODEL_DIR and a --teacher-weight above 0")
    if cfg.augment is None:
        raise ValueError("--teacher-views augments the faces; it cannot be combined with --no-augment")
    faces, labels, ferplus, usable = _labels_and_votes(cfg, full, keep)
    views = augmented_views(faces, cfg.augment, cfg.teacher_views, cfg.seed)
    partner = lam = None
    if cfg.teacher_mixup > 0:
        views, partner, lam = mixed_views(views, cfg.teacher_mixup, cfg.seed)
    probs = cached_teacher_view_probabilities(cfg.teacher, views, run)
    targets = view_targets(soften(probs.reshape(-1, NUM_CLASSES), cfg.temperature).reshape(probs.shape),
                           labels, cfg.teacher_weight, ferplus, usable, cfg.ferplus_weight, partner, lam)
    stats = {"n": int(len(labels)), "views": int(len(views)), "mixup_alpha": cfg.teacher_mixup,
             "mean_mixup_lambda": None if lam is None else float(lam.mean()),
             "argmax_agrees_with_label": float((targets.argmax(2) == labels).mean()),
             "teacher_agrees_with_label": float((probs.argmax(2) == labels).mean()),
             "teacher_mean_top_probability": float(probs.max(2).mean()),
             "ferplus_usable": None if usable is None else int(usable.sum())}
    (run / "targets.json").write_text(json.dumps(stats, indent=2))
    log.info("consistent-teaching targets: %s", stats)
    return views, targets


def distillation_targets(cfg, full: FerData, keep: np.ndarray, run: Path) -> np.ndarray:
    """The (N_train,7) targets of `cfg` (a TrainConfig) for the Training rows of full.subset(keep)."""
    faces, labels, ferplus, usable = _labels_and_votes(cfg, full, keep)
    teacher = None
    if cfg.teacher_weight > 0:
        if not cfg.teacher:
            raise ValueError("--teacher-weight needs --teacher MODEL_DIR")
        teacher = soften(cached_teacher_probabilities(cfg.teacher, faces, run), cfg.temperature)
    targets = mix_targets(labels, teacher, cfg.teacher_weight, ferplus, usable, cfg.ferplus_weight)
    agree = float((targets.argmax(1) == labels).mean())
    stats = {"n": int(len(labels)), "argmax_agrees_with_label": agree,
             "teacher_agrees_with_label": None if teacher is None else float((teacher.argmax(1) == labels).mean()),
             "ferplus_usable": None if usable is None else int(usable.sum())}
    (run / "targets.json").write_text(json.dumps(stats, indent=2))
    log.info("distillation targets: %s", stats)
    return targets


def add_cli(sub) -> None:
    from training.train import add_train_arguments

    p = sub.add_parser("distill", help="train a student on a teacher's soft targets and the FER+ votes (resumable)",
                       description="Train a student like `ferlive train` does, on targets that mix the FER2013 "
                                   "label, a teacher's softened probabilities and the FER+ crowd votes of "
                                   "Training faces. Rerun the same command to resume.")
    add_train_arguments(p, label_smoothing=0.0)
    p.add_argument("--teacher", default=None, help="exported model directory of the teacher (e.g. an ensemble)")
    p.add_argument("--teacher-weight", type=float, default=0.5, help="share of the teacher in the target")
    p.add_argument("--temperature", type=float, default=2.0, help="teacher temperature T (p**(1/T))")
    p.add_argument("--ferplus-weight", type=float, default=0.2,
                   help="share of the FER+ vote distribution in the target (Training rows only)")
    p.add_argument("--teacher-views", type=int, default=0, metavar="K",
                   help="consistent teaching: augment each Training face K times up front, let the teacher label "
                        "every view and train on those views with their own targets (0: the teacher sees the "
                        "plain face and the student an online-augmented one)")
    p.add_argument("--teacher-mixup", type=float, default=0.0, metavar="ALPHA",
                   help="function matching (with --teacher-views): blend every view with a random partner face, "
                        "lam ~ Beta(ALPHA, ALPHA), and let the teacher label the blend (0: off)")
    p.set_defaults(func=_cmd_distill)


def _cmd_distill(a) -> int:
    from training.train import config_from_args, train

    if a.teacher is None and a.teacher_weight > 0:
        raise SystemExit("ferlive distill: --teacher MODEL_DIR is required (or --teacher-weight 0)")
    cfg = config_from_args(a, teacher=a.teacher, teacher_weight=a.teacher_weight if a.teacher else 0.0,
                           temperature=a.temperature, ferplus_weight=a.ferplus_weight,
                           teacher_views=a.teacher_views, teacher_mixup=a.teacher_mixup)
    try:
        train(cfg)
    except ValueError as e:
        raise SystemExit(f"ferlive distill: {e}") from None
    return 0
