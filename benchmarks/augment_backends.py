"""Train-step time of each augmentation layer on each Keras backend: why the GPU route augments ahead.

    python benchmarks/augment_backends.py --backends jax tensorflow --model tiny_cnn --out benchmarks/results/augment_backends.json

For every backend (a subprocess each: Keras picks its backend at import) and every augmentation variant (none,
each layer alone, all of them as `ferlive train` uses them), fit --model on random 48x48 faces with batch
--batch and report the median ms per train step over --repeats timed epochs (after one epoch of compiling), and
the ratio to the same backend's step without augmentation. Measured on a 2-core EPYC (results/augment_backends.json,
two training runs beside it): a tiny_cnn step with the affine layers (rotation, zoom, shift) takes 3.4-4.0x as long
as without on JAX, 1.35-1.46x on TensorFlow; with all of them 7.3x against 2.1x (docs/gpu.md)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

VARIANTS = ("none", "flip", "rotation", "zoom", "shift", "contrast", "brightness", "erasing", "all")


def variant_config(name: str):
    from training.augment import AugmentConfig

    off = AugmentConfig(flip=False, rotation=0, zoom=0, shift=0, contrast=0, brightness=0, erasing=0)
    return {"none": None, "flip": replace(off, flip=True), "rotation": replace(off, rotation=10 / 360),
            "zoom": replace(off, zoom=0.1), "shift": replace(off, shift=0.1), "contrast": replace(off, contrast=0.2),
            "brightness": replace(off, brightness=0.15), "erasing": replace(off, erasing=0.25),
            "all": AugmentConfig(erasing=0.25)}[name]


def measure(model_name: str, batch: int, steps: int, repeats: int) -> dict:
    """In this process's backend: {variant: median ms/step}."""
    import numpy as np
    import keras

    from training.augment import build_augmentation
    from training.models import create_model

    rng = np.random.default_rng(0)
    x = rng.random((batch * steps, 48, 48, 1), dtype=np.float32)
    y = np.eye(7, dtype=np.float32)[rng.integers(0, 7, batch * steps)]
    out = {}
    for name in VARIANTS:
        model = create_model(model_name, augment=build_augmentation(variant_config(name)))
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # compiling
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
            times.append(1000 * (time.perf_counter() - t) / steps)
        out[name] = statistics.median(times)
        print(f"  {keras.backend.backend():10s} {name:10s} {out[name]:7.1f} ms/step", file=sys.stderr, flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=["jax", "tensorflow"])
    p.add_argument("--model", default="tiny_cnn")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(a.model, a.batch, a.steps, a.repeats)))
        return 0
    from inference import machine_info

    result = {"machine": machine_info(), "model": a.model, "batch": a.batch, "steps": a.steps, "repeats": a.repeats,
              "backends": {}}
    for backend in a.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run([sys.executable, __file__, "--child", "--model", a.model, "--batch", str(a.batch),
                               "--steps", str(a.steps), "--repeats", str(a.repeats)], env=env, capture_output=True,
                              text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        ms = json.loads(proc.stdout.strip().splitlines()[-1])
        result["backends"][backend] = {v: {"ms_per_step": round(ms[v], 2), "x_none": round(ms[v] / ms["none"], 2)}
                                       for v in VARIANTS}
    print(f"{result['machine']['label']}, load {result['machine']['load_1min']}; {a.model}, batch {a.batch}")
    print(f"{'variant':10s} " + " ".join(f"{b + ' ms (x none)':>24s}" for b in a.backends))
    for v in VARIANTS:
        print(f"{v:10s} " + " ".join(f"{result['backends'][b][v]['ms_per_step']:14.1f} ({result['backends'][b][v]['x_none']:5.2f}x)"
                                     for b in a.backends))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
