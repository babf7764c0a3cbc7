"""Per-face inference latency of every registered model as float32 and int8 TFLite (ai-edge-litert),
at batch 1 and 16, through `FacialExpressionModel.predict_proba` (preprocessing included), plus the
bundled model when present. Untrained models are exported on the fly: latency does not depend on weights.

    python benchmarks/inference.py --out out/bench/inference.json [--models vgg_lite,tiny_cnn] [--repeats 50]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def machine_info() -> dict:
    """CPU model name, its vector extensions (avx2 / avx512 / vnni: the same code ran 2.6-10x apart on two
    EPYCs that differ in them), core count, load and software versions, to label the numbers."""
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    vector = [f for f in VECTOR_FLAGS if f in flags]
    return {"cpu": cpu, "vector_extensions": vector, "label": f"{cpu} ({'/'.join(vector) or 'no avx2'})",
            "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "load_1min": round(os.getloadavg()[0], 2), "platform": platform.platform(),
            "python": platform.python_version(), "host": platform.node()}


def time_calls(fn, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench_model_dir(model_dir: Path, label: str, batches: list[int], repeats: int, threads: int) -> list[dict]:
    from shared.model import TFLITE_FILES, FacialExpressionModel

    rng = np.random.default_rng(0)
    rows = []
    for precision in ("float32", "int8"):
        if not (model_dir / TFLITE_FILES[precision]).is_file():  # e.g. exported with --no-float32-file
            print(f"{label}: no {TFLITE_FILES[precision]}, {precision} skipped")
            continue
        model = FacialExpressionModel(model_dir, precision=precision, num_threads=threads)
        for batch in batches:
            faces = rng.integers(0, 256, (batch, 48, 48), dtype=np.uint8)
            per_face_ms = [1000 * t / batch for t in time_calls(lambda: model.predict_proba(faces), repeats)]
            rows.append({"model": label, "precision": precision, "batch": batch, "threads": threads,
                         "per_face_ms_median": statistics.median(per_face_ms), "per_face_ms_min": min(per_face_ms),
                         "per_face_ms_max": max(per_face_ms), "repeats": repeats,
                         "file_kb": (model_dir / TFLITE_FILES[precision]).stat().st_size / 1024,
                         "parameters": model.card.get("parameters")})
    return rows


def main(argv: list[str] | None = None) -> int:
    from training.models import MODELS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated registered models")
    p.add_argument("--batches", default="1,16", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per setting")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads")
    p.add_argument("--no-bundled", action="store_true", help="skip the bundled model")
    p.add_argument("--out", default=None, help="JSON file for the results")
    a = p.parse_args(argv)

    from shared.model import CARD, DEFAULT_MODEL_DIR
    from training.export import write_model_dir
    from training.models import create_model

    batches = [int(b) for b in a.batches.split(",")]
    rows: list[dict] = []
    calib = np.random.default_rng(1).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="ferlive-bench-") as tmp:
        for name in a.models.split(","):
            model_dir = Path(tmp) / name
            write_model_dir(create_model(name), model_dir, calib)
            rows += bench_model_dir(model_dir, name, batches, a.repeats, a.threads)
    if not a.no_bundled and (DEFAULT_MODEL_DIR / CARD).is_file():
        card = json.loads((DEFAULT_MODEL_DIR / CARD).read_text())
        rows += bench_model_dir(DEFAULT_MODEL_DIR, f"bundled ({card.get('name')})", batches, a.repeats, a.threads)

    machine = machine_info()
    print(f"\nper-face latency, ms (median [min-max] of {a.repeats}); {machine['cpu']}, {machine['nproc']} CPUs, "
          f"{a.threads} interpreter thread(s)")
    print(f"{'model':24} {'precision':9} {'batch':>5} {'median':>8} {'min':>8} {'max':>8} {'KB':>8}")
    for r in rows:
        print(f"{r['model']:24} {r['precision']:9} {r['batch']:5d} {r['per_face_ms_median']:8.3f} "
              f"{r['per_face_ms_min']:8.3f} {r['per_face_ms_max']:8.3f} {r['file_kb']:8.0f}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"benchmark": "inference", "machine": machine, "results": rows}, indent=2))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
