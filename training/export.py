"""Export a trained model to a self-describing model directory (see shared/model.py for its files),
checked form against form: float32 TFLite against Keras, int8 TFLite against float32.

    python -m training export --run-dir runs/xw --out shared/bundled_model [--flip-tta]
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from shared.labels import EMOTIONS
from shared.model import CARD, MODEL_JSON, TFLITE_FILES, WEIGHTS, FacialExpressionModel
from shared.preprocess import FACE_SIZE, to_model_input
from training.evaluate import classification_report, evaluate, format_report, keras_predict, predict_all

log = logging.getLogger(__name__)

CARD_VERSION = 1
MAX_INT8_DROP = 0.01          # int8 may lose at most 1 accuracy point on PublicTest
FLOAT32_TOLERANCE = 1e-4      # max |p_tflite - p_keras| for the float32 form
PREPROCESS = ("shared.preprocess.prepare_faces + to_model_input: BGR->gray (cv2.COLOR_BGR2GRAY), resize to "
              "48x48 (INTER_AREA shrinking, INTER_LINEAR enlarging), float32 pixel/255 in [0,1], shape (N,48,48,1)")


class ExportError(RuntimeError):
    """An export that failed one of its checks; the message says which and by how much."""


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_run(run_dir: str | Path, weights: str = "best", fuse: bool = True):
    """Rebuild a training run's model (no augmentation: it is identity at inference) from its config.json
    and load its checkpoint ("best": best.weights.h5 chosen on PublicTest; "last": the final weights in
    last.keras; or a path). A run of RepVGG blocks comes back folded into its plain twin unless fuse=False
    (training.reparam). -> (model, config)."""
    from training.models import create_model
    from training.train import BEST_WEIGHTS, CONFIG, LAST_MODEL

    run = Path(run_dir)
    cfg = _read_json(run / CONFIG)
    if cfg is None:
        raise FileNotFoundError(f"{run / CONFIG} is missing; is {run} a run directory of `ferlive train`?")
    path = {"best": run / BEST_WEIGHTS, "last": run / LAST_MODEL}.get(weights, Path(weights))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} is missing (train the run first, or pass --weights PATH)")
    model = create_model(cfg["model"])
    model.load_weights(str(path))
    if fuse:
        from training.reparam import fuse as fold
        model = fold(model)
    return model, cfg


def averaged_model(models: list, flip_tta: bool = False, mirrored: list[bool] | None = None):
    """One serialisable network that averages the softmax of every member and, with flip_tta, of each
    member on the mirrored face too: an ensemble and/or flip TTA baked into a single graph. mirrored: per
    member, True where it already averages over the mirror inside (an exported flip-TTA model): it is not
    flipped again, and each member then counts once. One member without flip_tta is returned as it is."""
    import keras

    mirrored = list(mirrored) if mirrored is not None else [False] * len(models)
    flip_tta = flip_tta and not all(mirrored)  # nothing left to mirror
    if len(models) == 1 and not flip_tta:
        return models[0]
    if len({m.name for m in models}) < len(models):  # nested models are layers: their names must differ
        for i, m in enumerate(models, start=1):
            m.name = f"{m.name}_{i}"
    face = keras.Input(shape=models[0].input_shape[1:], name="face")
    views = [face, keras.ops.flip(face, axis=2)] if flip_tta else [face]
    if flip_tta and any(mirrored):  # a mean per member first, so a mirrored member weighs as much as the others
        outs = [m(face) if done else keras.layers.Average(name=f"{m.name}_flip_avg")([m(v) for v in views])
                for m, done in zip(models, mirrored)]
    else:
        outs = [m(v) for m in models for v in views]
    name = "_".join(dict.fromkeys(m.name for m in models)) if len(models) == 1 else f"ensemble{len(models)}"
    layer = "probs_flip_tta" if len(models) == 1 else "probs_avg"
    return keras.Model(face, keras.layers.Average(name=layer)(outs), name=f"{name}{'_flip_tta' * flip_tta}")


def flip_tta_model(model):
    """The model wrapped to average its prediction over the face and its mirror image (serialisable)."""
    return averaged_model([model], flip_tta=True)


def convert_tflite(model, representative: np.ndarray) -> tuple[bytes, bytes]:
    """Keras model -> (float32 TFLite, full-integer int8 TFLite) via a SavedModel.
    representative: uint8 faces (N,48,48) used to calibrate int8 ranges."""
    import tensorflow as tf

    def calibration():
        for face in representative:
            yield [to_model_input(face[None])]

    with tempfile.TemporaryDirectory(prefix="ferlive-export-") as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        float_model = tf.lite.TFLiteConverter.from_saved_model(tmp).convert()
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = calibration
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        int8_model = conv.convert()
    return float_model, int8_model


def _quant_params(tflite_path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite_path))
    params = {}
    for role, details in (("input", interp.get_input_details()[0]), ("output", interp.get_output_details()[0])):
        scale, zero_point = details["quantization"]
        params[role] = {"dtype": np.dtype(details["dtype"]).name, "scale": float(scale), "zero_point": int(zero_point)}
    return params


def _write_keras_files(model, out: Path, name: str | None, flip_tta: bool,
                       mirrored: list[bool] | None = None) -> tuple[object, dict]:
    """Write model.json and model.weights.h5 of one network or an ensemble (a list: averaged, and with flip_tta
    also over the mirrored face; `mirrored` as in averaged_model) to out; returns the written graph and the
    card's common fields."""
    members = list(model) if isinstance(model, (list, tuple)) else [model]
    arch = "+".join(dict.fromkeys(m.name for m in members))  # before averaged_model renames look-alike members
    model = averaged_model(members, flip_tta, mirrored)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_JSON).write_text(model.to_json())
    model.save_weights(str(out / WEIGHTS))
    return model, {
        "format_version": CARD_VERSION,
        "name": name or arch,
        "architecture": arch,
        "labels": list(EMOTIONS),
        "input": {"shape": [FACE_SIZE, FACE_SIZE, 1], "color": "gray", "dtype": "float32", "range": [0.0, 1.0],
                  "preprocess": PREPROCESS},
        "output": "softmax probabilities (N,7) in the order of `labels` (FER2013 codes)",
        "flip_tta": bool(flip_tta or (mirrored and all(mirrored))),
        "ensemble_members": len(members),
        "files": {"card": CARD, "keras_json": MODEL_JSON, "keras_weights": WEIGHTS},
        "parameters": int(model.count_params()),
    }


