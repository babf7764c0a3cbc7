"""`ferlive pack-data`: a compact, pre-decoded copy of FER2013 for a machine the image zip cannot reach.

    python -m training pack-data --out .devdata/fer2013-train-public.npz.xz --splits Training PublicTest

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


def add_cli(sub) -> None:
    p = sub.add_parser("pack-data", help="write a compact pre-decoded copy of FER2013 (+ FER+ votes) for another machine",
                       description="Decode the FER2013 image zip and write the chosen splits, their zip paths and "
                                   "FER+ votes as one xz-compressed .npz.xz that --data reads like the zip.")
    p.add_argument("--data", default=None, help="the FER2013 image zip (default: ../shared's)")
    p.add_argument("--out", required=True, help="output file, *.npz.xz")
    p.add_argument("--splits", nargs="+", default=["Training", "PublicTest"],
                   help="splits to keep (default: Training PublicTest — PrivateTest stays home)")
    p.set_defaults(func=_cmd_pack)


def _cmd_pack(a) -> int:
    try:
        s = pack(a.data, a.out, a.splits)
    except ValueError as e:
        raise SystemExit(f"ferlive pack-data: {e}") from None
    print(f"packed {s['rows']} rows of {', '.join(s['splits'])} into {s['out']} ({s['bytes'] / 1e6:.1f} MB)")
    return 0
