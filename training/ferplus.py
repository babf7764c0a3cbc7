"""FER+ crowd votes (10 taggers per FER2013 image) joined to the rows of `load_fer2013`.

    votes = load_ferplus(zip_path=DEFAULT_DATA)        # FerPlusVotes aligned with load_fer2013(zip_path)
    soft = votes.training_targets(data)               # (N_train,7) distributions, Training rows only
    majority = votes.majority(data, "PrivateTest")    # the second metric's labels (-1: excluded)

The CSV (`../shared/datasets/ferplus/fer2013-ferplus-votes.csv`, see its README) is keyed by the image's path
inside the FER2013 zip and counts votes for `neutral, happiness, surprise, sadness, anger, disgust, fear,
contempt, unknown, NF`. The seven expressions map onto FER2013's codes; contempt, unknown and not-a-face
votes are dropped. Protocol: the votes of Training rows may train a model; PublicTest and PrivateTest votes
only ever give the second metric (`majority`), which `training_targets` enforces."""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.labels import EMOTION_TO_CODE, NUM_CLASSES
from training.data import DEFAULT_DATA, DataError, FerData, is_packed, read_packed_arrays, zip_image_paths

log = logging.getLogger(__name__)

DEFAULT_VOTES = DEFAULT_DATA.parents[1] / "ferplus" / "fer2013-ferplus-votes.csv"
VOTE_COLUMNS: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                                 "contempt", "unknown", "NF")
TO_FER2013: dict[str, str] = {"neutral": "neutral", "happiness": "happy", "surprise": "surprise",
                              "sadness": "sad", "anger": "angry", "disgust": "disgust", "fear": "fear"}
EXCLUDED = -1


@dataclass(frozen=True)
class FerPlusVotes:
    """Vote counts int32 (N,10) in VOTE_COLUMNS order, one row per `load_fer2013` row; `matched` is False
    for rows that FER+ has no votes for (their counts are zero)."""

    counts: np.ndarray
    matched: np.ndarray

    def __post_init__(self) -> None:
        if self.counts.ndim != 2 or self.counts.shape[1] != len(VOTE_COLUMNS):
            raise ValueError(f"counts must be (N,{len(VOTE_COLUMNS)}), got {self.counts.shape}")
        if self.matched.shape != (len(self.counts),):
            raise ValueError(f"matched must be ({len(self.counts)},), got {self.matched.shape}")

    def __len__(self) -> int:
        return len(self.counts)

    def expression_counts(self) -> np.ndarray:
        """float32 (N,7) votes for the seven expressions in FER2013 code order (contempt/unknown/NF dropped)."""
        out = np.zeros((len(self), NUM_CLASSES), np.float32)
        for j, name in enumerate(VOTE_COLUMNS):
            if name in TO_FER2013:
                out[:, EMOTION_TO_CODE[TO_FER2013[name]]] = self.counts[:, j]
        return out

    def distributions(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,7) vote shares over the seven expressions and a bool (N,) mask of rows that have any such vote."""
        votes = self.expression_counts()
        total = votes.sum(axis=1, keepdims=True)
        usable = (total[:, 0] > 0) & self.matched
        dist = np.divide(votes, total, out=np.zeros_like(votes), where=total > 0)
        return dist, usable

    def _check(self, data: FerData) -> None:
        if len(data) != len(self):
            raise ValueError(f"{len(self)} FER+ rows for {len(data)} FER2013 rows: load both from the same zip")

    def training_targets(self, data: FerData, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The (N,7) vote distributions and usable mask of `rows` of `data` (the whole loaded data set,
        aligned with these votes; default: every Training row). ValueError for any row outside Training:
        test votes are never training targets."""
        self._check(data)
        rows = np.flatnonzero(data.splits == "Training") if rows is None else np.asarray(rows)
        if not (data.splits[rows] == "Training").all():
            raise ValueError("FER+ votes of PublicTest/PrivateTest rows are never training targets")
        dist, usable = self.distributions()
        return dist[rows], usable[rows]

    def majority(self, data: FerData, split: str) -> np.ndarray:
        """int64 labels of `split`'s rows by FER+ majority vote; -1 (EXCLUDED) where there are no votes, where
        the most votes went to contempt, unknown or not-a-face, or where the top expressions tie."""
        self._check(data)
        rows = data.splits == split
        counts = self.counts[rows]
        best = counts.max(axis=1)
        top = np.argmax(counts, axis=1)
        ties = (counts == best[:, None]).sum(axis=1) > 1
        code_of_column = np.array([EMOTION_TO_CODE[TO_FER2013[c]] if c in TO_FER2013 else EXCLUDED
                                   for c in VOTE_COLUMNS])
        labels = code_of_column[top]
        labels[ties | (best == 0) | ~self.matched[rows]] = EXCLUDED
        return labels.astype(np.int64)