def write_model_dir(model, out_dir: str | Path, representative: np.ndarray, name: str | None = None,
                    flip_tta: bool = False, extra: dict | None = None, mirrored: list[bool] | None = None) -> dict:
    """Write model.json, model.weights.h5, both TFLite forms and a card (no metrics yet); returns the card.
    `model` is one network or a list of them (an ensemble: every form averages their outputs);
    with flip_tta every form also averages over the face and its mirror (`mirrored` as in averaged_model)."""
    import keras
    import tensorflow as tf

    out = Path(out_dir)
    model, card = _write_keras_files(model, out, name, flip_tta, mirrored)
    float_bytes, int8_bytes = convert_tflite(model, representative)
    (out / TFLITE_FILES["float32"]).write_bytes(float_bytes)
    (out / TFLITE_FILES["int8"]).write_bytes(int8_bytes)
    quant = _quant_params(out / TFLITE_FILES["int8"])
    if not np.isclose(quant["input"]["scale"], 1 / 255, rtol=1e-3):
        log.warning("int8 input scale is %g, not 1/255: uint8 pixels do not map one to one", quant["input"]["scale"])
    card["files"].update(TFLITE_FILES)
    card.update({"quantization": {"int8": {**quant, "scheme": "full-integer post-training quantisation",
                                           "representative_faces": int(len(representative))}},
                 "exported": {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "tensorflow": tf.__version__, "keras": keras.__version__},
                 **(extra or {})})
    (out / CARD).write_text(json.dumps(card, indent=2))
    return card


def representative_faces(train_faces: np.ndarray, count: int = 500, seed: int = 0) -> np.ndarray:
    """`count` seeded random Training faces for int8 calibration."""
    rng = np.random.default_rng(seed)
    return train_faces[rng.permutation(len(train_faces))[:count]]


def check_int8_gate(float_acc: float, int8_acc: float, max_drop: float = MAX_INT8_DROP) -> dict:
    """Raise ExportError if int8 PublicTest accuracy is more than max_drop below float32."""
    drop = float_acc - int8_acc
    if drop > max_drop:
        raise ExportError(f"int8 PublicTest accuracy {int8_acc:.4f} is {100 * drop:.2f} points below float32 "
                          f"{float_acc:.4f} (allowed: {100 * max_drop:.2f}); calibrate with more faces or keep "
                          f"the float32 model")
    return {"float32_publictest": float_acc, "int8_publictest": int8_acc, "drop_points": 100 * drop,
            "max_drop_points": 100 * max_drop, "passed": True}


