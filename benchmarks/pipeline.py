"""Pipeline benchmark: per-stage latency and capture-to-output p50/p95/p99 from message stamps, end-to-end
frames/s at 640x480 with 1 and 4 faces, throughput with 1, 2, 4 classify workers, and the same steps in
one process (no ZeroMQ) so the bus's cost is visible.

    python benchmarks/pipeline.py                        # full run (~2 min; wants an idle machine)
    python benchmarks/pipeline.py --seconds 3 --workers 1 2 --faces 1   # a quick check
    python benchmarks/pipeline.py --model-dir runs/x/model --json out.json
    python benchmarks/pipeline.py --classify-ms-per-face 12 --faces 1 4 --workers 1 --no-single   # classify slow

``--classify-ms-per-face`` runs the workers as ``benchmarks/slow_stage.py classify`` (the real worker plus a sleep
per face), so classify is the slow stage on any machine; ``--env KEY=VALUE`` passes settings to every stage
(e.g. ``--env FERLIVE_FACES_HWM=4 --env FERLIVE_MAX_LAG_MS=0`` to see the queue that forms without the
bounds). Each pipeline step reports capture -> web p50/p95 in its first and last quarter: flat means equal.
    python benchmarks/pipeline.py --scenes people       # only the realistic frames

Scenes (640x480, played from a looping video file by the real capture process):
- ``people`` (realistic): 1 or 4 copies of matplotlib's sample photo of a person with context (cap, hair,
  shoulders, flag), faces 70-120 px, turned by up to 20 degrees, on textured / cluttered backgrounds,
  a new scene every frame (shared.synthetic.person_scene).
- ``moving``: the same person, 1 or 4 copies moving smoothly across a cluttered background for 150 frames (5 s),
  turning and passing in front of one another (benchmarks/redetect.py): a video, where the detect stage's
  search near the last boxes (FERLIVE_DETECTOR_REDETECT_EVERY) can work.
- ``flat``: real FER2013 faces (the sample CSV beside the checkout) upscaled to 120 px on a flat, faintly
  noisy gray (the figures this benchmark used to report). "latency" steps run capture at --fps (30);
"throughput" steps run it unthrottled and count annotated frames/s at the output. Stamps use
time.time(), so every number is comparable across processes of one machine.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inference import machine_info  # noqa: E402
from shared import bus  # noqa: E402
from shared.config import Config  # noqa: E402
from shared.messages import decode, latencies  # noqa: E402

SAMPLE_CSV = ROOT.parent / "shared" / "datasets" / "fer2013" / "fer2013-sample.csv"
STAGES = ("capture", "detect", "classify", "annotate")


# ----------------------------------------------------------------------------------------- inputs
def make_frames(n_faces: int, scene: str = "people", n_frames: int = 60, size: int = 120) -> list[np.ndarray]:
    """640x480 BGR frames, each with ``n_faces`` faces: people with context on textured/cluttered
    backgrounds (scene "people", a new scene every frame; "moving", a video of them moving), or FER2013 faces
    (size px) on a flat, faintly noisy gray ("flat")."""
    if scene == "people":
        from shared.synthetic import person_scene
        rng = np.random.default_rng(0)
        return [person_scene((640, 480), n_faces, (70, 120) if n_faces > 1 else (90, 150), (-20, 20),
                             ("textured", "cluttered")[i % 2], rng)[0] for i in range(n_frames)]
    if scene == "moving":
        from benchmarks.redetect import moving_people
        return [f for f, _, _ in moving_people(max(n_frames, 150), n_faces, background="cluttered", come_and_go=False)]
    if scene != "flat":
        raise ValueError(f"unknown scene {scene!r}: use people, moving or flat")
    from training.data import load_fer2013  # numpy + cv2 only
    faces = load_fer2013(SAMPLE_CSV).faces
    rng = np.random.default_rng(0)
    slots = [(40, 40), (340, 40), (40, 280), (340, 280)]
    frames = []
    for i in range(n_frames):
        frame = (np.full((480, 640, 3), 110, np.uint8) + rng.integers(0, 8, (480, 640, 1), dtype=np.uint8))
        for k in range(n_faces):
            face = cv2.resize(faces[(i * 4 + k) % len(faces)], (size, size), interpolation=cv2.INTER_CUBIC)
            x, y = slots[k][0] + (i % 20) * 3, slots[k][1] + (i % 10) * 2
            frame[y:y + size, x:x + size] = face[..., None]
        frames.append(frame)
    return frames


def write_video(frames: list[np.ndarray], path: Path) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    for f in frames:
        w.write(f)
    w.release()
    return path


def pct(xs, qs=(50, 95, 99)) -> dict[str, float]:
    xs = np.asarray(xs, np.float64)
    return {f"p{q}": round(float(np.percentile(xs, q)), 2) for q in qs} if len(xs) else {}


# ----------------------------------------------------------------------------------------- multi-process
def run_pipeline(video: Path, model_dir: str, workers: int, fps: float, seconds: float, warmup: float = 2.0,
                 classify_ms_per_face: float = 0.0, extra_env: dict | None = None, detect_workers: int = 1,
                 detect_ms_per_frame: float = 0.0, sources: int = 1, source: str = "") -> dict:
    """Start the four stages (+ workers) on ``video`` (or ``source``, e.g. "demo"; ``sources`` copies of it,
    each its own source, in one capture), subscribe like the web, measure for ``seconds``."""
    d = tempfile.mkdtemp(prefix="flbench", dir="/tmp")
    names = ("frames", "web_frames", "detections", "faces", "predictions", "annotated", "heartbeat")
    cfg = Config(**{f"{n}_endpoint": f"ipc://{d}/{n}" for n in names}, model_dir=model_dir, fps=fps,
                 source=",".join([source or str(video)] * sources), loop=True, heartbeat_interval=0.5)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.update({"FERLIVE_" + k.upper(): str(v) for k, v in vars(cfg).items()})
    env.update(extra_env or {})
    env["FERLIVE_BENCH_CLASSIFY_MS_PER_FACE"] = str(classify_ms_per_face)
    env["FERLIVE_BENCH_DETECT_MS_PER_FRAME"] = str(detect_ms_per_frame)
    ctx = zmq.Context()
    sub = bus.annotated_sub(cfg, ctx, hwm=1000)
    hbs = bus.heartbeat_sub(cfg, ctx)
    cmds = [["annotate"]] + [["classify"]] * workers + [["detect"]] * detect_workers

    def argv(stage: str) -> list[str]:
        if (stage == "classify" and classify_ms_per_face > 0) or (stage == "detect" and detect_ms_per_frame > 0):
            return [sys.executable, str(ROOT / "benchmarks" / "slow_stage.py"), stage]
        return [sys.executable, "-m", f"services.{stage}"]
    procs = [subprocess.Popen(argv(c[0]), cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=open(f"{d}/{c[0]}.log", "ab")) for c in cmds]
    up: set[tuple[str, str]] = set()
    t0 = time.time()
    while len(up) < len(cmds):
        if time.time() - t0 > 60:
            raise RuntimeError(f"stages did not start; logs in {d}")
        if (h := bus.recv_nowait(hbs, 100)) is not None:
            hb = decode(h, expect="heartbeat")
            up.add((hb.stage, hb.instance))
    procs.append(subprocess.Popen([sys.executable, "-m", "services.capture", "--wait-subscriber-s", "10"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(f"{d}/capture.log", "ab")))
    rows, per_source, t_start = [], {}, time.time() + warmup
    t_end = t_start + seconds
    try:
        while time.time() < t_end:
            data = bus.recv_nowait(sub, 100)
            if data is None:
                continue
            t_arrive = time.time()
            if t_arrive < t_start:
                continue
            ann = decode(data, expect="annotated")
            lat = latencies(ann)
            lat["to_web"] = (t_arrive - ann.frame.t_capture) * 1e3
            rows.append(lat)
            per_source.setdefault(ann.frame.source_id, []).append(sorted(r.track_id for r in ann.results))
        beats: dict = {}
        while (h := bus.recv_nowait(hbs, 0)) is not None:
            hb = decode(h, expect="heartbeat")
            beats[(hb.stage, hb.instance)] = hb.counters
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        ctx.destroy(linger=0)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k.count("->"), k))
    out = {"frames": len(rows), "fps": round(len(rows) / seconds, 1),
           "latency_ms": {k: pct([r[k] for r in rows if k in r]) for k in keys}}
    dropped = {f"{st}.{k}": v for (st, _), c in beats.items() for k, v in c.items()
               if k in ("dropped", "superseded", "dropped_old", "out_of_order", "stale", "skipped", "late",
                        "skipped_by_worker")}
    out["drops"] = dropped
    out["detect_workers"], out["sources"] = detect_workers, sources
    # Each source's video shows the same faces throughout: a track id that changes is a tracking error.
    out["per_source_fps"] = {k: round(len(v) / seconds, 1) for k, v in sorted(per_source.items())}
    out["track_ids_per_source"] = {k: len({i for ids in v for i in ids}) for k, v in sorted(per_source.items())}
    out["annotate_out_of_order"] = sum(c.get("out_of_order", 0) for (st, _), c in beats.items() if st == "annotate")
    out["per_worker_frames"] = {st: sorted(c.get("frames_out", 0) for (s2, _), c in beats.items() if s2 == st)
                                for st in ("detect", "classify")}
    q = max(1, len(rows) // 4)  # latency must not grow with time: first vs last quarter of the window
    out["to_web_p50_first_last_quarter_ms"] = [pct([r["to_web"] for r in rows[:q]]).get("p50"),
                                               pct([r["to_web"] for r in rows[-q:]]).get("p50")]
    out["to_web_p95_first_last_quarter_ms"] = [pct([r["to_web"] for r in rows[:q]]).get("p95"),
                                               pct([r["to_web"] for r in rows[-q:]]).get("p95")]
    return out


# ----------------------------------------------------------------------------------------- one process
def run_single(frames: list[np.ndarray], model_dir: str, seconds: float) -> dict:
    """The same steps in one loop: JPEG encode, decode, detect, classify, track, draw, encode."""
    from services.annotate.stage import AnnotateStage
    from services.capture.stage import frame_message
    from services.classify.worker import classify
    from services.detect.__main__ import build_analyzer
    from services.detect.stage import decode_frame
    from shared.messages import Faces
    from shared.model import FacialExpressionModel
    cfg = Config(model_dir=model_dir)
    detector, model = build_analyzer(cfg), FacialExpressionModel(model_dir or None)
    annot = AnnotateStage(cfg)
    totals, steps = [], {"capture": [], "detect": [], "classify": [], "annotate": []}
    i, t_end = 0, time.time() + seconds
    while time.time() < t_end:
        t0 = time.time()
        msg = frame_message(frames[i % len(frames)], "bench", i, t0, cfg.jpeg_quality)
        t1 = time.time()
        det = detector.detect(decode_frame(msg))
        faces = Faces(msg, det.boxes_xywh, det.crops, job=i, run=1, landmarks=det.landmarks)
        t2 = time.time()
        preds = classify(model, faces)
        t3 = time.time()
        annot.render(preds, t3)
        t4 = time.time()
        for k, a, b in zip(steps, (t0, t1, t2, t3), (t1, t2, t3, t4)):
            steps[k].append((b - a) * 1e3)
        totals.append((t4 - t0) * 1e3)
        i += 1
    return {"frames": i, "fps": round(i / seconds, 1),
            "latency_ms": {"total": pct(totals), **{k: pct(v) for k, v in steps.items()}}}


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per step")
    ap.add_argument("--fps", type=float, default=30.0, help="capture rate of the latency steps")
    ap.add_argument("--faces", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--scenes", nargs="+", default=["people", "flat"], choices=["people", "moving", "flat"])
    ap.add_argument("--model-dir", default="", help="exported model ('' = bundled)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--classify-ms-per-face", type=float, default=0.0,
                    help="make classify the slow stage: the worker sleeps this long per face after the model")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="setting for every stage")
    ap.add_argument("--no-single", action="store_true", help="skip the single-process steps")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of each step not measured (start-up)")
    args = ap.parse_args(argv)
    extra_env = dict(e.split("=", 1) for e in args.env)
    results: dict = {"cpus": os.cpu_count(), "load": os.getloadavg()[0], "machine": machine_info(),
                     "command": " ".join(["python"] + sys.argv), "steps": [],
                     "classify_ms_per_face": args.classify_ms_per_face, "env": extra_env}
    print(f"machine: {results['machine']['label']}, {results['cpus']} CPUs, load {results['load']:.1f}")
    tmp = Path(tempfile.mkdtemp(prefix="flbenchv"))

    def report(step: dict) -> None:
        results["steps"].append(step)
        lat = step["latency_ms"]
        hops = {k: v.get("p50") for k, v in lat.items() if "->" in k}
        print(f"{step['name']:<34} {step['fps']:>6} fps  "
              f"total p50/p95/p99 {lat.get('to_web', lat.get('total'))}  hops p50 {hops}  "
              f"stages p50 { {k: lat[k].get('p50') for k in STAGES if k in lat} }"
              + (f"  drift first/last quarter p50 {step['to_web_p50_first_last_quarter_ms']} "
                 f"p95 {step['to_web_p95_first_last_quarter_ms']}  drops {step['drops']}"
                 if "to_web_p50_first_last_quarter_ms" in step else ""), flush=True)

    kw = dict(classify_ms_per_face=args.classify_ms_per_face, extra_env=extra_env, warmup=args.warmup)
    for scene in args.scenes:
        for n in args.faces:
            frames = make_frames(n, scene)
            video = write_video(frames, tmp / f"{scene}{n}.avi")
            if not args.no_single:
                report({"name": f"{scene}: single-process {n} face(s)", "scene": scene, "faces": n,
                        **run_single(frames, args.model_dir, args.seconds)})
            report({"name": f"{scene}: pipeline {n} face(s) @{args.fps:g}fps 1 worker", "scene": scene, "faces": n,
                    "workers": 1, "mode": "latency",
                    **run_pipeline(video, args.model_dir, 1, args.fps, args.seconds, **kw)})
            for w in args.workers:
                report({"name": f"{scene}: pipeline {n} face(s) max-rate {w} worker(s)", "scene": scene, "faces": n,
                        "workers": w, "mode": "throughput",
                        **run_pipeline(video, args.model_dir, w, 0.0, args.seconds, **kw)})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
