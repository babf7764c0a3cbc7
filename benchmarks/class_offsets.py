"""Would per-class offsets on a model's log-probabilities, chosen on PublicTest, raise its accuracy on faces it
was not chosen on? A free change if so (it folds into the last layer's bias). PublicTest is split in halves at
random: the offsets are fitted on one half (coordinate search, maximum accuracy) and scored on the other, for
`--repeats` splits. PrivateTest is never read.

    python benchmarks/class_offsets.py [--model-dir models/vgg_small_mid96_distilled] [--form int8]"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.inference import machine_info  # noqa: E402

GRID = np.linspace(-1.0, 1.0, 41)


def fit_offsets(logp: np.ndarray, labels: np.ndarray, sweeps: int = 3) -> np.ndarray:
    """Per-class offsets (one per column of logp) that maximise accuracy of argmax(logp + offsets), by
    coordinate search over GRID; a class keeps its offset unless another value is strictly better."""
    offsets = np.zeros(logp.shape[1])
    for _ in range(sweeps):
        for c in range(logp.shape[1]):
            best_acc, best = -1.0, offsets[c]
            for g in GRID:
                trial = offsets.copy()
                trial[c] = g
                acc = float(((logp + trial).argmax(1) == labels).mean())
                if acc > best_acc + 1e-12:
                    best_acc, best = acc, g
            offsets[c] = best
    return offsets


def held_out_gains(logp: np.ndarray, labels: np.ndarray, repeats: int = 20, seed: int = 0) -> np.ndarray:
    """Accuracy change on the held-out half, per random split of the rows into halves."""
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(repeats):
        order = rng.permutation(len(labels))
        fit, held = order[: len(order) // 2], order[len(order) // 2:]
        offsets = fit_offsets(logp[fit], labels[fit])
        before = (logp[held].argmax(1) == labels[held]).mean()
        after = ((logp[held] + offsets).argmax(1) == labels[held]).mean()
        gains.append(after - before)
    return np.asarray(gains)


def main(argv: list[str] | None = None) -> int:
    from shared.model import FacialExpressionModel
    from training.data import load_fer2013
    from training.evaluate import predict_all

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default="models/vgg_small_mid96_distilled", help="exported model directory")
    p.add_argument("--form", choices=["float32", "int8"], default="int8")
    p.add_argument("--data", default=None, help="FER2013 CSV, folder or zip (default: ../shared's zip)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)
    public = load_fer2013(a.data).split("PublicTest")
    model = FacialExpressionModel(a.model_dir, precision=a.form, num_threads=os.cpu_count() or 1)
    logp = np.log(predict_all(model.predict_proba, public.faces) + 1e-9)
    gains = held_out_gains(logp, public.labels, a.repeats)
    result = {"benchmark": "class_offsets", "machine": machine_info(), "model_dir": a.model_dir, "form": a.form,
              "faces": len(public.labels), "repeats": a.repeats,
              "held_out_gain_points": {"mean": round(100 * float(gains.mean()), 2),
                                       "sd": round(100 * float(gains.std()), 2),
                                       "min": round(100 * float(gains.min()), 2),
                                       "max": round(100 * float(gains.max()), 2)},
              "offsets_on_all_of_publictest": fit_offsets(logp, public.labels).round(2).tolist()}
    g = result["held_out_gain_points"]
    print(f"{a.model_dir} ({a.form}), {len(public.labels)} PublicTest faces, {a.repeats} random halves: "
          f"offsets fitted on one half change the other half's accuracy by {g['mean']:+.2f} points "
          f"(sd {g['sd']:.2f}, {g['min']:+.2f} to {g['max']:+.2f})")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