def _chain_seconds(record: dict | None) -> float:
    """Training seconds of a run plus those of every run its initial weights came from."""
    if not record:
        return 0.0
    own = (record.get("timing") or {}).get("seconds", 0.0)
    init = (record.get("init_from") or {}).get("training")
    if init and "ensemble" in init:
        return own + sum(_chain_seconds(r) for r in init["ensemble"])
    return own + _chain_seconds(init)


def _training_record(run: Path, weights: str, cfg: dict) -> dict:
    from training.train import BEST_WEIGHTS, INIT_SOURCE, LAST_MODEL, TIMING

    record = {"run_dir": str(run), "weights": {"best": BEST_WEIGHTS, "last": LAST_MODEL}.get(weights, weights),
              "command": cfg.get("command"), "timing": _read_json(run / TIMING),
              "config": {k: v for k, v in cfg.items() if k != "command"}}
    init = _read_json(run / INIT_SOURCE)
    if init is not None:  # the run started from another model's weights: carry how that was trained
        record["init_from"] = init
        if record["timing"] is not None:
            record["timing"]["seconds_with_init_chain"] = _chain_seconds(record)
    if record["timing"] is None:
        log.warning("%s has no timing.json; the card will carry no training time", run)
    return record


def export_model(model_or_run_dir, out_dir: str | Path, data: str | Path | None = None, weights: str = "best",
                 flip_tta: bool = False, calibration_faces: int = 500, seed: int = 0,
                 max_int8_drop: float | None = MAX_INT8_DROP, name: str | None = None,
                 keep_float32_file: bool = True, training: dict | None = None) -> dict:
    """Export a Keras model, a training run directory or a list of run directories (an ensemble
    whose every form averages the members) to out_dir and measure every form on PublicTest and
    PrivateTest. Raises ExportError when float32 TFLite disagrees with Keras or int8 loses more than
    max_int8_drop PublicTest accuracy (None: skip that gate). keep_float32_file=False deletes the float32
    TFLite once it has been measured and checked (a smaller directory to ship). training: the card's record of
    how a Keras model passed in was made (run directories bring their own). Returns the card."""
    from training.data import load_fer2013

    mirrored = None
    sources = model_or_run_dir if isinstance(model_or_run_dir, (list, tuple)) else [model_or_run_dir]
    if all(isinstance(s, (str, Path)) for s in sources):
        models, mirrored, records, data = _load_members(sources, data, weights)
        training = records[0] if len(records) == 1 else {"ensemble": records, "timing": {
            "seconds": sum((r.get("timing") or {}).get("seconds", 0.0) for r in records),
            "sessions": sum((r.get("timing") or {}).get("sessions", 0) for r in records)}}
        if any("init_from" in r for r in records):
            training["timing"]["seconds_with_init_chain"] = sum(_chain_seconds(r) for r in records)
        model = models[0] if len(models) == 1 else models
    elif len(sources) == 1:
        model = sources[0]
    else:
        raise TypeError("export_model takes one Keras model, a run directory or a list of run directories")
    members = model if isinstance(model, list) else [model]
    fer = load_fer2013(data)
    train_split = fer.split("Training")
    public, private = fer.split("PublicTest"), fer.split("PrivateTest")
    calib = representative_faces(train_split.faces, calibration_faces, seed)

    out = Path(out_dir)
    extra = {"training": training,
             "calibration": {"split": "Training", "count": int(len(calib)), "seed": seed}}
    if flip_tta or len(members) > 1:  # what each network scores alone, to judge whether TTA / ensembling pays
        alone = {n: [evaluate(keras_predict(m), s.faces, s.labels)["accuracy"] for m in members]
                 for n, s in (("PublicTest", public), ("PrivateTest", private))}
        if len(members) == 1:
            extra["without_flip_tta"] = {n: accs[0] for n, accs in alone.items()}
        else:
            extra["members_alone"] = alone
    card = write_model_dir(model, out, calib, name=name, flip_tta=flip_tta, extra=extra, mirrored=mirrored)

    threads = os.cpu_count() or 1  # accuracy, not speed, is measured here: every core (a teacher's float32 is slow)
    forms = {"keras": FacialExpressionModel(out, backend="keras"),
             "float32": FacialExpressionModel(out, precision="float32", num_threads=threads),
             "int8": FacialExpressionModel(out, precision="int8", num_threads=threads)}
    metrics: dict = {"data": str(data) if data is not None else "default (../shared fer2013-images.zip)"}
    probs = {}
    for split_name, split in (("PublicTest", public), ("PrivateTest", private)):
        row = {"n": int(len(split))}
        for form, fem in forms.items():
            p = predict_all(fem.predict_proba, split.faces)
            p_tta = 0.5 * (p + predict_all(fem.predict_proba, np.ascontiguousarray(split.faces[:, :, ::-1])))
            probs[form, split_name] = p
            row[form] = {"accuracy": classification_report(split.labels, p)["accuracy"],
                         "accuracy_flip_tta": classification_report(split.labels, p_tta)["accuracy"]}
            log.info("%s %s: accuracy %.4f, with flip TTA %.4f", form, split_name, row[form]["accuracy"],
                     row[form]["accuracy_flip_tta"])
        metrics[split_name] = row
    from training.ferplus import majority_accuracy, majority_or_none, votes_or_none
    votes = votes_or_none(data)
    for split_name in ("PublicTest", "PrivateTest"):  # second metric: against the FER+ crowd majority
        majority = majority_or_none(votes, fer, split_name)
        if majority is not None:
            metrics.setdefault("ferplus_majority", {})[split_name] = {
                form: majority_accuracy(probs[form, split_name], majority) for form in forms}
    report = classification_report(private.labels, probs["int8", "PrivateTest"])
    metrics["int8_PrivateTest"] = {k: report[k] for k in ("accuracy", "macro_f1", "per_class", "confusion")}
    metrics["int8_PrivateTest"]["recall"] = {k: v["recall"] for k, v in report["per_class"].items()}
    print(format_report(report, f"{card['name']} int8 on PrivateTest"))

    both = np.concatenate([probs["keras", "PublicTest"], probs["keras", "PrivateTest"]])
    f32 = np.concatenate([probs["float32", "PublicTest"], probs["float32", "PrivateTest"]])
    i8 = np.concatenate([probs["int8", "PublicTest"], probs["int8", "PrivateTest"]])
    checks = {"float32_vs_keras_max_abs_diff": float(np.abs(f32 - both).max()),
              "int8_vs_float32_max_abs_diff": float(np.abs(i8 - f32).max()),
              "int8_vs_float32_argmax_agreement": float(np.mean(i8.argmax(1) == f32.argmax(1)))}
    card["metrics"], card["checks"] = metrics, checks
    (out / CARD).write_text(json.dumps(card, indent=2))
    if checks["float32_vs_keras_max_abs_diff"] > FLOAT32_TOLERANCE:
        raise ExportError(f"float32 TFLite differs from Keras by {checks['float32_vs_keras_max_abs_diff']:.2e} "
                          f"(allowed {FLOAT32_TOLERANCE:.0e}); the conversion is broken")
    if max_int8_drop is not None:
        try:
            checks["int8_gate"] = check_int8_gate(metrics["PublicTest"]["float32"]["accuracy"],
                                                  metrics["PublicTest"]["int8"]["accuracy"], max_int8_drop)
        except ExportError as e:
            checks["int8_gate"] = {"passed": False, "error": str(e)}
            raise
        finally:
            (out / CARD).write_text(json.dumps(card, indent=2))
    if not keep_float32_file:
        (out / card["files"].pop("float32")).unlink()
        card["left_out"] = {"float32": "measured and checked at export, then deleted to keep the directory small"}
        (out / CARD).write_text(json.dumps(card, indent=2))
    return card


