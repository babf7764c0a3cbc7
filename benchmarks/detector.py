"""Face detector: recall, false boxes and speed on FER2013 faces placed into 640x480 frames, and the crop
framing that makes detector crops look like FER2013 faces (classifier accuracy, pipeline vs original).

    python benchmarks/detector.py --model-dir DIR [--out results.json] [--quick]

Ground truth: a placed face is the whole 48x48 FER2013 image resized to a side of 100-200 px, so its
square box is the FER2013 framing. A placed face is *found* (recall, IoU) when a detector box has IoU >= 0.5
with it; *found (centre)* when the box's centre lies inside the placed box and the placed box's centre
inside the detector box (framing-independent). A detector box is *false* when its centre lies in no
placed box. Speed is wall time of `FaceDetector.detect` per 640x480 frame (2 faces per frame).

Framing (chosen on PublicTest only): for every detected PublicTest face, the placed box relative to the
detector box: side ratio r = placed/detected and centre offset dy = (placed - detected) / detected side.
margin = (median r - 1) / 2, shift_y = median dy. A sweep of margins around it checks the choice by
classifier accuracy. PrivateTest then reports pipeline accuracy (detected -> cropped -> classified) against
the same faces' original 48x48 crops.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.detect.detector import FRAMING, DetectorConfig, FaceDetector, iou_xywh  # noqa: E402
from shared.synthetic import BACKGROUNDS, place_faces  # noqa: E402
from shared.preprocess import crop_face  # noqa: E402

FRAME = (640, 480)
FACE_PX = (100, 200)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, nproc {os.cpu_count()}, load average {load:.1f} at start"


def make_frames(faces: np.ndarray, per_frame: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(frame_bgr, boxes_xywh, face indices) covering every face once, backgrounds cycled."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(faces))
    out = []
    for k, start in enumerate(range(0, len(order), per_frame)):
        idx = order[start:start + per_frame]
        frame, boxes = place_faces(faces[idx], FRAME, FACE_PX, rng, BACKGROUNDS[k % len(BACKGROUNDS)])
        out.append((frame, boxes, idx))
    return out


def match(gt: np.ndarray, det: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per placed box: index of its best detector box by IoU (-1: none) and that IoU; per detector
    box: whether its centre lies in some placed box."""
    if not len(det):
        return np.full(len(gt), -1), np.zeros(len(gt)), np.zeros(0, bool)
    iou = iou_xywh(gt, det)
    best = iou.argmax(1)
    dc = det[:, :2] + det[:, 2:] / 2
    inside = ((dc[None, :, 0] >= gt[:, None, 0]) & (dc[None, :, 0] < gt[:, None, 0] + gt[:, None, 2]) &
              (dc[None, :, 1] >= gt[:, None, 1]) & (dc[None, :, 1] < gt[:, None, 1] + gt[:, None, 3]))
    gc = gt[:, :2] + gt[:, 2:] / 2
    inside_rev = ((gc[:, None, 0] >= det[None, :, 0]) & (gc[:, None, 0] < det[None, :, 0] + det[None, :, 2]) &
                  (gc[:, None, 1] >= det[None, :, 1]) & (gc[:, None, 1] < det[None, :, 1] + det[None, :, 3]))
    centre = inside & inside_rev
    best = np.where(centre.any(1), np.where(centre[np.arange(len(gt)), best], best, centre.argmax(1)), -1)
    best_iou = np.where(best >= 0, iou[np.arange(len(gt)), np.maximum(best, 0)], 0.0)
    return best, best_iou, inside.any(0)


def run_detector(det: FaceDetector, frames, keep: bool = False) -> dict:
    times, n_gt, hit_iou, hit_c, false, false_by_bg, per = [], 0, 0, 0, 0, {b: [0, 0] for b in BACKGROUNDS}, []
    for k, (frame, gt, idx) in enumerate(frames):
        t0 = time.perf_counter()
        d = det.detect(frame)
        times.append(time.perf_counter() - t0)
        best, best_iou, real = match(gt, d.boxes_xywh)
        n_gt += len(gt)
        hit_c += int((best >= 0).sum())
        hit_iou += int((best_iou >= 0.5).sum())
        nf = int((~real).sum())
        false += nf
        bg = BACKGROUNDS[k % len(BACKGROUNDS)]
        false_by_bg[bg][0] += nf
        false_by_bg[bg][1] += 1
        if keep:
            per.append((d, best))
    ms = np.array(times) * 1e3
    out = {"frames": len(frames), "faces": n_gt, "recall_iou50": hit_iou / n_gt, "recall_centre": hit_c / n_gt,
           "false_per_frame": false / len(frames),
           "false_per_frame_by_background": {b: v[0] / max(v[1], 1) for b, v in false_by_bg.items()},
           "ms_median": float(np.median(ms)), "ms_min": float(ms.min()), "ms_max": float(ms.max()),
           "ms_mean": float(ms.mean())}
    if keep:
        out["_per_frame"] = per
    return out


