"""FER2013 readers: Kaggle CSV (and its train.csv/test.csv and icml_face_data.csv variants),
the image-folder tree, a zip of that tree, or a packed copy (`ferlive pack-data`: decoded faces with their
zip paths and FER+ votes, xz-compressed, for a machine the zip cannot travel to). All give a `FerData`;
decoded data is cached."""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import lzma
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from shared.labels import EMOTIONS, EMOTION_TO_CODE, NUM_CLASSES

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
UNLABELLED = -1
PIXELS = 48 * 48
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fer2013" / "fer2013-images.zip"


class DataError(ValueError):
    """Bad FER2013 input; the message names the file and the row or path."""


@dataclass(frozen=True)
class FerData:
    """Faces uint8 (N,48,48), labels int64 (N,) in FER2013 code order (-1: unlabelled), split per face."""

    faces: np.ndarray
    labels: np.ndarray
    splits: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.faces)
        if self.faces.shape[1:] != (48, 48) or self.faces.dtype != np.uint8:
            raise ValueError(f"faces must be uint8 (N,48,48), got {self.faces.dtype} {self.faces.shape}")
        if self.labels.shape != (n,) or self.splits.shape != (n,):
            raise ValueError(f"labels {self.labels.shape} and splits {self.splits.shape} must be ({n},)")

    def __len__(self) -> int:
        return len(self.faces)

    def split(self, name: str) -> "FerData":
        """The faces of one split ('Training', 'PublicTest', 'PrivateTest' or 'Test')."""
        keep = self.splits == name
        if not keep.any():
            raise KeyError(f"no faces in split {name!r}; present: {sorted(set(self.splits.tolist()))}")
        return self.subset(keep)

    def subset(self, index: np.ndarray) -> "FerData":
        return FerData(self.faces[index], self.labels[index], self.splits[index])

    def counts(self) -> dict[str, list[int]]:
        """Per split, the number of faces of each class in code order."""
        return {s: np.bincount(self.labels[self.splits == s][self.labels[self.splits == s] >= 0],
                               minlength=NUM_CLASSES).tolist() for s in sorted(set(self.splits.tolist()))}


def _split_of_filename(name: str, top: str) -> str:
    base = os.path.basename(name)
    for split in SPLITS:
        if base.startswith(split + "_"):
            return split
    return "Training" if top == "train" else "PublicTest"


def _decode(data: bytes, where: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) if data else None
    if img is None:
        raise DataError(f"{where}: unreadable image")
    if img.shape != (48, 48):
        img = cv2.resize(img, (48, 48), interpolation=cv2.INTER_AREA)
    return img


def _from_entries(entries: list[tuple[str, bytes | Path]], source: str) -> FerData:
    """entries: (relative path 'train/<emotion>/<file>', bytes or path)."""
    faces, labels, splits = [], [], []
    for rel, payload in entries:
        parts = rel.replace("\\", "/").split("/")
        if len(parts) < 3:
            continue
        top, cls = parts[-3], parts[-2]
        if cls not in EMOTION_TO_CODE:
            raise DataError(f"{source}: {rel}: unknown class folder {cls!r}; expected one of {list(EMOTIONS)}")
        where = f"{source}: {rel}"
        data = payload.read_bytes() if isinstance(payload, Path) else payload
        faces.append(_decode(data, where))
        labels.append(EMOTION_TO_CODE[cls])
        splits.append(_split_of_filename(parts[-1], top))
    if not faces:
        raise DataError(f"{source}: no images found in the <split>/<emotion>/<file> layout")
    return FerData(np.stack(faces), np.asarray(labels, np.int64), np.asarray(splits))


IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp")


def read_zip(path: str | Path) -> FerData:
    """Read the image-folder tree straight from a zip."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable zip ({e})") from e
    with zf:
        names = _image_names(zf.namelist())
        return _from_entries([(n, zf.read(n)) for n in names], str(path))


def _image_names(names: list[str]) -> list[str]:
    """The zip members `read_zip` reads, in the order of its rows."""
    return sorted(n for n in names if n.lower().endswith(IMAGE_EXT) and len(n.replace("\\", "/").split("/")) >= 3)


def zip_image_paths(path: str | Path) -> list[str]:
    """The image paths inside a FER2013 zip, one per row of `read_zip(path)` / `load_fer2013(path)`, in
    the same order: the key that joins other per-image data (the FER+ votes) to the rows."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            return _image_names(zf.namelist())
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable zip ({e})") from e


