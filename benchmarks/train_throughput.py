"""Training throughput (images/s) of every registered model on this machine's CPU: `model.fit` as in
`ferlive train` (augmentation on, same optimiser and loss), median of several timed epochs with min/max.

    python benchmarks/train_throughput.py --out out/bench/train.json [--models vgg_lite] [--steps 20] [--repeats 5]

`import training` keeps TensorFlow's oneDNN to its AVX2 kernels (training/__init__.py: its AVX-512 ones crash in
mini_xception's backward pass); `ONEDNN_MAX_CPU_ISA=ALL python benchmarks/train_throughput.py ...` times the
AVX-512 kernels for comparison, on the models they do not crash. The setting is printed and kept in the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.inference import machine_info  # noqa: E402


def bench_model(name: str, batch_size: int, steps: int, repeats: int, augment: bool) -> dict:
    import keras

    from shared.preprocess import to_model_input
    from training.augment import AugmentConfig, build_augmentation
    from training.models import MODELS, create_model
    from training.train import make_optimizer

    keras.utils.set_random_seed(0)
    spec = MODELS[name]
    model = create_model(name, augment=build_augmentation(AugmentConfig() if augment else None))
    model.compile(optimizer=make_optimizer(spec.optimizer, spec.lr, 1e-4),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=["accuracy"])
    rng = np.random.default_rng(0)
    n = batch_size * steps
    x = to_model_input(rng.integers(0, 256, (n, 48, 48), dtype=np.uint8))
    y = np.eye(7, dtype=np.float32)[rng.integers(0, 7, n)]
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # builds and traces the step
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)
        rates.append(n / (time.perf_counter() - t0))
    return {"model": name, "batch_size": batch_size, "images_per_epoch": n, "repeats": repeats, "augment": augment,
            "images_per_s_median": statistics.median(rates), "images_per_s_min": min(rates),
            "images_per_s_max": max(rates), "parameters": int(model.count_params())}


def main(argv: list[str] | None = None) -> int:
    from training.models import MODELS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated registered models")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="batches per timed epoch")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per model")
    p.add_argument("--no-augment", action="store_true", help="time the network alone")
    p.add_argument("--out", default=None, help="JSON file for the results")
    a = p.parse_args(argv)

    rows = [bench_model(name, a.batch_size, a.steps, a.repeats, not a.no_augment) for name in a.models.split(",")]
    machine = machine_info()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL"
    print(f"\ntraining images/s (median [min-max] of {a.repeats} epochs of {a.steps}x{a.batch_size}); "
          f"{machine['cpu']}, {machine['nproc']} CPUs, oneDNN ISA at most {isa}")
    print(f"{'model':16} {'params':>9} {'median':>9} {'min':>9} {'max':>9}")
    for r in rows:
        print(f"{r['model']:16} {r['parameters']:9d} {r['images_per_s_median']:9.1f} {r['images_per_s_min']:9.1f} "
              f"{r['images_per_s_max']:9.1f}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"benchmark": "train_throughput", "machine": machine,
                                          "onednn_max_cpu_isa": isa, "results": rows},
                                          indent=2))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