def moving_sequences(faces: np.ndarray, n_seq: int, length: int, seed: int):
    """Sequences of frames with 2 faces drifting up to 3 px/frame (and growing or shrinking a little)."""
    rng = np.random.default_rng(seed)
    seqs = []
    for s in range(n_seq):
        idx = rng.choice(len(faces), 2, replace=False)
        _, boxes = place_faces(faces[idx], FRAME, (110, 160), rng)
        vel = rng.uniform(-3, 3, (2, 2))
        grow = rng.uniform(-0.4, 0.4, 2)
        bg = ("plain", "noise", "cluttered")[s % 3]
        from shared.synthetic import make_background
        background = make_background(FRAME, bg, rng)
        frames = []
        for t in range(length):
            b = boxes.astype(np.float64).copy()
            b[:, 2:] += (grow * t)[:, None]
            b[:, :2] += vel * t
            b[:, 2] = b[:, 3] = np.round(b[:, 2])
            b[:, 0] = np.clip(b[:, 0], 0, FRAME[0] - b[:, 2])
            b[:, 1] = np.clip(b[:, 1], 0, FRAME[1] - b[:, 3])
            if iou_xywh(b[:1], b[1:])[0, 0] > 0 or _touch(b):
                break
            frame, gt = place_faces(faces[idx], FRAME, background=background, boxes_xywh=b.astype(np.int32))
            frames.append((frame, gt, idx))
        seqs.append(frames)
    return seqs


def _touch(b: np.ndarray) -> bool:
    (x0, y0, s0, _), (x1, y1, s1, _) = b
    return x0 < x1 + s1 and x1 < x0 + s0 and y0 < y1 + s1 and y1 < y0 + s0


def run_tracking(cfg: DetectorConfig, seqs) -> dict:
    det = FaceDetector(cfg)
    times, n_gt, hit = [], 0, 0
    for s, frames in enumerate(seqs):
        for frame, gt, _ in frames:
            t0 = time.perf_counter()
            d = det.detect(frame, source_id=f"seq{s}")
            times.append(time.perf_counter() - t0)
            best, best_iou, _ = match(gt, d.boxes_xywh)
            n_gt += len(gt)
            hit += int((best_iou >= 0.5).sum())
    ms = np.array(times) * 1e3
    return {"frames": len(times), "recall_iou50": hit / max(n_gt, 1), "ms_mean": float(ms.mean()),
            "ms_median": float(np.median(ms)), "ms_max": float(ms.max())}


def framing_stats(frames, per) -> dict:
    """Placed box relative to the detector box, over detected faces."""
    r, dx, dy = [], [], []
    for (frame, gt, _), (d, best) in zip(frames, per):
        for g, b in zip(gt, best):
            if b < 0:
                continue
            x, y, w, h = d.boxes_xywh[b].astype(float)
            side = max(w, h)
            r.append(g[2] / side)
            dx.append((g[0] + g[2] / 2 - (x + w / 2)) / side)
            dy.append((g[1] + g[3] / 2 - (y + h / 2)) / side)
    r, dx, dy = np.array(r), np.array(dx), np.array(dy)
    q = lambda a: [float(v) for v in np.percentile(a, [10, 50, 90])]  # noqa: E731
    return {"n": len(r), "ratio_p10_p50_p90": q(r), "dx_p10_p50_p90": q(dx), "dy_p10_p50_p90": q(dy),
            "margin": float((np.median(r) - 1) / 2), "shift_y": float(np.median(dy))}


def crops_and_truth(frames, per, faces, labels, det: FaceDetector):
    """For detected faces: (pipeline crops, original crops, labels, face indices)."""
    import cv2
    crops, orig, lab, ids = [], [], [], []
    for (frame, gt, idx), (d, best) in zip(frames, per):
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        hit = np.flatnonzero(best >= 0)
        if not len(hit):
            continue
        crops.append(det.crops_for(gray, d.boxes_xywh[best[hit]]))
        orig.append(faces[idx[hit]])
        lab.append(labels[idx[hit]])
        ids.append(idx[hit])
    return np.concatenate(crops), np.concatenate(orig), np.concatenate(lab), np.concatenate(ids)


