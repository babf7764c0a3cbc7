"""Accuracy, per-class precision/recall/F1 and the confusion matrix of a model on a FER2013 split.

    python -m training evaluate --model-dir shared/bundled_model --form int8 --split PrivateTest --out out/eval
    python -m training evaluate --run-dir runs/xw --split PublicTest --tta
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from shared.labels import EMOTIONS, NUM_CLASSES

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]
"""uint8 faces (N,48,48) -> float32 probabilities (N,7) in EMOTIONS order."""

FORMS = ("keras", "float32", "int8")
CHUNK = 256


def with_flip_tta(predict: PredictFn) -> PredictFn:
    """Horizontal-flip test-time augmentation: the mean of predict(faces) and predict(mirrored faces)."""
    def predict_tta(faces: np.ndarray) -> np.ndarray:
        return 0.5 * (predict(faces) + predict(np.ascontiguousarray(faces[:, :, ::-1])))
    return predict_tta


def predict_all(predict: PredictFn, faces: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """Run predict over faces in chunks (bounded memory), returning (N,7)."""
    parts = [predict(faces[i:i + chunk]) for i in range(0, len(faces), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, NUM_CLASSES), np.float32)


def classification_report(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows: true label,
    columns: predicted), classes in EMOTIONS order."""
    labels = np.asarray(labels, dtype=np.int64)
    pred = np.argmax(probs, axis=1)
    if labels.shape != pred.shape:
        raise ValueError(f"{len(labels)} labels for {len(pred)} predictions")
    cm = np.bincount(labels * NUM_CLASSES + pred, minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp),
                   where=(precision + recall) > 0)
    return {
        "n": int(len(labels)),
        "accuracy": float(tp.sum() / max(1, len(labels))),
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(EMOTIONS)},
        "confusion": cm.tolist(),
    }


def evaluate(predict: PredictFn, faces: np.ndarray, labels: np.ndarray, tta: bool = False) -> dict:
    """classification_report of predict (optionally with flip TTA) on labelled uint8 faces (N,48,48)."""
    fn = with_flip_tta(predict) if tta else predict
    return classification_report(labels, predict_all(fn, faces))


def format_report(report: dict, title: str = "") -> str:
    """The report as a text table: per-class metrics, then the confusion matrix."""
    width = max(len(e) for e in EMOTIONS)
    lines = [title] if title else []
    lines.append(f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  (n={report['n']})")
    lines.append(f"{'':{width}}  precision  recall     f1  support")
    for name, m in report["per_class"].items():
        lines.append(f"{name:{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {m['support']:7d}")
    lines.append("")
    lines.append("confusion (rows: true, columns: predicted)")
    lines.append(f"{'':{width}}  " + " ".join(f"{e[:5]:>5}" for e in EMOTIONS))
    for name, row in zip(EMOTIONS, report["confusion"]):
        lines.append(f"{name:{width}}  " + " ".join(f"{v:5d}" for v in row))
    return "\n".join(lines)


def plot_confusion(confusion: list[list[int]], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix as a PNG, with counts in each cell."""
    import matplotlib
    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(NUM_CLASSES), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(NUM_CLASSES), EMOTIONS)
    ax.set_xlabel("predicted"); ax.set_ylabel("true")
    for i in range(NUM_CLASSES):
        for j in range(NUM_CLASSES):
            ax.text(j, i, f"{int(cm[i, j])}\n{rates[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="recall share")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def keras_predict(model) -> PredictFn:
    """PredictFn of an in-memory Keras model (same preprocessing as FacialExpressionModel)."""
    import keras

    from shared.preprocess import to_model_input

    def predict(faces: np.ndarray) -> np.ndarray:
        return keras.ops.convert_to_numpy(model(to_model_input(faces), training=False)).astype(np.float32)
    return predict


def add_cli(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy, per-class metrics and confusion matrix on a split",
                       description="Evaluate an exported model directory (any form) or a training run's "
                                   "best checkpoint (Keras) on one FER2013 split.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="exported model directory (card.json, model_*.tflite, ...)")
    src.add_argument("--run-dir", help="training run directory (config.json, best.weights.h5)")
    p.add_argument("--form", choices=FORMS, default=None,
                   help="which form of a model directory to run (default int8; a run dir is always keras)")
    p.add_argument("--split", default="PrivateTest", choices=["Training", "PublicTest", "PrivateTest"])
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped face")
    p.add_argument("--data", default=None, help="FER2013 CSV, folder or zip (default: the run's data or ../shared)")
    p.add_argument("--weights", default="best", help="run checkpoint: best (best.weights.h5) or a .weights.h5 path")
    p.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads")
    p.add_argument("--out", default=None, help="directory for report.json, report.txt and confusion.png")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(a) -> int:
    from training.data import load_fer2013

    data_path = a.data
    if a.run_dir:
        from training.export import load_run
        if a.form not in (None, "keras"):
            raise SystemExit(f"--form {a.form} needs an exported --model-dir; a --run-dir evaluates Keras "
                             f"(export it first: ferlive export --run-dir {a.run_dir} --out DIR)")
        model, cfg = load_run(a.run_dir, a.weights)
        predict, name, form = keras_predict(model), f"{a.run_dir} ({cfg['model']})", "keras"
        data_path = data_path or cfg.get("data")
    else:
        from shared.model import FacialExpressionModel
        form = a.form or "int8"
        fem = (FacialExpressionModel(a.model_dir, backend="keras") if form == "keras" else
               FacialExpressionModel(a.model_dir, precision=form, num_threads=a.threads))
        predict, name = fem.predict_proba, f"{a.model_dir} ({fem.card.get('name')})"
    from training.ferplus import majority_accuracy, majority_or_none, votes_or_none

    data = load_fer2013(data_path)
    split = data.split(a.split)
    title = f"{name} {form} on {a.split}" + (" with flip TTA" if a.tta else "")
    probs = predict_all(with_flip_tta(predict) if a.tta else predict, split.faces)
    report = classification_report(split.labels, probs)
    text = format_report(report, title)
    majority = majority_or_none(votes_or_none(data_path), data, a.split)
    if majority is not None:  # the second metric: the same predictions against the FER+ crowd majority
        report["ferplus_majority"] = majority_accuracy(probs, majority)
        fp = report["ferplus_majority"]
        text += (f"\nFER+ majority-vote accuracy: {fp['accuracy']:.4f} (n={fp['n']}; {fp['excluded']} faces "
                 f"without a FER+ expression majority left out)")
    print(text)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({"title": title, **report}, indent=2))
        (out / "report.txt").write_text(text + "\n")
        plot_confusion(report["confusion"], out / "confusion.png", title)
        print(f"wrote {out / 'report.json'}, {out / 'report.txt'}, {out / 'confusion.png'}")
    return 0