def read_folder(path: str | Path) -> FerData:
    """Read the image-folder tree (train/<emotion>/..., test/<emotion>/...)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXT)
    return _from_entries([(p.relative_to(path).as_posix(), p) for p in files], str(path))


def read_csv(path: str | Path) -> FerData:
    """Read the Kaggle CSV: `emotion,pixels,Usage`; `train.csv` (emotion,pixels), `test.csv` (pixels only,
    split 'Test', label -1); headers with stray spaces as in `icml_face_data.csv`."""
    path = Path(path)
    faces, labels, splits = [], [], []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{path}: empty file, expected a header with a 'pixels' column") from None
        if "pixels" not in header:
            raise DataError(f"{path}: missing column 'pixels' (header: {header})")
        ip = header.index("pixels")
        ie = header.index("emotion") if "emotion" in header else None
        iu = header.index("usage") if "usage" in header else None
        default_split = "Test" if ie is None else ("Training" if iu is None else None)
        for row_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(header):
                raise DataError(f"{path}: row {row_no}: {len(row)} fields, expected {len(header)}")
            try:
                px = np.array(row[ip].split(), dtype=np.int64)
            except ValueError:
                bad = next(t for t in row[ip].split() if not t.lstrip("-").isdigit())
                raise DataError(f"{path}: row {row_no}: non-numeric pixel {bad!r}") from None
            if px.size != PIXELS:
                raise DataError(f"{path}: row {row_no}: {px.size} pixels, expected {PIXELS}")
            if px.min() < 0 or px.max() > 255:
                raise DataError(f"{path}: row {row_no}: pixel values must be 0-255")
            if ie is None:
                label = UNLABELLED
            else:
                try:
                    label = int(row[ie])
                except ValueError:
                    raise DataError(f"{path}: row {row_no}: emotion {row[ie]!r} is not an integer") from None
                if not 0 <= label < NUM_CLASSES:
                    raise DataError(f"{path}: row {row_no}: emotion {label} outside 0-{NUM_CLASSES - 1}")
            split = row[iu].strip() if iu is not None else default_split
            if iu is not None and split not in SPLITS:  # test.csv's rows are 'Test' by default
                raise DataError(f"{path}: row {row_no}: Usage {split!r} is not one of {list(SPLITS)}")
            faces.append(px.astype(np.uint8).reshape(48, 48))
            labels.append(label)
            splits.append(split)
    if not faces:
        raise DataError(f"{path}: no rows")
    return FerData(np.stack(faces), np.asarray(labels, np.int64), np.asarray(splits))


def cache_dir() -> Path:
    return Path(os.environ.get("FERLIVE_CACHE", Path.home() / ".cache" / "ferlive"))


PACKED_SUFFIX = ".npz.xz"


def is_packed(path: str | Path) -> bool:
    return str(path).lower().endswith(PACKED_SUFFIX)


def write_packed(data: FerData, paths: list[str], out: str | Path, votes: np.ndarray | None = None,
                 votes_matched: np.ndarray | None = None) -> Path:
    """Write `data` (with each row's zip path, and optionally its FER+ vote counts (N,10) and the mask of rows FER+
    has votes for) as one xz-compressed
    .npz. Faces are stored as differences along each image row (uint8, wrapping), which xz packs ~25% smaller
    than the pixels themselves. Returns the path written (atomically)."""
    out = Path(out)
    if not is_packed(out):
        raise DataError(f"{out}: a packed copy is named *{PACKED_SUFFIX}")
    if len(paths) != len(data):
        raise ValueError(f"{len(paths)} paths for {len(data)} rows")
    delta = np.diff(data.faces, axis=2, prepend=np.uint8(0))  # uint8 arithmetic wraps: exactly invertible
    arrays = {"faces_row_delta": delta, "labels": data.labels, "splits": data.splits.astype("U11"),
              "paths": np.asarray(paths, dtype="U")}
    if votes is not None:
        arrays["ferplus_votes"] = np.asarray(votes, np.int32)
        arrays["ferplus_matched"] = (np.asarray(votes_matched, bool) if votes_matched is not None
                                     else arrays["ferplus_votes"].sum(axis=1) > 0)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = out.with_name(out.name + ".tmp")
    with lzma.open(tmp, "wb", preset=6) as f:
        f.write(buf.getvalue())
    tmp.replace(out)
    return out


def read_packed_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a packed copy (faces decoded back to pixels)."""
    path = Path(path)
    try:
        with lzma.open(path, "rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (lzma.LZMAError, OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable packed FER2013 copy ({e})") from e
    missing = {"faces_row_delta", "labels", "splits", "paths"} - set(arrays)
    if missing:
        raise DataError(f"{path}: packed copy lacks {sorted(missing)}")
    delta = arrays.pop("faces_row_delta")
    n = len(arrays["labels"])
    if delta.dtype != np.uint8 or delta.shape != (n, 48, 48):
        raise DataError(f"{path}: faces {delta.dtype} {delta.shape}, expected uint8 ({n},48,48)")
    if not np.issubdtype(arrays["labels"].dtype, np.integer) or not np.isin(arrays["labels"], range(-1, NUM_CLASSES)).all():
        raise DataError(f"{path}: labels must be FER2013 codes 0-{NUM_CLASSES - 1} (or -1, unlabelled)")
    if not np.isin(arrays["splits"].astype(str), SPLITS + ("Test",)).all():
        raise DataError(f"{path}: splits must be among {list(SPLITS) + ['Test']}")
    for name in ("splits", "paths", "ferplus_votes", "ferplus_matched"):
        if name in arrays and len(arrays[name]) != n:
            raise DataError(f"{path}: {len(arrays[name])} {name} for {n} faces")
    if "ferplus_votes" in arrays and (arrays["ferplus_votes"] < 0).any():
        raise DataError(f"{path}: negative FER+ vote counts")
    arrays["faces"] = np.cumsum(delta, axis=2, dtype=np.uint8)
    return arrays


