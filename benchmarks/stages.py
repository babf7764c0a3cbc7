"""Where a network's int8 time goes: each registered model cut after each of its stages (a global average pool and
a 7-way softmax put on the cut so it exports like a model), timed at batch 1 like `inference.py`, with the `fer`
classifier timed in the same run. The difference between consecutive cuts is that stage's time.

    python benchmarks/stages.py --isa avx2 --models vgg_small_mid96,vgg_small_s2d --out benchmarks/results/stages_avx2.json

Cuts are the layers named `s<k>_pool` (the end of stage k of the vgg_lite family; a stem without a pool is cut
after its conv), the last conv's ReLU and the full model. Untrained weights: latency does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def cut_names(model) -> list[str]:
    """The layers to cut after: each stage's pool, the last ReLU, and the output."""
    names = [layer.name for layer in model.layers]
    cuts = [n for n in names if n.endswith("_pool") and n[0] == "s"]
    if "s1_pool" not in cuts:  # a stem without a pool (space-to-depth): cut after its conv
        cuts = [n for n in names if n.startswith("s1c") and n.endswith("_relu")][-1:] + cuts
    relus = [n for n in names if n.endswith("_relu")]
    return cuts + relus[-1:] + [names[-1]]


def truncated(model, layer: str):
    import keras
    from keras import layers

    out = model.get_layer(layer).output
    if layer != model.layers[-1].name:
        out = layers.Dense(7, activation="softmax", name="cut_probs")(layers.GlobalAveragePooling2D(name="cut_gap")(out))
    return keras.Model(model.input, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="vgg_small_mid96,vgg_small_s2d", help="comma-separated registered models")
    p.add_argument("--repeats", type=int, default=400)
    p.add_argument("--isa", choices=["native", "avx2"], default="native")
    p.add_argument("--out", default=None, help="JSON file for the results")
    a = p.parse_args(argv)
    masked = None
    if a.isa != "native":  # before anything creates an interpreter
        from benchmarks.isa_mask import mask_isa
        masked = mask_isa(a.isa)

    from benchmarks.inference import DEFAULT_REFERENCE, bench_reference, machine_info, time_calls
    from shared.model import FacialExpressionModel
    from training.export import write_model_dir
    from training.models import create_model

    calib = np.random.default_rng(1).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    face = calib[:1]
    ref_ms = bench_reference(DEFAULT_REFERENCE, 300, 1)["per_face_ms_median"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ferlive-stages-") as tmp:
        for name in filter(None, a.models.split(",")):
            model = create_model(name)
            for cut in cut_names(model):
                d = Path(tmp) / f"{name}_{cut}"
                write_model_dir(truncated(model, cut), d, calib)
                m = FacialExpressionModel(d, precision="int8", num_threads=1)
                ms = statistics.median(1000 * t for t in time_calls(lambda: m.predict_proba(face), a.repeats, 20))
                rows.append({"model": name, "cut_after": cut, "int8_ms_median": ms})
    ref_after = bench_reference(DEFAULT_REFERENCE, 300, 1)["per_face_ms_median"]
    ref = 0.5 * (ref_ms + ref_after)
    machine = machine_info()
    machine["kernels"] = "native" if masked is None else masked
    print(f"{machine['label']}{'' if masked is None else ' with AVX2 kernels'}; one thread, batch 1; "
          f"fer {ref:.3f} ms; load {os.getloadavg()[0]:.1f}")
    print(f"{'model':18} {'cut after':12} {'ms':>7} {'x fer':>6} {'stage ms':>9}")
    prev = {}
    for r in rows:
        r["ratio_to_reference"] = r["int8_ms_median"] / ref
        r["stage_ms"] = r["int8_ms_median"] - prev.get(r["model"], 0.0)
        prev[r["model"]] = r["int8_ms_median"]
        print(f"{r['model']:18} {r['cut_after']:12} {r['int8_ms_median']:7.3f} {r['ratio_to_reference']:6.2f} "
              f"{r['stage_ms']:9.3f}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"benchmark": "stages", "machine": machine, "reference_ms": ref,
                                           "load_at_end": os.getloadavg()[0], "results": rows}, indent=2))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