def load_member(path: str | Path, weights: str = "best") -> tuple[object, bool, dict]:
    """One member of an export: a training run directory (its best PublicTest checkpoint, or `weights`) or an
    exported model directory (its model.json and weights, e.g. the bundled ensemble). Returns (model, whether
    it already averages over the mirrored face, the record of how it was made)."""
    from shared.model import load_keras_network, read_card
    from training.train import CONFIG

    path = Path(path)
    if weights != "best" or (path / CONFIG).is_file() or not (path / MODEL_JSON).is_file():
        model, cfg = load_run(path, weights)
        return model, False, _training_record(path, weights, cfg)
    card = read_card(path)
    model = load_keras_network(path)
    return model, bool(card.get("flip_tta", False)), {"model_dir": str(path), "name": card.get("name"),
                                                      "training": card.get("training")}


def _load_members(paths, data, weights: str = "best") -> tuple[list, list[bool], list[dict], object]:
    """load_member for each path -> (models, mirrored flags, records, data: the given one, else the first
    training run's)."""
    models, mirrored, records = [], [], []
    for path in paths:
        m, done, record = load_member(path, weights)
        models.append(m)
        mirrored.append(done)
        records.append(record)
        data = data if data is not None else (record.get("config") or {}).get("data")
    return models, mirrored, records, data