def read_packed(path: str | Path) -> FerData:
    a = read_packed_arrays(path)
    try:
        return FerData(a["faces"], a["labels"].astype(np.int64), a["splits"].astype(str))
    except ValueError as e:
        raise DataError(f"{path}: {e}") from e


def load_fer2013(path: str | Path | None = None, cache: bool = True) -> FerData:
    """Load FER2013 from a CSV, a folder tree or a zip (default: ../shared's zip), caching the decoded
    arrays as .npy under FERLIVE_CACHE (~/.cache/ferlive) keyed by path, size and mtime."""
    path = Path(path) if path is not None else DEFAULT_DATA
    if not path.exists():
        raise FileNotFoundError(f"FER2013 data not found at {path}")
    if path.is_dir():
        reader = read_folder
    elif path.suffix.lower() == ".zip":
        reader = read_zip
    elif is_packed(path):
        reader = read_packed
    elif path.suffix.lower() == ".csv":
        reader = read_csv
    else:
        raise DataError(f"{path}: expected a .csv, a .zip, a *{PACKED_SUFFIX} or a folder")
    if not cache or path.is_dir():
        return reader(path)
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v1".encode()).hexdigest()[:16]
    target = cache_dir() / f"fer-{key}"
    try:
        return FerData(np.load(target / "faces.npy"), np.load(target / "labels.npy"),
                       np.load(target / "splits.npy"))
    except (OSError, ValueError):
        pass
    data = reader(path)
    try:
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "faces.npy", data.faces)
        np.save(tmp / "labels.npy", data.labels)
        np.save(tmp / "splits.npy", data.splits.astype("U11"))
        if target.exists():  # another process cached it first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as e:
        log.warning("could not cache decoded FER2013 at %s: %s", target, e)
    return data