def read_votes_csv(path: str | Path) -> dict[str, np.ndarray]:
    """path-in-zip -> int32 (10,) vote counts; DataError names the file and row of a bad line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FER+ votes not found at {path}")
    out: dict[str, np.ndarray] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or header[:1] != ["path"] or tuple(h.strip() for h in header[2:]) != VOTE_COLUMNS:
            raise DataError(f"{path}: header {header} is not path,ferplus_image,{','.join(VOTE_COLUMNS)}")
        for row_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}: row {row_no}: {len(row)} fields, expected {len(header)}")
            try:
                counts = np.array([int(v) for v in row[2:]], np.int32)
            except ValueError:
                raise DataError(f"{path}: row {row_no}: vote counts must be integers") from None
            if counts.min() < 0:
                raise DataError(f"{path}: row {row_no}: negative vote count")
            out[row[0]] = counts
    return out


def load_ferplus(zip_path: str | Path | None = None, votes_path: str | Path | None = None) -> FerPlusVotes:
    """The FER+ votes aligned with `load_fer2013(zip_path)` (default: ../shared's zip and votes CSV).
    Only the image-zip form of FER2013 carries the paths FER+ is keyed by; a packed copy (`ferlive pack-data`)
    carries the votes themselves."""
    zip_path = Path(zip_path) if zip_path is not None else DEFAULT_DATA
    if is_packed(zip_path):
        arrays = read_packed_arrays(zip_path)
        if "ferplus_votes" not in arrays:
            raise DataError(f"{zip_path}: packed without FER+ votes")
        return FerPlusVotes(arrays["ferplus_votes"], arrays["ferplus_matched"].astype(bool))
    if zip_path.suffix.lower() != ".zip":
        raise DataError(f"{zip_path}: FER+ votes join on the image zip's paths; a {zip_path.suffix or 'folder'} "
                        f"source has none")
    by_path = read_votes_csv(votes_path if votes_path is not None else DEFAULT_VOTES)
    paths = zip_image_paths(zip_path)
    counts = np.zeros((len(paths), len(VOTE_COLUMNS)), np.int32)
    matched = np.zeros(len(paths), bool)
    for i, p in enumerate(paths):
        c = by_path.get(p)
        if c is not None:
            counts[i], matched[i] = c, True
    log.info("FER+ votes for %d of %d images", matched.sum(), len(paths))
    return FerPlusVotes(counts, matched)


def votes_or_none(data_path: str | Path | None) -> FerPlusVotes | None:
    """The FER+ votes for the second metric, or None (logged) when the data is not the image zip FER+ is
    keyed by or the votes file is absent."""
    zip_path = Path(data_path) if data_path is not None else DEFAULT_DATA
    if is_packed(zip_path):
        try:
            return load_ferplus(zip_path)
        except DataError as e:
            log.info("FER+ metric skipped: %s", e)
            return None
    if zip_path.suffix.lower() != ".zip" or not DEFAULT_VOTES.is_file():
        log.info("FER+ metric skipped: needs the image zip and %s", DEFAULT_VOTES)
        return None
    return load_ferplus(zip_path)


def majority_or_none(votes: FerPlusVotes | None, data: FerData, split: str) -> np.ndarray | None:
    """FER+ majority labels of `split`, or None when there are no votes or they belong to another zip."""
    if votes is None:
        return None
    try:
        return votes.majority(data, split)
    except ValueError as e:  # another zip than the votes were matched to
        log.warning("FER+ metric skipped: %s", e)
        return None


def majority_accuracy(probs: np.ndarray, majority: np.ndarray) -> dict:
    """Accuracy of argmax(probs) against the FER+ majority, over the rows that have one."""
    keep = majority != EXCLUDED
    pred = np.argmax(probs, axis=1)
    n = int(keep.sum())
    return {"accuracy": float((pred[keep] == majority[keep]).mean()) if n else float("nan"), "n": n,
            "excluded": int((~keep).sum())}