def accuracy_pass(kind_cfg: DetectorConfig, split, model, seed: int, deltas: list[float] | None,
                  framing: tuple[float, float] | None, align: bool) -> dict:
    import cv2
    frames = make_frames(split.faces, 2, seed)
    det0 = FaceDetector(kind_cfg)
    res = run_detector(det0, frames, keep=True)
    per = res.pop("_per_frame")
    out: dict = {"detection": res}
    if framing is None:
        out["framing_stats"] = framing_stats(frames, per)
        framing = (out["framing_stats"]["margin"], out["framing_stats"]["shift_y"])
    orig_all = model.predict_proba(split.faces).argmax(1)
    out["original_accuracy_all"] = float((orig_all == split.labels).mean())
    # the same placed faces cropped at their true box (the 48 -> side -> 48 round trip): the ceiling
    true_crops = []
    for frame, gt, idx in frames:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        true_crops += [crop_face(gray, g) for g in gt]
    true_ids = np.concatenate([idx for _, _, idx in frames])
    tp = model.predict_proba(np.stack(true_crops)).argmax(1)
    out["true_box_accuracy_all"] = float((tp == split.labels[true_ids]).mean())
    rows = []
    cands = [(0.0, 0.0), (framing[0], 0.0)] + [(framing[0] + d, framing[1]) for d in (deltas or [])] + [framing]
    seen = set()
    for m, sy in cands:
        key = (round(m, 4), round(sy, 4))
        if key in seen:
            continue
        seen.add(key)
        det = FaceDetector(dataclasses.replace(kind_cfg, margin=m, shift_y=sy))
        crops, orig, lab, ids = crops_and_truth(frames, per, split.faces, split.labels, det)
        acc = float((model.predict_proba(crops).argmax(1) == lab).mean())
        acc_orig = float((orig_all[ids] == lab).mean())
        rows.append({"margin": key[0], "shift_y": key[1], "n": int(len(lab)), "pipeline_accuracy": acc,
                     "original_accuracy_same_faces": acc_orig, "gap": acc_orig - acc})
    out["framing_sweep"] = rows
    out["framing"] = [float(framing[0]), float(framing[1])]
    if align:
        det = FaceDetector(dataclasses.replace(kind_cfg, margin=framing[0], shift_y=framing[1], align=True))
        hits = n = 0
        for frame, gt, idx in frames:
            d = det.detect(frame)
            best, best_iou, _ = match(gt, d.boxes_xywh)
            ok = np.flatnonzero(best >= 0)
            if len(ok):
                p = model.predict_proba(d.crops[best[ok]]).argmax(1)
                hits += int((p == split.labels[idx[ok]]).sum())
                n += len(ok)
        out["aligned_accuracy"] = {"n": n, "pipeline_accuracy": hits / max(n, 1)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=None, help="exported model directory (default: the bundled model); "
                    "'none' skips the accuracy part")
    ap.add_argument("--data", default=None, help="FER2013 data (default: ../shared zip)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="small subsets (a smoke run)")
    ap.add_argument("--kinds", default="haar,blazeface")
    a = ap.parse_args(argv)
    from training.data import load_fer2013
    fer = load_fer2013(a.data)
    public, private = fer.split("PublicTest"), fer.split("PrivateTest")
    if a.quick:
        public, private = public.subset(np.arange(120)), private.subset(np.arange(120))
    kinds = a.kinds.split(",")
    results: dict = {"machine": machine(), "frame": list(FRAME), "face_px": list(FACE_PX),
                     "command": " ".join(sys.argv)}
    print(f"machine: {results['machine']}")

    # -- detection configs on PublicTest frames ------------------------------------------------
    frames = make_frames(public.faces[:300 if not a.quick else 60], 2, seed=1)
    configs = {"haar default s0.5 min64": DetectorConfig(), "haar default s1.0 min64": DetectorConfig(scale=1.0),
               "haar alt2 s0.5 min64": DetectorConfig(cascade="alt2"),
               "haar default s0.5 min96": DetectorConfig(min_face=96),
               "haar default s0.5 mn3": DetectorConfig(min_neighbors=3),
               "blazeface s0.5": DetectorConfig(kind="blazeface"),
               "blazeface s1.0": DetectorConfig(kind="blazeface", scale=1.0)}
    configs = {k: v for k, v in configs.items() if v.kind in kinds}
    table = {}
    print(f"\n== detection: {len(frames)} frames 640x480, {sum(len(g) for _, g, _ in frames)} PublicTest faces "
          f"({FACE_PX[0]}-{FACE_PX[1]} px), backgrounds {'/'.join(BACKGROUNDS)}")
    print(f"{'config':28s} {'recall@IoU.5':>12s} {'recall(ctr)':>11s} {'false/frame':>11s} {'(clutter)':>9s} "
          f"{'ms med':>7s} {'min':>6s} {'max':>6s}")
    for name, cfg in configs.items():
        r = run_detector(FaceDetector(cfg), frames)
        table[name] = r
        print(f"{name:28s} {r['recall_iou50']:12.3f} {r['recall_centre']:11.3f} {r['false_per_frame']:11.3f} "
              f"{r['false_per_frame_by_background']['cluttered']:9.3f} {r['ms_median']:7.1f} {r['ms_min']:6.1f} "
              f"{r['ms_max']:6.1f}")
    results["detection"] = table

    # -- reuse between detections (moving faces) -------------------------------------------------
    seqs = moving_sequences(public.faces, 6 if not a.quick else 2, 40, seed=2)
    print(f"\n== reuse: {sum(len(s) for s in seqs)} frames in {len(seqs)} sequences of 2 faces drifting <= 3 px/frame")
    print(f"{'config':32s} {'recall@IoU.5':>12s} {'ms mean':>8s} {'ms med':>7s} {'max':>6s}")
    track = {}
    for kind in kinds:
        for n in (1, 5, 10):
            cfg = DetectorConfig(kind=kind, redetect_every=n)
            r = run_tracking(cfg, seqs)
            track[f"{kind} redetect_every={n}"] = r
            print(f"{kind + ' redetect_every=' + str(n):32s} {r['recall_iou50']:12.3f} {r['ms_mean']:8.1f} "
                  f"{r['ms_median']:7.1f} {r['ms_max']:6.1f}")
    results["reuse"] = track

    if a.model_dir != "none":
        from shared.model import FacialExpressionModel
        model = FacialExpressionModel(a.model_dir)
        results["model"] = {"dir": str(model.model_dir), "name": model.card.get("name")}
        acc = {}
        for kind in kinds:
            cfg = DetectorConfig(kind=kind)
            print(f"\n== framing, {kind}: PublicTest ({len(public)} faces, 2 per frame), model {model.card.get('name')}")
            pub = accuracy_pass(cfg, public, model, seed=3, deltas=[-0.1, -0.05, 0.05, 0.1], framing=None,
                                align=True)
            fs = pub["framing_stats"]
            m0, s0 = fs["margin"], fs["shift_y"]
            print(f"placed/detected side ratio p10/50/90 {np.round(fs['ratio_p10_p50_p90'], 3).tolist()}, "
                  f"dx {np.round(fs['dx_p10_p50_p90'], 3).tolist()}, dy {np.round(fs['dy_p10_p50_p90'], 3).tolist()}"
                  f" -> margin {m0:.3f}, shift_y {s0:.3f}")
            print(f"recall@IoU.5 {pub['detection']['recall_iou50']:.3f}; original crops (all) "
                  f"{pub['original_accuracy_all']:.4f}; crop at the true placed box {pub['true_box_accuracy_all']:.4f}")
            print(f"{'margin':>7s} {'shift_y':>7s} {'n':>5s} {'pipeline':>8s} {'original':>8s} {'gap':>6s}")
            for row in pub["framing_sweep"]:
                print(f"{row['margin']:7.3f} {row['shift_y']:7.3f} {row['n']:5d} {row['pipeline_accuracy']:8.4f} "
                      f"{row['original_accuracy_same_faces']:8.4f} {row['gap']:6.4f}")
            best = max(pub["framing_sweep"], key=lambda r: r["pipeline_accuracy"])
            chosen = (m0, s0)
            print(f"aligned (eyes levelled) at margin {m0:.3f}: {pub['aligned_accuracy']['pipeline_accuracy']:.4f}; "
                  f"best sweep row margin {best['margin']}; chosen (median mapping) margin {m0:.3f}, shift_y {s0:.3f}")
            priv = accuracy_pass(cfg, private, model, seed=4, deltas=None, framing=chosen, align=False)
            row = priv["framing_sweep"][-1]
            print(f"PrivateTest ({len(private)} faces): recall@IoU.5 {priv['detection']['recall_iou50']:.3f}, "
                  f"pipeline {row['pipeline_accuracy']:.4f} vs original {row['original_accuracy_same_faces']:.4f} "
                  f"on the same {row['n']} detected faces (gap {row['gap'] * 100:.2f} points); original, all faces "
                  f"{priv['original_accuracy_all']:.4f}")
            acc[kind] = {"PublicTest": pub, "PrivateTest": priv, "chosen_framing": list(chosen),
                         "framing_in_code": list(FRAMING[kind])}
        results["accuracy"] = acc
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2, default=float))
        print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
