"""Expression of the faces in image files, folders and globs, through the one analysis path
(shared.analyzer.FaceAnalyzer).

    ferlive predict face.png group.jpg                       # one line per face
    ferlive predict photos/ 'shots/*.png' --out results.csv  # every image found; one CSV (or .json) for all
    ferlive predict photos/ --annotate out/annotated --json  # annotated copies; JSON lines on stdout

The same detector, registration, crop and model as the pipeline and ``POST /api/predict``, and the same
JSON per face (``box``, ``emotion``, ``scores``, ``landmarks``). By default an image no larger than 96 px
on its longer side is taken as one face crop and a larger one is searched for faces; ``--no-detect``
takes every image as a face crop, ``--detect`` searches every image. Images are classified in batches (one
model call per ``--batch`` images). A file that cannot be read is skipped with a warning naming it; the
others are still processed and the exit code is 1.
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

import cv2

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_image(path: str | Path):
    """A BGR uint8 image from a file; FileNotFoundError when it cannot be read as an image."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (every image inside, recursively, sorted) and glob patterns -> (image paths, inputs that
    matched nothing)."""
    paths: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            found = [p]
        elif glob.has_magic(item):
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
        else:
            found = []
        if not found:
            missing.append(item)
        paths += found
    return paths, missing


def predict_images(analyzer, paths: list[str | Path], detect: bool | None = None,
                   batch: int = 32) -> Iterator[tuple[Path, Any, Any]]:
    """(path, image or None, FaceAnalysis or the error) per path, in order; `batch` images per model call."""
    for start in range(0, len(paths), batch):
        chunk = [Path(p) for p in paths[start:start + batch]]
        images, readable = [], []
        errors: dict[int, Exception] = {}
        for k, p in enumerate(chunk):
            try:
                images.append(read_image(p))
                readable.append(k)
            except (FileNotFoundError, cv2.error) as exc:
                errors[k] = exc
        results = dict(zip(readable, analyzer.analyze_many(images, detect=detect))) if images else {}
        imgs = dict(zip(readable, images))
        for k, p in enumerate(chunk):
            yield p, imgs.get(k), results.get(k, errors.get(k))


def annotated_copy(image_bgr, analysis) -> Any:
    """The image with each face's box, label, probability bars and landmarks drawn (shared.draw)."""
    from shared.analyzer import face_results
    from shared.draw import annotate

    return annotate(image_bgr.copy(), face_results(analysis.boxes_xywh, analysis.probs, landmarks=analysis.landmarks))


def add_cli(sub) -> None:
    p = sub.add_parser("predict", help="expression of the faces in image files, folders and globs",
                       description="Images up to 96 px are taken as face crops; larger ones are searched for "
                                   "faces (the pipeline's detector and registration). Uses the int8 TFLite "
                                   "model by default. Unreadable files are skipped with a warning (exit code 1).")
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--model-dir", default=None, help="exported model directory (default: the bundled model)")
    p.add_argument("--backend", choices=["tflite", "keras"], default="tflite")
    p.add_argument("--precision", choices=["int8", "float32"], default="int8", help="TFLite form")
    p.add_argument("--detect", action="store_true", default=None,
                   help="search every image for faces (default: only images over 96 px)")
    p.add_argument("--no-detect", dest="detect", action="store_false",
                   help="the images are face crops: classify each whole image, no detection")
    p.add_argument("--detector", default=None, choices=["yunet", "haar", "blazeface"],
                   help="detector kind (default: the pipeline's, FERLIVE_DETECTOR_KIND or yunet)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")
    p.add_argument("--out", default=None,
                   help="write every result to one file: .json (a list, one object per image) or .csv (a row per face)")
    p.add_argument("--annotate", default=None, metavar="DIR", help="write annotated copies of the images here")
    p.add_argument("--batch", type=int, default=32, help="images per model call")
    p.set_defaults(func=_cmd_predict)


CSV_COLUMNS = ("image", "face", "x", "y", "w", "h")


def _cmd_predict(a) -> int:
    from shared.analyzer import LANDMARK_COLUMNS, FaceAnalyzer
    from shared.config import Config
    from shared.labels import EMOTIONS

    if a.out and Path(a.out).suffix.lower() not in (".json", ".csv"):
        raise SystemExit(f"ferlive predict: --out {a.out}: use a .json or .csv file name")
    if a.batch < 1:
        raise SystemExit("ferlive predict: --batch must be >= 1")
    paths, missing = expand_inputs(a.images)
    for item in missing:
        print(f"ferlive predict: warning: {item}: no such file, or no image in that folder / pattern", file=sys.stderr)
    cfg = Config.from_env()
    if a.detector:
        cfg = cfg.replace(detector_kind=a.detector)
    analyzer = FaceAnalyzer.load(a.model_dir, detector=cfg, backend=a.backend, precision=a.precision)
    annotate_dir = Path(a.annotate) if a.annotate else None
    if annotate_dir is not None:
        annotate_dir.mkdir(parents=True, exist_ok=True)
    collected: list[dict[str, Any]] = []
    skipped = len(missing)
    for path, image, result in predict_images(analyzer, paths, a.detect, a.batch):
        if isinstance(result, Exception):
            print(f"ferlive predict: warning: skipped {path}: {result}", file=sys.stderr)
            skipped += 1
            continue
        record = {"image": str(path), "faces": result.to_json()}
        if a.out:
            collected.append(record)
        if a.json:
            print(json.dumps(record))
        elif not a.out:
            if not record["faces"]:
                print(f"{path}: no face found")
            for f in record["faces"]:
                s = f["scores"]
                print(f"{path} {f['box']}: {f['emotion']} ({s[f['emotion']]:.2f})  "
                      + " ".join(f"{k}={v:.2f}" for k, v in s.items()))
        if annotate_dir is not None:
            name = path.stem + ("_annotated.png" if path.suffix.lower() != ".jpg" else "_annotated.jpg")
            cv2.imwrite(str(annotate_dir / name), annotated_copy(image, result))
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".json":
            out.write_text(json.dumps(collected, indent=1))
        else:
            with open(out, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow([*CSV_COLUMNS, *LANDMARK_COLUMNS, *EMOTIONS, "emotion"])
                for r in collected:
                    for k, face in enumerate(r["faces"]):
                        lm = face["landmarks"] or [None] * 5
                        w.writerow([r["image"], k, *face["box"],
                                    *[v for p in lm for v in (p if p is not None else ("", ""))],
                                    *[face["scores"][e] for e in EMOTIONS], face["emotion"]])
        print(f"{len(collected)} image(s), {sum(len(r['faces']) for r in collected)} face(s) -> {out}")
    if skipped:
        print(f"ferlive predict: {skipped} input(s) skipped", file=sys.stderr)
    return 1 if skipped else 0
