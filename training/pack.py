"""`ferlive pack-data`: a compact, pre-decoded copy of FER2013 for a machine the image zip cannot reach;
`ferlive pack-model`: a model directory's Keras files with float16 weights, for the same trip.

    python -m training pack-data --out .devdata/fer2013-train-public.npz.xz --splits Training PublicTest
    python -m training pack-model --model-dir shared/bundled_model --out .devdata/bundled16

The copy holds the decoded faces, labels and splits of the chosen splits, each row's path inside the zip and
its FER+ vote counts, xz-compressed (Training + PublicTest: ~53 MB against the zip's 70 MB, small enough to
travel with the working tree to a lent accelerator, see docs/gpu.md). Every `--data` option reads it like the
zip, FER+ targets and the FER+ metric included. Leaving PrivateTest out of a copy made for training keeps it
out of every choice made there."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def pack(data_path: str | Path | None, out: str | Path, splits: list[str]) -> dict:
    """Pack the rows of `splits` of the FER2013 zip at data_path (default: ../shared's) with their FER+ votes
    (when the votes file is there). Returns a summary."""
    from training.data import DEFAULT_DATA, SPLITS, load_fer2013, write_packed, zip_image_paths
    from training.ferplus import DEFAULT_VOTES, load_ferplus

    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; use {list(SPLITS)}")
    zip_path = Path(data_path) if data_path is not None else DEFAULT_DATA
    if zip_path.suffix.lower() != ".zip":
        raise ValueError(f"{zip_path}: pack-data reads the image zip (the paths FER+ is keyed by)")
    data = load_fer2013(zip_path)
    paths = np.asarray(zip_image_paths(zip_path))
    keep = np.isin(data.splits, splits)
    votes = load_ferplus(zip_path) if DEFAULT_VOTES.is_file() else None
    out = write_packed(data.subset(keep), paths[keep].tolist(), out,
                       None if votes is None else votes.counts[keep], None if votes is None else votes.matched[keep])
    summary = {"out": str(out), "rows": int(keep.sum()), "splits": splits, "bytes": out.stat().st_size,
               "ferplus_votes": votes is not None}
    log.info("packed %s", summary)
    return summary


def pack_model(model_dir: str | Path, out: str | Path) -> dict:
    """Copy a model directory's card, model.json and weights with every float32 weight stored as float16: half
    the bytes (the bundled ensemble: 10.4 -> 5.4 MB), for the tree that travels to a lent GPU, where the copy is a
    Keras-only teacher or ensemble member (no TFLite forms; Keras casts the weights back to float32 on loading).
    Returns a summary."""
    import json
    import shutil

    import h5py

    from shared.model import CARD, MODEL_JSON, WEIGHTS, keras_files, read_card

    src, dst = Path(model_dir), Path(out)
    card = read_card(src)
    arch, weights = keras_files(src)
    if dst.resolve() == src.resolve():
        raise ValueError(f"--out {dst} is the model directory itself")
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(arch, dst / MODEL_JSON)
    cast = 0
    with h5py.File(weights, "r") as fin, h5py.File(dst / WEIGHTS, "w") as fout:
        def copy(name, obj):
            nonlocal cast
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                if value.dtype == np.float32:
                    value, cast = value.astype(np.float16), cast + 1
                fout.create_dataset(name, data=value)
            else:
                fout.require_group(name)
            fout[name].attrs.update(dict(obj.attrs))

        fout.attrs.update(dict(fin.attrs))
        fin.visititems(copy)
    card["files"] = {k: v for k, v in card.get("files", {}).items() if k in ("card", "keras_json", "keras_weights")}
    card["packed"] = {"from": str(src), "weights": "float16 (cast from float32 by `ferlive pack-model`)"}
    (dst / CARD).write_text(json.dumps(card, indent=2))
    summary = {"out": str(dst), "float16_arrays": cast, "bytes_before": weights.stat().st_size,
               "bytes_after": (dst / WEIGHTS).stat().st_size}
    log.info("packed %s", summary)
    return summary


def add_cli(sub) -> None:
    p = sub.add_parser("pack-data", help="write a compact pre-decoded copy of FER2013 (+ FER+ votes) for another machine",
                       description="Decode the FER2013 image zip and write the chosen splits, their zip paths and "
                                   "FER+ votes as one xz-compressed .npz.xz that --data reads like the zip.")
    p.add_argument("--data", default=None, help="the FER2013 image zip (default: ../shared's)")
    p.add_argument("--out", required=True, help="output file, *.npz.xz")
    p.add_argument("--splits", nargs="+", default=["Training", "PublicTest"],
                   help="splits to keep (default: Training PublicTest — PrivateTest stays home)")
    p.set_defaults(func=_cmd_pack)
    m = sub.add_parser("pack-model", help="copy a model directory's Keras files with float16 weights (for a lent GPU)",
                       description="Write card.json, model.json and model.weights.h5 of a model directory with every "
                                   "float32 weight as float16 (half the bytes; no TFLite forms): a Keras-only teacher "
                                   "or ensemble member for a machine the full directory is too big to reach.")
    m.add_argument("--model-dir", required=True, help="exported model directory (e.g. shared/bundled_model)")
    m.add_argument("--out", required=True, help="directory to write")
    m.set_defaults(func=_cmd_pack_model)


def _cmd_pack(a) -> int:
    try:
        s = pack(a.data, a.out, a.splits)
    except ValueError as e:
        raise SystemExit(f"ferlive pack-data: {e}") from None
    print(f"packed {s['rows']} rows of {', '.join(s['splits'])} into {s['out']} ({s['bytes'] / 1e6:.1f} MB)")
    return 0


def _cmd_pack_model(a) -> int:
    try:
        s = pack_model(a.model_dir, a.out)
    except (OSError, ValueError) as e:
        raise SystemExit(f"ferlive pack-model: {e}") from None
    print(f"packed {a.model_dir} into {s['out']}: {s['float16_arrays']} arrays as float16, "
          f"{s['bytes_before'] / 1e6:.1f} -> {s['bytes_after'] / 1e6:.1f} MB")
    return 0
