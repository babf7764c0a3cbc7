"""Face detectors on realistic frames: recall, false boxes and speed per kind; FER2013 framing and landmark
template; and what face registration does to the model's accuracy on turned faces.

    python benchmarks/detector.py [--model-dir DIR|none] [--out results.json] [--quick]

Scenes (640x480, one thread, cv2.setNumThreads(1)):
- ``people``: matplotlib's sample photo of Grace Hopper with her context (cap, hair, shoulders, flag), 1-2
  copies per frame at face sides 60-180 px, turned by -25..25 degrees, mirrored and relit at random, on
  textured (fractal noise + gratings) or cluttered (shapes, lines, text) backgrounds.
  ``people_upright``: the same within -5..5 degrees.
- ``fer_textured``: FER2013 PublicTest faces (100-200 px, 2 per frame) on textured / cluttered / noise.
- ``fer_flat``: the same faces on flat gray (the figures this benchmark used to report).
- ``empty``: textured / cluttered / noise frames without a face (false boxes only).
A face is *found* when a detector's framed box has IoU >= 0.5 with the true FER2013-framed square; a box
whose centre lies in no true box is *false*. ``find`` ms is detection alone; ``detect`` ms adds framing,
landmark refinement (yunet) and the 48x48 crops: what the detect stage spends per frame.

Framing (PublicTest only): the median placed-box / detector-box mapping over detected FER2013 faces.
Template (Training only): YuNet's median landmarks in 48x48 FER2013 coordinates (shared.registration).
Registration (choice on PublicTest, then PrivateTest once): the bundled model's accuracy on faces placed
upright or turned by 10-25 degrees either way, cropped three ways from the same detections: the framed box,
registered with YuNet's first-pass or refined landmarks, and turned about the box centre so the eyes are
level (refined landmarks); plus the crop at the true box and the original 48x48 crops, for reference.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.inference import machine_info  # noqa: E402
from shared.detector import FRAMING, DetectorConfig, FaceDetector, frame_boxes, iou_xywh  # noqa: E402
from shared.preprocess import crop_face  # noqa: E402
from shared.registration import FER_TEMPLATE, level_face, register_face  # noqa: E402
from shared.synthetic import make_background, person_scene, place_faces  # noqa: E402

FRAME = (640, 480)
FACE_PX = (100, 200)


# ------------------------------------------------------------------------------------------ scenes
def fer_frames(faces: np.ndarray, backgrounds: tuple[str, ...], seed: int, per_frame: int = 2):
    """(frame, true boxes, face indices) covering every face once."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(faces))
    out = []
    for k, start in enumerate(range(0, len(order), per_frame)):
        idx = order[start:start + per_frame]
        frame, boxes = place_faces(faces[idx], FRAME, FACE_PX, rng, backgrounds[k % len(backgrounds)])
        out.append((frame, boxes, idx))
    return out