def export_keras_only(run_dirs: list[str | Path], out_dir: str | Path, data: str | Path | None = None,
                      flip_tta: bool = False, name: str | None = None) -> dict:
    """Write a Keras-only model directory (model.json, model.weights.h5, card.json with Keras accuracies on the
    splits `data` holds) from one or more run directories or exported model directories (`load_member`),
    without TensorFlow: for a machine that has none (a lent GPU running Keras on JAX). It serves as a
    distillation teacher there (`ferlive distill --teacher`); `ferlive export` of the same runs, where
    TensorFlow is, gives the TFLite forms. Returns the card."""
    import keras

    from training.data import load_fer2013

    models, mirrored, records, data = _load_members(run_dirs, data)
    if data is None:
        raise ValueError("--data is needed: no member is a training run that names its data")
    fer = load_fer2013(data)
    model, card = _write_keras_files(models, Path(out_dir), name, flip_tta, mirrored)
    metrics: dict = {}
    for split in ("PublicTest", "PrivateTest"):
        if not (fer.splits == split).any():
            continue
        part = fer.split(split)
        x = to_model_input(part.faces)
        metrics[split] = {"n": int(len(part)), "keras": {"accuracy": float(np.mean(
            model.predict(x, batch_size=1024, verbose=0).argmax(1) == part.labels))}}
        if len(models) > 1:
            metrics[split]["members_alone"] = [float(np.mean(m.predict(x, batch_size=1024, verbose=0).argmax(1)
                                                             == part.labels)) for m in models]
    card.update({"keras_only": "no TFLite forms: written without TensorFlow; `ferlive export` of the runs adds them",
                 "exported": {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "keras": keras.__version__,
                              "backend": keras.backend.backend()},
                 "training": records[0] if len(records) == 1 else {"ensemble": records},
                 "metrics": metrics})
    (Path(out_dir) / CARD).write_text(json.dumps(card, indent=2))
    return card


def add_cli(sub) -> None:
    p = sub.add_parser("export", help="export a training run to a model directory (JSON, weights, TFLite)",
                       description="Rebuild the run's model, load its best PublicTest checkpoint and write "
                                   "model.json, model.weights.h5, model_float32.tflite, model_int8.tflite and "
                                   "card.json (metrics of every form). Fails if int8 loses more than "
                                   "--max-int8-drop PublicTest points.")
    p.add_argument("--run-dir", required=True, nargs="+",
                   help="training run directory (config.json, best.weights.h5) or exported model directory (its "
                        "Keras files, e.g. a --keras-only teacher from a GPU); several: an ensemble whose every "
                        "form averages their outputs")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--data", default=None, help="FER2013 CSV, folder or zip (default: the run's data)")
    p.add_argument("--weights", default="best", help="best (best.weights.h5) or a .weights.h5 path")
    p.add_argument("--flip-tta", action="store_true", help="bake horizontal-flip TTA into every form")
    p.add_argument("--calibration-faces", type=int, default=500, help="Training faces for int8 calibration")
    p.add_argument("--max-int8-drop", type=float, default=100 * MAX_INT8_DROP,
                   help="largest allowed int8 PublicTest accuracy loss, in points")
    p.add_argument("--name", default=None, help="model name for the card (default: the architecture)")
    p.add_argument("--no-float32-file", action="store_true",
                   help="delete model_float32.tflite after measuring it (the card keeps its metrics)")
    p.add_argument("--keras-only", action="store_true",
                   help="write only the Keras files and a card with Keras accuracies, without TensorFlow (a teacher "
                        "made on a machine without it, e.g. a lent GPU)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(a) -> int:
    if len(a.run_dir) > 1 and a.weights != "best":
        log.error("--weights PATH takes one --run-dir; an ensemble uses each run's best checkpoint")
        return 2
    if a.keras_only:
        card = export_keras_only(a.run_dir, a.out, data=a.data, flip_tta=a.flip_tta, name=a.name)
        print(f"exported {card['name']} (Keras only) to {a.out}: " + ", ".join(
            f"{k} {v['keras']['accuracy']:.4f}" for k, v in card["metrics"].items()))
        return 0
    try:
        runs = a.run_dir if len(a.run_dir) > 1 else a.run_dir[0]
        card = export_model(runs, a.out, data=a.data, weights=a.weights, flip_tta=a.flip_tta,
                            calibration_faces=a.calibration_faces, max_int8_drop=a.max_int8_drop / 100,
                            name=a.name, keep_float32_file=not a.no_float32_file)
    except ExportError as e:
        log.error("export failed: %s", e)
        return 1
    m = card["metrics"]
    print(f"exported {card['name']} to {a.out}: " + ", ".join(
        f"{form} {m['PublicTest'][form]['accuracy']:.4f}/{m['PrivateTest'][form]['accuracy']:.4f}"
        for form in ("keras", "float32", "int8")) + " (PublicTest/PrivateTest)")
    return 0
