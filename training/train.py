"""`model.fit` on FER2013 Training, checkpoints chosen on PublicTest; resumable; live curves.

    python -m training train --model xception_wide --epochs 60 --run-dir runs/xw
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from shared.labels import NUM_CLASSES
from shared.model import CARD
from shared.preprocess import to_model_input
from training.augment import AugmentConfig, build_augmentation
from training.data import FerData, load_fer2013

log = logging.getLogger(__name__)

BEST_WEIGHTS = "best.weights.h5"
LAST_MODEL = "last.keras"
HISTORY = "history.csv"
CONFIG = "config.json"
CURVES = "curves.png"
TIMING = "timing.json"
INIT_SOURCE = "init_from.json"


@dataclass
class TrainConfig:
    """Everything that defines a run; saved as config.json in the run directory."""

    model: str = "xception_wide"
    data: str | None = None               # CSV, folder or zip; None: ../shared's zip
    run_dir: str = "runs/default"
    epochs: int = 60
    batch_size: int = 64
    optimizer: str | None = None          # adam | adamw | sgd; None: the model's default
    lr: float | None = None               # None: the model's default
    weight_decay: float = 1e-4            # adamw / sgd
    schedule: str = "cosine"              # cosine | plateau | constant
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    seed: int = 1
    per_class: int | None = None          # cap faces per class and split (quick runs)
    init_from: str | None = None          # start from these weights: a run dir, a .weights.h5 or a model dir
    ema: float | None = None              # momentum of the weights' moving average (validated and kept); None: off
    # Distillation (`ferlive distill`): the targets mix the FER2013 label with a teacher's softened
    # probabilities and the FER+ crowd-vote distribution (Training rows only); the rest of the weight
    # goes to the hard label. 0/None: plain training on hard labels.
    teacher: str | None = None            # exported model directory of the teacher
    teacher_weight: float = 0.0
    temperature: float = 1.0              # teacher probabilities p**(1/T), renormalised
    ferplus_weight: float = 0.0
    teacher_views: int = 0                # consistent teaching: K augmented views labelled by the teacher; 0: off
    teacher_mixup: float = 0.0            # function matching: mixup alpha of the views (needs teacher_views); 0: off
    time_budget: float | None = None      # seconds this session may train; the schedule shrinks to fit; None: off
    augment_ahead: int = 0                # K augmented views of each Training face made up front; 0: online layers
    sam: float = 0.0                      # sharpness-aware minimisation radius (training/sam.py); 0: plain steps

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        aug = d.pop("augment", None)
        return cls(**d, augment=AugmentConfig(**aug) if aug is not None else None)

    def to_dict(self) -> dict:
        return asdict(self)


def per_class_index(data: FerData, n: int | None, seed: int) -> np.ndarray:
    """Sorted row indices of at most n faces of each class in each split (seeded); every row when n is None."""
    if n is None:
        return np.arange(len(data))
    rng = np.random.default_rng(seed)
    keep = []
    for split in sorted(set(data.splits.tolist())):
        for c in range(NUM_CLASSES):
            idx = np.flatnonzero((data.splits == split) & (data.labels == c))
            keep.extend(rng.permutation(idx)[:n])
    return np.sort(np.asarray(keep, dtype=np.int64))


def take_per_class(data: FerData, n: int | None, seed: int) -> FerData:
    """At most n faces of each class in each split (seeded); all of them when n is None."""
    return data if n is None else data.subset(per_class_index(data, n, seed))


def xy(data: FerData) -> tuple[np.ndarray, np.ndarray]:
    """Model input and one-hot targets."""
    return to_model_input(data.faces), np.eye(NUM_CLASSES, dtype=np.float32)[data.labels]


def load_initial_weights(model, source: str | Path) -> int:
    """Copy weights into `model` (augmentation block aside) from a training run directory (its best
    checkpoint), a `.weights.h5` checkpoint of the same architecture, or an exported model directory
    (the network inside a flip-TTA wrapper included). A RepVGG model (training.reparam) starts from its plain
    twin with the side branches silent, and a plain one from a RepVGG run's folded weights. Returns how many
    layers were copied; ValueError when the source holds another architecture."""
    import keras
    from training.models import create_model
    from training.reparam import fuse, is_rep, plain_name

    src = Path(source)
    if (src / CONFIG).is_file() or src.suffix == ".h5":
        from training.export import load_run
        if src.suffix == ".h5":
            donor = create_model(model.name)
            donor.load_weights(str(src))
        else:
            donor, saved = load_run(src, fuse=False)
            if plain_name(saved["model"]) != plain_name(model.name):
                raise ValueError(f"{src} is a {saved['model']} run; cannot initialise a {model.name} from it")
    elif (src / CARD).is_file():
        from shared.model import FacialExpressionModel
        donor = FacialExpressionModel(src, backend="keras")._keras
        nested = [l for l in donor.layers if isinstance(l, keras.Model) and l.name == plain_name(model.name)]
        donor = nested[0] if nested else donor
    else:
        raise FileNotFoundError(f"--init-from {src}: not a run directory (config.json), a .weights.h5 file or "
                                f"an exported model directory (card.json)")
    if is_rep(donor.name) and not is_rep(model.name):
        donor = fuse(donor)  # a plain fine-tune of a RepVGG run starts from its folded weights
    copied = 0
    for layer in model.layers:
        if not layer.weights or layer.name == "augment":
            continue
        try:
            other = donor.get_layer(layer.name)
        except ValueError:
            if is_rep(model.name) and "_rep" in layer.name and not is_rep(donor.name):
                if isinstance(layer, keras.layers.BatchNormalization):  # silence the side branch: the
                    layer.gamma.assign(np.zeros(layer.gamma.shape, "float32"))  # donor's function exactly
                continue
            raise ValueError(f"{src} has no layer {layer.name!r}: it is not a {model.name}") from None
        layer.set_weights(other.get_weights())
        copied += 1
    log.info("initialised %d layers of %s from %s", copied, model.name, src)
    return copied


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def record_init_source(run: Path, source: str | Path) -> dict:
    """Write run/init_from.json: where the initial weights came from and, when the source is a run or
    an exported model, how that was trained (its command and time), so an export of this run can state
    the whole chain even after the source is overwritten."""
    src = Path(source)
    info: dict = {"source": str(source)}
    if (src / CONFIG).is_file():
        cfg = json.loads((src / CONFIG).read_text())
        timing = src / TIMING
        info["training"] = {"run_dir": str(src), "command": cfg.get("command"),
                            "timing": json.loads(timing.read_text()) if timing.is_file() else None}
    elif (src / CARD).is_file():
        card = json.loads((src / CARD).read_text())
        info["training"] = card.get("training")
        info["card_name"] = card.get("name")
    _write_json_atomic(run / INIT_SOURCE, info)
    return info


def lr_at(epoch: int, cfg: TrainConfig, base_lr: float) -> float:
    """Per-epoch learning rate: linear warm-up, then cosine to 1% (or constant)."""
    if epoch < cfg.warmup_epochs:
        return base_lr * (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.schedule == "cosine":
        t = (epoch - cfg.warmup_epochs) / max(1, cfg.epochs - cfg.warmup_epochs)
        return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
    return base_lr


def make_optimizer(name: str, lr: float, weight_decay: float, ema: float | None = None):
    """The optimiser by name; `ema` (e.g. 0.999) keeps an exponential moving average of the weights
    (Polyak averaging), which `_callbacks` validates, checkpoints and finally keeps."""
    import keras
    if ema is not None and not 0.0 < ema < 1.0:
        raise ValueError(f"--ema must be between 0 and 1 (e.g. 0.999), got {ema}")
    kw = {"use_ema": True, "ema_momentum": ema} if ema is not None else {}
    if name == "adam":
        return keras.optimizers.Adam(lr, **kw)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=weight_decay, **kw)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=weight_decay, **kw)
    raise ValueError(f"unknown optimizer {name!r}; use adam, adamw or sgd")


def plot_history(csv_path: Path, png_path: Path, title: str = "") -> "object | None":
    """Draw loss and accuracy curves (train and PublicTest) from history.csv to a PNG; returns the figure."""
    import matplotlib
    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not csv_path.exists():
        return None
    rows = np.genfromtxt(csv_path, delimiter=",", names=True)
    rows = np.atleast_1d(rows)
    if rows.size == 0:
        return None
    ep = rows["epoch"] + 1
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, ax, lab in [("loss", a1, "train"), ("val_loss", a1, "PublicTest"),
                         ("accuracy", a2, "train"), ("val_accuracy", a2, "PublicTest")]:
        if key in rows.dtype.names:
            ax.plot(ep, rows[key], marker="o", ms=3, label=lab)
    a1.set_title("loss"); a2.set_title("accuracy")
    for ax in (a1, a2):
        ax.set_xlabel("epoch"); ax.grid(alpha=0.3); ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return fig


def _callbacks(cfg: TrainConfig, run: Path, base_lr: float, started: float):
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Add this session's training time to timing.json after every epoch, so a killed session's
        finished epochs still count in the run's total."""

        def __init__(self, path: Path):
            super().__init__()
            self.path = path
            self.prev = {"seconds": 0.0, "sessions": 0}
            self.t0 = 0.0

        def on_train_begin(self, logs=None):
            if self.path.exists():
                self.prev = json.loads(self.path.read_text())
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            _write_json_atomic(self.path, {
                "seconds": self.prev.get("seconds", 0.0) + time.time() - self.t0,
                "sessions": self.prev.get("sessions", 0) + 1, "epochs_done": epoch + 1,
                "host": os.uname().nodename, "cpus": os.cpu_count()})

    class LivePlot(keras.callbacks.Callback):
        """Redraw curves.png every epoch; in Jupyter, update one displayed figure in place."""

        def __init__(self):
            super().__init__()
            self._handle = None

        def on_epoch_end(self, epoch, logs=None):
            fig = plot_history(run / HISTORY, run / CURVES, f"{cfg.model} on FER2013")
            if fig is not None and "ipykernel" in sys.modules:
                from IPython.display import display
                if self._handle is None:
                    self._handle = display(fig, display_id=True)
                else:
                    self._handle.update(fig)

    class SwapBack(keras.callbacks.Callback):
        """With --ema: put the trained weights back after the checkpoint took the averaged ones, so the
        backup holds the training state as it is (trained weights in the model, the average in the
        optimiser) and a resumed run continues exactly."""

        def __init__(self, swap):
            super().__init__()
            self.swap = swap

        def on_epoch_end(self, epoch, logs=None):
            if epoch < self.params["epochs"] - 1:  # after the last epoch the model keeps the average
                self.swap.on_epoch_begin(epoch + 1)

    class TimeBudget(keras.callbacks.Callback):
        """--time-budget: after each epoch, shorten the schedule (its length in epochs) so this session ends
        within the budget at the pace seen so far (the first, compiling epoch left out); the cosine follows the
        shortened length from then on. When the pace improves, epochs come back (never beyond the planned
        ones), only as many as keep the learning rate from rising. The budget counts from `started` (the start
        of train(): loading the data, making views, the teacher's labels and compiling are inside it). What was
        fitted goes to time_budget.json."""

        def __init__(self, seconds: float, sched: TrainConfig, started: float):
            super().__init__()
            self.seconds, self.sched = seconds, sched
            self.t0 = started
            self.t_prev = 0.0
            self.durations: list[float] = []

        def on_train_begin(self, logs=None):
            self.t_prev = time.time()
            self.setup = self.t_prev - self.t0

        def _lengthen(self, epoch: int, fits: int, pace: float) -> None:
            """The pace improved (slow early epochs on a busy machine shortened the schedule too far): give
            back epochs, as many as fit and as keep the learning rate from rising above this epoch's (in the
            warm-up, above the next epoch's as scheduled: there it rises by design)."""
            now_lr = max(lr_at(epoch, self.sched, base_lr), lr_at(epoch + 1, self.sched, base_lr))
            longer = self.sched.epochs
            while longer < fits and lr_at(epoch + 1, replace(self.sched, epochs=longer + 1), base_lr) <= now_lr:
                longer += 1
            if longer > self.sched.epochs:
                log.info("time budget: %d epochs fit at %.1f s/epoch; schedule lengthened from %d to %d",
                         fits, pace, self.sched.epochs, longer)
                self.sched.epochs = longer

        def on_epoch_end(self, epoch, logs=None):
            now = time.time()
            self.durations.append(now - self.t_prev)
            self.t_prev = now
            pace = float(np.median(self.durations[1:] or self.durations))
            fits = min(cfg.epochs, epoch + 1 + int(max(0.0, self.seconds - (now - self.t0)) // pace))
            if fits < self.sched.epochs and (len(self.durations) > 1 or now - self.t0 >= self.seconds):
                log.info("time budget: %d epochs fit in %.0f s at %.1f s/epoch (planned %d)", fits, self.seconds,
                         pace, self.sched.epochs)
                self.sched.epochs = fits
            elif fits > self.sched.epochs and len(self.durations) > 1:
                self._lengthen(epoch, fits, pace)
            _write_json_atomic(run / "time_budget.json", {"seconds": self.seconds, "planned_epochs": cfg.epochs,
                                                          "scheduled_epochs": self.sched.epochs,
                                                          "seconds_per_epoch": pace,
                                                          "setup_seconds": round(self.setup, 1)})
            if epoch + 1 >= self.sched.epochs:
                self.model.stop_training = True

    sched = replace(cfg)  # the schedule's own copy: --time-budget may shorten it
    best_so_far = None
    hist = run / HISTORY
    if hist.exists():
        rows = np.atleast_1d(np.genfromtxt(hist, delimiter=",", names=True))
        if rows.size and "val_accuracy" in rows.dtype.names:
            best_so_far = float(np.nanmax(rows["val_accuracy"]))
    cbs = [
        keras.callbacks.ModelCheckpoint(str(run / BEST_WEIGHTS), monitor="val_accuracy", mode="max",
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=best_so_far, verbose=1),
        EpochTimer(run / TIMING),  # before the history row, so a finished row always has its time counted
        keras.callbacks.CSVLogger(str(hist), append=True),
    ]
    if cfg.schedule == "plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3, min_lr=1e-5))
    else:
        cbs.append(keras.callbacks.LearningRateScheduler(lambda e: lr_at(e, sched, base_lr)))
    if cfg.time_budget:
        cbs.append(TimeBudget(cfg.time_budget, sched, started))
    cbs.append(LivePlot())
    if cfg.ema is not None:
        # Validation and the best checkpoint see the averaged weights: swapped in for each evaluation
        # and at the end of each epoch (first, before the checkpoint), swapped back before the backup.
        swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
        cbs.insert(0, swap)
        cbs.append(SwapBack(swap))
    # Last, so an epoch is marked done only once its best checkpoint and history row are on disk: a kill
    # in between reruns that epoch (one repeated history row) instead of losing it. Two generations of
    # the backup, so a kill while it is being written falls back to the previous epoch's.
    cbs.append(keras.callbacks.BackupAndRestore(str(run / "backup"), save_freq="epoch", double_checkpoint=True,
                                                delete_checkpoint=False))
    return cbs


def train(cfg: TrainConfig, verbose: int | str | None = None):
    """Train (or resume) the run in cfg.run_dir; returns the Keras History."""
    started = time.time()  # --time-budget counts from here
    import keras
    from training.models import MODELS, create_model

    if cfg.model not in MODELS:  # before the run folder exists, so a typo leaves nothing behind
        raise ValueError(f"unknown model {cfg.model!r}; registered: {', '.join(sorted(MODELS))}")
    if cfg.teacher_mixup and not cfg.teacher_views:
        raise ValueError("--teacher-mixup blends the teacher's views: it needs --teacher-views K")
    if cfg.time_budget is not None and not cfg.time_budget > 0:
        raise ValueError(f"--time-budget must be a positive number of seconds, got {cfg.time_budget}")
    if cfg.augment_ahead and (cfg.teacher_views or cfg.augment is None):
        raise ValueError("--augment-ahead makes views of the run's augmentation: it cannot be combined with "
                         "--teacher-views (which makes its own) or --no-augment")
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg_file = run / CONFIG
    if cfg_file.exists():
        saved = json.loads(cfg_file.read_text())
        saved_cfg = {k: v for k, v in saved.items() if k not in ("command", "epochs", "time_budget")}
        mine = {k: v for k, v in cfg.to_dict().items() if k not in ("epochs", "time_budget")}
        if saved_cfg.get("train") is not None:
            saved_cfg = saved_cfg["train"]
        defaults = TrainConfig().to_dict()  # options added since the run was made take their defaults
        if {k: saved_cfg.get(k, defaults[k]) for k in mine} != mine:
            raise ValueError(f"{run} holds a run with another config; use a new --run-dir or the same options "
                             f"(saved: {saved_cfg})")
    meta = {**cfg.to_dict(), "command": " ".join(sys.argv)}
    cfg_file.write_text(json.dumps(meta, indent=2))

    keras.utils.set_random_seed(cfg.seed)
    spec = MODELS[cfg.model]
    opt_name = cfg.optimizer or spec.optimizer
    base_lr = cfg.lr or spec.lr

    full = load_fer2013(cfg.data)
    keep = per_class_index(full, cfg.per_class, cfg.seed)
    data = full.subset(keep)
    x_va, y_va = xy(data.split("PublicTest"))
    online_augment = cfg.augment
    extra_callbacks = []
    if cfg.teacher_views or cfg.augment_ahead:  # the faces come as views: only the flip stays online
        online_augment = replace(cfg.augment, rotation=0, zoom=0, shift=0, contrast=0, brightness=0, erasing=0)
    if cfg.teacher_views:  # the faces come as views, batched with their own targets
        from training.distill import ViewBatches, view_distillation_targets
        views = ViewBatches(*view_distillation_targets(cfg, full, keep, run), cfg.batch_size, cfg.seed)
        fit_data = {"x": views.keras_dataset()}
        extra_callbacks.append(views.epoch_callback())
    else:
        x_tr, y_tr = xy(data.split("Training"))
        if cfg.teacher or cfg.ferplus_weight > 0:
            from training.distill import distillation_targets
            y_tr = distillation_targets(cfg, full, keep, run)
        fit_data = {"x": x_tr, "y": y_tr, "batch_size": cfg.batch_size, "shuffle": True}
    if cfg.augment_ahead:  # the same augmentation, made once up front; each epoch draws one view per face
        from training.distill import ViewBatches, augmented_views
        faces = data.split("Training").faces
        views = augmented_views(faces, cfg.augment, cfg.augment_ahead, cfg.seed)
        batches = ViewBatches(views, np.broadcast_to(y_tr, (cfg.augment_ahead,) + y_tr.shape), cfg.batch_size,
                              cfg.seed)
        fit_data = {"x": batches.keras_dataset()}
        extra_callbacks.append(batches.epoch_callback())
    log.info("training on %d faces, validating on %d PublicTest faces", int((data.splits == "Training").sum()),
             len(x_va))

    model = create_model(cfg.model, augment=build_augmentation(online_augment, cfg.seed))
    if cfg.init_from and not (run / "backup").exists():  # a resumed run restores its own weights
        load_initial_weights(model, cfg.init_from)
        record_init_source(run, cfg.init_from)
    if cfg.sam:
        from training.sam import use_sam
        use_sam(model, cfg.sam)
    model.compile(optimizer=make_optimizer(opt_name, base_lr, cfg.weight_decay, cfg.ema),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=["accuracy"])
    if verbose is None:
        verbose = 1 if (sys.stdout.isatty() or "ipykernel" in sys.modules) else 2
    history = model.fit(**fit_data, epochs=cfg.epochs, validation_data=(x_va, y_va), verbose=verbose,
                        callbacks=extra_callbacks + _callbacks(cfg, run, base_lr, started))
    model.save(run / LAST_MODEL)
    return history


def add_cli(sub) -> None:
    p = sub.add_parser("train", help="train a registered model on FER2013 (resumable)",
                       description="Train on Training, keep the best PublicTest checkpoint; rerun the same "
                                   "command to resume an interrupted run.")
    add_train_arguments(p)
    p.set_defaults(func=_cmd_train)


def add_train_arguments(p, label_smoothing: float = 0.1) -> None:
    """The options `train` and `distill` share."""
    p.add_argument("--model", default="xception_wide",
                   help="registered model name (the MODELS registry in training/models.py)")
    p.add_argument("--data", default=None, help="FER2013 CSV, image-folder tree or zip (default: ../shared's zip)")
    p.add_argument("--run-dir", default="runs/default", help="where checkpoints, history and curves go")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=["cosine", "plateau", "constant"], default="cosine")
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--label-smoothing", type=float, default=label_smoothing)
    p.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    p.add_argument("--erasing", type=float, default=0.0, help="random-erasing strength (0: off)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--per-class", type=int, default=None, help="cap faces per class and split (quick runs)")
    p.add_argument("--init-from", default=None,
                   help="start from trained weights (fine-tuning, or a warm restart of the schedule): a run "
                        "directory, a .weights.h5 checkpoint or an exported model directory")
    p.add_argument("--ema", type=float, default=None, metavar="MOMENTUM",
                   help="keep an exponential moving average of the weights (e.g. 0.999): validation, the best "
                        "checkpoint and the final model use the averaged weights")
    p.add_argument("--augment-ahead", type=int, default=0, metavar="K",
                   help="augment each Training face K times up front and train each epoch on one of those views "
                        "(only the mirror flip stays online): for Keras on JAX on a GPU, where the augmentation "
                        "layers inside the compiled train step are very slow (docs/gpu.md); 0: online augmentation")
    p.add_argument("--sam", type=float, default=0.0, metavar="RHO",
                   help="sharpness-aware minimisation: each step's gradient is taken at the weights moved RHO "
                        "uphill (e.g. 0.05; two passes a step; TensorFlow backend); 0: off")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="end this session within about this long, counted from the start (loading, views, the "
                        "teacher's labels and compiling count): after each epoch the schedule is shortened to the "
                        "epochs that still fit (for a lent accelerator's minutes)")


def config_from_args(a, **extra) -> TrainConfig:
    aug = None if a.no_augment else AugmentConfig(erasing=a.erasing)
    return TrainConfig(model=a.model, data=a.data, run_dir=a.run_dir, epochs=a.epochs, batch_size=a.batch_size,
                       optimizer=a.optimizer, lr=a.lr, weight_decay=a.weight_decay, schedule=a.schedule,
                       warmup_epochs=a.warmup_epochs, label_smoothing=a.label_smoothing, augment=aug,
                       seed=a.seed, per_class=a.per_class, init_from=a.init_from, ema=a.ema,
                       time_budget=a.time_budget, augment_ahead=a.augment_ahead, sam=a.sam, **extra)


def _cmd_train(a) -> int:
    try:
        train(config_from_args(a))
    except ValueError as e:
        raise SystemExit(f"ferlive train: {e}") from None
    return 0
