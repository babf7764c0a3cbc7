"""How long one accuracy pass over a split takes with one interpreter thread and with every core (what
`ferlive export` measures each form with), and whether the probabilities are the same: batch evaluation of a
large model (a teacher's float32 form) is where the threads pay; per-face latency is `inference.py`'s job.

    python benchmarks/eval_threads.py --model-dir runs/gpu/teacher_tflite [--form float32] [--split PublicTest]"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.inference import machine_info  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from shared.model import FacialExpressionModel
    from training.data import load_fer2013
    from training.evaluate import predict_all

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default="shared/bundled_model", help="exported model directory")
    p.add_argument("--form", choices=["float32", "int8"], default="float32")
    p.add_argument("--split", choices=["PublicTest", "PrivateTest"], default="PublicTest")
    p.add_argument("--data", default=None, help="FER2013 CSV, folder or zip (default: ../shared's zip)")
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)
    faces = load_fer2013(a.data).split(a.split).faces
    machine = machine_info()
    rows, probs = [], {}
    for threads in sorted({1, os.cpu_count() or 1}):
        model = FacialExpressionModel(a.model_dir, precision=a.form, num_threads=threads)
        t0 = time.perf_counter()
        probs[threads] = predict_all(model.predict_proba, faces)
        rows.append({"threads": threads, "seconds": round(time.perf_counter() - t0, 1)})
    result = {"benchmark": "eval_threads", "machine": machine, "load_at_end": round(os.getloadavg()[0], 2),
              "model_dir": a.model_dir, "form": a.form, "split": a.split, "faces": len(faces), "rows": rows,
              "max_abs_difference": float(np.abs(probs[1] - probs[max(probs)]).max())}
    print(f"{machine['label']}, {machine['nproc']} CPUs, load {machine['load_1min']} at start, "
          f"{result['load_at_end']} at the end: {a.model_dir} {a.form} on {len(faces)} {a.split} faces")
    for r in rows:
        print(f"  {r['threads']} thread(s): {r['seconds']} s")
    print(f"  largest probability difference between them: {result['max_abs_difference']:.2e}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