def people_frames(n: int, angle: tuple[float, float], seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        frame, boxes = person_scene(FRAME, people=1 + k % 2, face_px=(60, 180), angle_deg=angle,
                                    background=("textured", "cluttered")[k // 2 % 2], rng=rng)
        out.append((frame, boxes, None))
    return out


def empty_frames(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [(make_background(FRAME, ("textured", "cluttered", "noise")[k % 3], rng), np.zeros((0, 4), np.int32), None)
            for k in range(n)]


# ------------------------------------------------------------------------------------------ detection
def match(gt: np.ndarray, det: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per true box: best IoU with a detector box; per detector box: whether its centre is in a true box."""
    if not len(det):
        return np.zeros(len(gt)), np.zeros(0, bool)
    if not len(gt):
        return np.zeros(0), np.zeros(len(det), bool)
    iou = iou_xywh(gt, det)
    dc = det[:, :2] + det[:, 2:] / 2
    inside = ((dc[None, :, 0] >= gt[:, None, 0]) & (dc[None, :, 0] < gt[:, None, 0] + gt[:, None, 2]) &
              (dc[None, :, 1] >= gt[:, None, 1]) & (dc[None, :, 1] < gt[:, None, 1] + gt[:, None, 3]))
    return iou.max(1), inside.any(0)


def run_detector(det: FaceDetector, frames) -> dict:
    t_find, t_detect, n_gt, hit, false = [], [], 0, 0, 0
    for frame, gt, _ in frames:
        t0 = time.perf_counter()
        det.find(frame)
        t1 = time.perf_counter()
        d = det.detect(frame)
        t2 = time.perf_counter()
        t_find.append(t1 - t0)
        t_detect.append(t2 - t1)
        best, real = match(gt, d.boxes_xywh)
        n_gt += len(gt)
        hit += int((best >= 0.5).sum())
        false += int((~real).sum())
    f, d_ = np.array(t_find) * 1e3, np.array(t_detect) * 1e3
    return {"frames": len(frames), "faces": n_gt, "recall_iou50": hit / n_gt if n_gt else None,
            "false_per_frame": false / len(frames), "find_ms_median": float(np.median(f)),
            "detect_ms_median": float(np.median(d_)), "detect_ms_p90": float(np.percentile(d_, 90))}


# ------------------------------------------------------------------------------------------ framing, template
def framing_stats(det: FaceDetector, frames) -> dict:
    """Placed box relative to the raw detector box (median over detected faces): margin and shift_y."""
    r, dy = [], []
    for frame, gt, _ in frames:
        raw, _, _ = det.find(frame)
        if not len(raw):
            continue
        for g in gt:
            c = raw[:, :2] + raw[:, 2:] / 2
            k = int(np.argmin(np.abs(c - (g[:2] + g[2:] / 2)).sum(1)))
            if np.abs(c[k] - (g[:2] + g[2:] / 2)).max() > g[2] / 2:
                continue
            x, y, w, h = raw[k]
            side = max(w, h)
            r.append(g[2] / side)
            dy.append((g[1] + g[3] / 2 - (y + h / 2)) / side)
    return {"n": len(r), "margin": float((np.median(r) - 1) / 2), "shift_y": float(np.median(dy)),
            "ratio_p10_p50_p90": [float(v) for v in np.percentile(r, [10, 50, 90])]}


def template_stats(faces: np.ndarray, seed: int) -> dict:
    """YuNet's first-pass landmarks of FER2013 faces placed at 100-200 px, in 48x48 pixel coordinates."""
    det = FaceDetector(DetectorConfig(kind="yunet", min_score=0.5))
    rng = np.random.default_rng(seed)
    pts = []
    for face in faces:
        s = int(rng.integers(100, 201))
        x, y = int(rng.integers(0, FRAME[0] - s)), int(rng.integers(0, FRAME[1] - s))
        frame, _ = place_faces([face], FRAME, boxes_xywh=np.array([[x, y, s, s]]), rng=rng, background="noise")
        raw, lm, _ = det.find(frame)
        c = raw[:, :2] + raw[:, 2:] / 2
        ok = np.flatnonzero(np.abs(c - [x + s / 2, y + s / 2]).max(1) < s / 2)
        if len(ok):
            pts.append((lm[ok[0]] - [x, y] + 0.5) * 48 / s - 0.5)  # pixel centres at integers
    med = np.median(np.array(pts), 0)
    return {"n": len(pts), "faces": len(faces), "median_xy": med.round(2).tolist(), "in_code": FER_TEMPLATE.tolist()}


# ------------------------------------------------------------------------------------------ registration
def turned_frames(faces: np.ndarray, angles: str, seed: int):
    """One face per frame at 100-180 px on textured/cluttered/noise, upright or turned by +-10..25 degrees
    about its centre; the true box is the upright face's square."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(faces)):
        bg = make_background(FRAME, ("textured", "cluttered", "noise")[i % 3], rng)
        s = int(rng.integers(100, 181))
        x, y = int(rng.integers(60, FRAME[0] - s - 60)), int(rng.integers(50, FRAME[1] - s - 50))
        frame, gt = place_faces(faces[i:i + 1], FRAME, background=bg, boxes_xywh=np.array([[x, y, s, s]]))
        a = 0.0 if angles == "upright" else float(rng.uniform(10, 25) * rng.choice([-1, 1]))
        if a:
            m = cv2.getRotationMatrix2D((x + s / 2, y + s / 2), a, 1.0)
            turned = cv2.warpAffine(frame, m, FRAME, flags=cv2.INTER_LINEAR)
            mask = cv2.warpAffine(np.full(frame.shape[:2], 255, np.uint8), m, FRAME)
            frame = np.where(mask[:, :, None] > 127, turned, bg)
            frame[y:y + s, x:x + s] = np.where(mask[y:y + s, x:x + s, None] > 127, turned[y:y + s, x:x + s],
                                               frame[y:y + s, x:x + s])
        out.append((frame, gt, np.array([i])))
    return out


def registration_pass(split, model, angles: str, seed: int) -> dict:
    """Accuracy of the model on the same detected faces cropped five ways."""
    det = FaceDetector(DetectorConfig(kind="yunet"))
    frames = turned_frames(split.faces, angles, seed)
    crops: dict[str, list] = {"true_box": [], "framed_box": [], "registered_first_pass": [],
                              "registered_refined": [], "levelled_refined": []}
    labels, ids = [], []
    margin, shift_y = det.config.framing
    for frame, gt, idx in frames:
        raw, lm, _ = det.find(frame)
        if not len(raw):
            continue
        framed = frame_boxes(raw, margin, shift_y)
        iou = iou_xywh(gt, framed)[0]
        k = int(np.argmax(iou))
        if iou[k] < 0.3:
            continue
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        crops["true_box"].append(crop_face(gray, gt[0]))  # the placed square (for turned faces: turned)
        x, y, w, h = framed[k]
        crops["framed_box"].append(crop_face(gray, (int(round(x)), int(round(y)), int(round(w)), int(round(h)))))
        crops["registered_first_pass"].append(register_face(gray, lm[k]))
        refined = det.refine_landmarks(frame, raw[k], lm[k])
        crops["registered_refined"].append(register_face(gray, refined))
        crops["levelled_refined"].append(level_face(gray, framed[k], refined))
        labels.append(split.labels[idx[0]])
        ids.append(idx[0])
    labels, ids = np.array(labels), np.array(ids)
    out = {"angles": angles, "faces": len(frames), "detected": len(labels)}
    right = {name: model.predict_proba(np.stack(c)).argmax(1) == labels for name, c in crops.items()}
    for name, ok in right.items():
        out[name] = float(ok.mean())
    # paired against the framed box (same faces): difference and its 95% interval (normal approximation)
    n = len(labels)
    for name, ok in right.items():
        b, c = int((ok & ~right["framed_box"]).sum()), int((~ok & right["framed_box"]).sum())
        se = np.sqrt(max(b + c - (b - c) ** 2 / n, 0)) / n
        out[f"{name}_minus_framed_box"] = [round((b - c) / n, 4), round(1.96 * se, 4)]
    out["original_crops_same_faces"] = float((model.predict_proba(split.faces[ids]).argmax(1) == labels).mean())
    return out


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=None, help="exported model directory (default: the bundled model); "
                    "'none' skips the accuracy part")
    ap.add_argument("--data", default=None, help="FER2013 data (default: ../shared zip)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="small subsets (a smoke run)")
    ap.add_argument("--faces", type=int, default=800, help="FER2013 faces per split for registration")
    ap.add_argument("--parts", default="detection,speed,framing,registration",
                    help="comma-separated parts to run: detection, speed (needs detection), framing (and "
                         "template), registration")
    a = ap.parse_args(argv)
    cv2.setNumThreads(1)
    from training.data import load_fer2013
    fer = load_fer2013(a.data)
    # the splits are stored class by class: shuffle once so every slice below mixes all seven classes
    public, private, training = (s.subset(np.random.default_rng(k).permutation(len(s))) for k, s in
                                 enumerate(fer.split(n) for n in ("PublicTest", "PrivateTest", "Training")))
    q = a.quick
    results: dict = {"benchmark": "detector", "machine": machine_info(), "threads": 1, "frame": list(FRAME),
                     "command": " ".join(["python"] + sys.argv)}
    print(f"machine: {results['machine']['label']}, {results['machine']['nproc']} CPUs, "
          f"load {results['machine']['load_1min']}")

    parts = set(a.parts.split(","))
    scenes = {} if not parts & {"detection", "speed"} else {"people": people_frames(20 if q else 120, (-25, 25), seed=11),
              "people_upright": people_frames(10 if q else 60, (-5, 5), seed=12),
              "fer_textured": fer_frames(public.faces[:40 if q else 240], ("textured", "cluttered", "noise"), seed=1),
              "fer_flat": fer_frames(public.faces[240:280 if q else 480], ("plain",), seed=2),
              "empty": empty_frames(15 if q else 120, seed=3)}
    configs = {} if not parts & {"detection", "speed"} else {"yunet (default)": DetectorConfig(),
               "yunet, register=level": DetectorConfig(register="level"),
               "yunet score 0.5": DetectorConfig(min_score=0.5),
               "yunet score 0.9": DetectorConfig(min_score=0.9),
               "yunet 640 px": DetectorConfig(detect_side=640),
               "haar (320 px)": DetectorConfig(kind="haar"),
               "blazeface (320 px)": DetectorConfig(kind="blazeface")}
    table: dict = {}
    print(f"\n== detection (recall at IoU >= 0.5 of the framed box / false boxes per frame / ms median)")
    print(f"{'config':24s} " + " ".join(f"{s:>24s}" for s in scenes) + f" {'find ms':>8s} {'detect ms':>9s}")
    for name, cfg in configs.items() if "detection" in parts else ():
        try:
            det = FaceDetector(cfg)
        except ModuleNotFoundError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        row = {s: run_detector(det, frames) for s, frames in scenes.items()}
        table[name] = row
        cells = [(f"{r['recall_iou50']:.3f}" if r["recall_iou50"] is not None else "-") + f" / {r['false_per_frame']:.3f}"
                 for r in row.values()]
        p = row["people"]
        print(f"{name:24s} " + " ".join(f"{c:>24s}" for c in cells)
              + f" {p['find_ms_median']:8.1f} {p['detect_ms_median']:9.1f}")
    results["detection"] = table

    if "speed" in parts:
        # timing alone, interleaved: every round times each config on the same frames, so load that comes
        # and goes (a shared machine) hits all configs alike; medians of the round medians, and ratios
        frames = scenes["people"][:40] + scenes["fer_textured"][:20] + scenes["empty"][:20]
        dets = {}
        for name, cfg in configs.items():
            try:
                dets[name] = FaceDetector(cfg)
            except ModuleNotFoundError:
                continue
        rounds: dict[str, list[float]] = {name: [] for name in dets}
        cpu: dict[str, list[float]] = {name: [] for name in dets}
        for _ in range(3 if q else 7):
            for name, det in dets.items():
                ts, cs = [], []
                for frame, _, _ in frames:
                    t0, c0 = time.perf_counter(), time.thread_time()
                    det.detect(frame)
                    ts.append(time.perf_counter() - t0)
                    cs.append(time.thread_time() - c0)
                rounds[name].append(float(np.median(ts)) * 1e3)
                cpu[name].append(float(np.median(cs)) * 1e3)
        base = float(np.median(rounds["yunet (default)"]))
        speed = {name: {"detect_ms_median": float(np.median(r)), "detect_ms_min_round": float(min(r)),
                        "cpu_ms_median": float(np.median(cpu[name])),
                        "x_yunet_default": float(np.median(r)) / base, "rounds": r} for name, r in rounds.items()}
        results["speed"] = {"frames": len(frames), "what": "FaceDetector.detect per 640x480 frame (40 people, "
                            "20 fer_textured, 20 empty frames), median per round, median over rounds; wall and "
                            "thread CPU time (one thread: CPU time is what one core spends, whatever the load)",
                            **speed}
        print(f"\n== speed ({len(frames)} frames x {len(rounds['yunet (default)'])} interleaved rounds): "
              "wall ms per frame, median of round medians [best round], x yunet default; CPU ms per frame")
        for name, r in speed.items():
            print(f"{name:24s} {r['detect_ms_median']:7.2f} [{r['detect_ms_min_round']:.2f}] {r['x_yunet_default']:6.2f}x "
                  f"{r['cpu_ms_median']:7.2f}")
    results["scenes"] = {s: {"frames": len(f), "faces": int(sum(len(g) for _, g, _ in f))} for s, f in scenes.items()}

    print("\n== framing on PublicTest (FER2013 faces on flat and noise backgrounds)")
    fr_frames = fer_frames(public.faces[480:600 if q else 1480], ("plain", "noise"), seed=4)
    framing = {}
    for kind in ("yunet", "haar", "blazeface") if "framing" in parts else ():
        try:
            fs = framing_stats(FaceDetector(DetectorConfig(kind=kind)), fr_frames)
        except ModuleNotFoundError:
            continue
        fs["in_code"] = list(FRAMING[kind])
        framing[kind] = fs
        print(f"{kind:10s} n={fs['n']:5d} margin {fs['margin']:+.3f} shift_y {fs['shift_y']:+.3f} "
              f"(in code {FRAMING[kind][0]:+.3f} {FRAMING[kind][1]:+.3f})")
    results["framing"] = framing
    if "framing" in parts:
        tpl = template_stats(training.faces[:200 if q else 1500], seed=5)
        results["template"] = tpl
        print(f"\n== template (Training, n={tpl['n']}): {tpl['median_xy']}")

    if a.model_dir != "none" and "registration" in parts:
        from shared.model import FacialExpressionModel
        model = FacialExpressionModel(a.model_dir)
        results["model"] = {"dir": str(model.model_dir), "name": model.card.get("name")}
        n = 60 if q else a.faces
        reg = {}
        print(f"\n== registration: model {model.card.get('name')}, accuracy on the same detected faces")
        print(f"{'split':12s} {'angles':8s} {'found':>9s} {'true box':>8s} {'framed box':>10s} {'reg first':>9s} "
              f"{'reg refined':>11s} {'levelled':>8s} {'original':>8s}")
        for split_name, split, seed in (("PublicTest", public, 6), ("PrivateTest", private, 7)):
            sub = split.subset(np.arange(min(n, len(split))))
            for angles in ("upright", "turned"):
                r = registration_pass(sub, model, angles, seed + (angles == "turned") * 100)
                reg[f"{split_name} {angles}"] = r
                print(f"{split_name:12s} {angles:8s} {r['detected']:4d}/{r['faces']:4d} {r['true_box']:8.4f} "
                      f"{r['framed_box']:10.4f} "
                      f"{r['registered_first_pass']:9.4f} {r['registered_refined']:11.4f} {r['levelled_refined']:8.4f} "
                      f"{r['original_crops_same_faces']:8.4f}")
        results["registration"] = reg
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2, default=float))
        print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
