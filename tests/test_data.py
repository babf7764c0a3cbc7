"""FER2013 readers on real data: the sample CSV, subsets of the real zip (as a zip and as a folder tree),
the train.csv/test.csv pair, icml_face_data.csv headers, the cache, and every bad-input case."""
from __future__ import annotations

import csv
import shutil
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.labels import EMOTIONS
from training.data import (DataError, FerData, load_fer2013, read_csv, read_folder, read_zip)


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    """Never write the decode cache to ~/.cache from these tests."""
    monkeypatch.setenv("FERLIVE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sample_rows(sample_csv) -> list[dict[str, str]]:
    with open(sample_csv, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# --- the sample CSV ----------------------------------------------------------------------------------

def test_sample_csv_counts(sample_csv):
    data = load_fer2013(sample_csv)
    assert len(data) == 700
    assert data.faces.shape == (700, 48, 48) and data.faces.dtype == np.uint8
    assert data.counts() == {"Training": [60] * 7, "PublicTest": [20] * 7, "PrivateTest": [20] * 7}
    assert len(data.split("PublicTest")) == 140


def test_sample_csv_pixels_are_the_rows(sample_csv, sample_rows):
    data = read_csv(sample_csv)
    for i in (0, 345, 699):
        row = sample_rows[i]
        np.testing.assert_array_equal(data.faces[i].ravel(), np.array(row["pixels"].split(), dtype=np.uint8))
        assert data.labels[i] == int(row["emotion"]) and data.splits[i] == row["Usage"]


def test_split_names_the_splits_present(sample_csv):
    with pytest.raises(KeyError, match="Test"):
        read_csv(sample_csv).split("Test")


# --- a subset of the real zip, as a zip and as the extracted folder tree ------------------------------

def _pick_members(images_zip: Path, per_folder: int = 3) -> list[str]:
    """A few members of every <split>/<emotion> folder, PublicTest and PrivateTest both among the tests."""
    with zipfile.ZipFile(images_zip) as zf:
        names = sorted(n for n in zf.namelist() if not n.endswith("/"))
    picked = []
    for top in ("train", "test"):
        for emo in EMOTIONS:
            folder = [n for n in names if n.startswith(f"{top}/{emo}/")]
            if top == "test":
                pub = [n for n in folder if "/PublicTest_" in n][:per_folder - 1]
                prv = [n for n in folder if "/PrivateTest_" in n][:1]
                picked += pub + prv
            else:
                picked += folder[:per_folder]
    return picked


@pytest.fixture(scope="module")
def zip_subset(images_zip, tmp_path_factory) -> tuple[Path, list[str], dict[str, bytes]]:
    members = _pick_members(images_zip)
    out = tmp_path_factory.mktemp("zipsub") / "fer-subset.zip"
    payload = {}
    with zipfile.ZipFile(images_zip) as src, zipfile.ZipFile(out, "w") as dst:
        for n in members:
            payload[n] = src.read(n)
            dst.writestr(n, payload[n])
    return out, members, payload


def _expected(members: list[str], payload: dict[str, bytes]) -> dict[str, tuple[np.ndarray, int, str]]:
    exp = {}
    for n in members:
        top, emo, fname = n.split("/")
        split = fname.split("_")[0]
        assert split in ("Training", "PublicTest", "PrivateTest"), n
        face = cv2.imdecode(np.frombuffer(payload[n], np.uint8), cv2.IMREAD_GRAYSCALE)
        exp[n] = (face, EMOTIONS.index(emo), split)
    return exp


def _check_tree_data(data: FerData, members: list[str], payload: dict[str, bytes]) -> None:
    exp = _expected(members, payload)
    assert len(data) == len(members) == 42
    assert data.counts() == {"Training": [3] * 7, "PublicTest": [2] * 7, "PrivateTest": [1] * 7}
    # readers sort by path, so face i is the i-th member in sorted order
    for i, n in enumerate(sorted(members)):
        face, label, split = exp[n]
        np.testing.assert_array_equal(data.faces[i], face)
        assert (data.labels[i], data.splits[i]) == (label, split), n


def test_zip_subset(zip_subset):
    path, members, payload = zip_subset
    assert {Path(m).suffix for m in members} == {".png", ".jpg"}
    _check_tree_data(read_zip(path), members, payload)
    _check_tree_data(load_fer2013(path), members, payload)        # through the cache: same arrays
    _check_tree_data(load_fer2013(path), members, payload)


def test_folder_tree_extracted_from_zip(zip_subset, tmp_path):
    path, members, payload = zip_subset
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path / "fer")
    _check_tree_data(read_folder(tmp_path / "fer"), members, payload)
    _check_tree_data(load_fer2013(tmp_path / "fer"), members, payload)


def test_zip_with_a_top_folder_and_stray_files(zip_subset, tmp_path):
    """Zips made by hand often wrap the tree in one folder and carry a README; both are fine."""
    path, members, payload = zip_subset
    wrapped = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(wrapped, "w") as zf:
        zf.writestr("fer2013/README.txt", "notes")
        for n in members:
            zf.writestr(f"fer2013/{n}", payload[n])
    _check_tree_data(read_zip(wrapped), members, payload)


# --- train.csv / test.csv and icml_face_data.csv -------------------------------------------------------

def test_train_csv_and_test_csv_pair(sample_rows, tmp_path):
    train_rows = [r for r in sample_rows if r["Usage"] == "Training"][:30]
    test_rows = [r for r in sample_rows if r["Usage"] != "Training"][:25]
    train_csv = _write_csv(tmp_path / "train.csv", ["emotion", "pixels"],
                           [[r["emotion"], r["pixels"]] for r in train_rows])
    test_csv = _write_csv(tmp_path / "test.csv", ["pixels"], [[r["pixels"]] for r in test_rows])

    tr = load_fer2013(train_csv)
    assert len(tr) == 30 and set(tr.splits.tolist()) == {"Training"}
    np.testing.assert_array_equal(tr.labels, [int(r["emotion"]) for r in train_rows])

    te = load_fer2013(test_csv)
    assert len(te) == 25 and set(te.splits.tolist()) == {"Test"}
    assert (te.labels == -1).all()
    assert te.counts() == {"Test": [0] * 7}
    np.testing.assert_array_equal(te.faces[3].ravel(), np.array(test_rows[3]["pixels"].split(), np.uint8))
    assert len(te.split("Test")) == 25


def test_icml_face_data_headers_with_stray_spaces(sample_rows, tmp_path):
    rows = sample_rows[::10]   # 70 rows, every split
    path = _write_csv(tmp_path / "icml_face_data.csv", ["emotion", " Usage", " pixels"],
                      [[r["emotion"], r["Usage"], r["pixels"]] for r in rows])
    data = load_fer2013(path)
    assert len(data) == 70
    np.testing.assert_array_equal(data.labels, [int(r["emotion"]) for r in rows])
    assert data.splits.tolist() == [r["Usage"] for r in rows]
    np.testing.assert_array_equal(data.faces[-1].ravel(), np.array(rows[-1]["pixels"].split(), np.uint8))


def test_csv_blank_lines_are_skipped(sample_rows, tmp_path):
    path = tmp_path / "blanks.csv"
    r = sample_rows[0]
    path.write_text(f"emotion,pixels,Usage\n\n{r['emotion']},{r['pixels']},{r['Usage']}\n\n")
    assert len(read_csv(path)) == 1


# --- the cache on the full zip -----------------------------------------------------------------------

@pytest.mark.slow
def test_cached_second_load_of_full_zip_is_fast(images_zip, sample_csv, tmp_path):
    t0 = time.perf_counter()
    first = load_fer2013(images_zip)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = load_fer2013(images_zip)
    t_second = time.perf_counter() - t0
    assert t_second < 2.0, f"cached load took {t_second:.2f}s (first load {t_first:.2f}s)"
    assert len(first) == len(second) == 35887
    assert second.counts()["Training"] == [3995, 436, 4097, 7215, 4830, 3171, 4965]
    assert sum(second.counts()["PublicTest"]) == sum(second.counts()["PrivateTest"]) == 3589
    np.testing.assert_array_equal(first.faces, second.faces)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_array_equal(first.splits, second.splits)
    assert any((tmp_path / "cache").iterdir())

    # The label order pinned against the data itself: every Training face of the sample CSV (code c)
    # sits in the zip's folder EMOTIONS[c] (Training faces are lossless PNGs, so pixels match exactly).
    sample = read_csv(sample_csv).split("Training")
    zip_train = second.split("Training")
    # FER2013 holds some identical images under several labels, so compare with every folder a face is in.
    index: dict[bytes, set[int]] = {}
    for face, label in zip(zip_train.faces, zip_train.labels):
        index.setdefault(face.tobytes(), set()).add(int(label))
    found = [(index[f.tobytes()], int(c)) for f, c in zip(sample.faces, sample.labels) if f.tobytes() in index]
    assert len(found) >= 400, f"only {len(found)} of 420 sample faces found in the zip"
    wrong = [(EMOTIONS[c], sorted(EMOTIONS[z] for z in zl)) for zl, c in found if c not in zl]
    assert not wrong, f"sample CSV code vs zip folder disagree: {wrong[:5]}"
    assert sum(len(zl) == 1 for zl, _ in found) >= 350   # mostly unambiguous faces


def test_cache_is_keyed_by_file_contents(sample_rows, tmp_path):
    path = _write_csv(tmp_path / "a.csv", ["emotion", "pixels", "Usage"],
                      [[r["emotion"], r["pixels"], r["Usage"]] for r in sample_rows[:5]])
    assert len(load_fer2013(path)) == 5
    _write_csv(path, ["emotion", "pixels", "Usage"],
               [[r["emotion"], r["pixels"], r["Usage"]] for r in sample_rows[:9]])
    assert len(load_fer2013(path)) == 9


# --- bad data: always DataError, naming the file and the row or path ----------------------------------

def _one_row_csv(tmp_path: Path, rows: list[dict[str, str]], bad: dict[str, str]) -> Path:
    """Five good sample rows with row 4 of the file (the third data row) replaced by `bad`."""
    body = [[r["emotion"], r["pixels"], r["Usage"]] for r in rows[:5]]
    good = rows[2]
    body[2] = [bad.get("emotion", good["emotion"]), bad.get("pixels", good["pixels"]),
               bad.get("Usage", good["Usage"])]
    return _write_csv(tmp_path / "bad.csv", ["emotion", "pixels", "Usage"], body)


@pytest.mark.parametrize("bad,match", [
    ({"pixels": "1 " * 2303}, "2303 pixels, expected 2304"),
    ({"pixels": "1 " * 2305}, "2305 pixels"),
    ({"pixels": ""}, "0 pixels"),
    ({"pixels": "12 " * 100 + "abc " + "12 " * 2203}, "non-numeric pixel 'abc'"),
    ({"pixels": "12 " * 100 + "1.5 " + "12 " * 2203}, "non-numeric pixel '1.5'"),
    ({"pixels": "12 " * 2303 + "256"}, "0-255"),
    ({"emotion": "7"}, "emotion 7 outside 0-6"),
    ({"emotion": "-1"}, "emotion -1 outside 0-6"),
    ({"emotion": "happy"}, "not an integer"),
    ({"Usage": "Validation"}, "Usage 'Validation'"),
])
def test_bad_csv_row(sample_rows, tmp_path, bad, match):
    path = _one_row_csv(tmp_path, sample_rows, bad)
    for load in (read_csv, load_fer2013):
        with pytest.raises(DataError, match=match) as err:
            load(path)
        assert str(path) in str(err.value) and "row 4" in str(err.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("fer-*/faces.npy"))


def test_short_row(sample_rows, tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("emotion,pixels,Usage\n" + f"{sample_rows[0]['emotion']},{sample_rows[0]['pixels']}\n")
    with pytest.raises(DataError, match="row 2: 2 fields, expected 3") as err:
        load_fer2013(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("header", [["emotion", "Usage"], ["emotion", "pixel", "Usage"]])
def test_missing_pixels_column(sample_rows, tmp_path, header):
    path = _write_csv(tmp_path / "nopix.csv", header, [[sample_rows[0]["emotion"], "x", "Training"][:len(header)]])
    with pytest.raises(DataError, match="missing column 'pixels'") as err:
        load_fer2013(path)
    assert str(path) in str(err.value)


def test_empty_csv(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="empty file") as err:
        load_fer2013(path)
    assert str(path) in str(err.value)


def _tree(root: Path, payload: dict[str, bytes], members: list[str]) -> Path:
    for n in members:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(payload[n])
    return root


def test_unknown_class_folder(zip_subset, tmp_path):
    path, members, payload = zip_subset
    root = _tree(tmp_path / "fer", payload, members[:5])
    bad_rel = "train/contempt/Training_99999.png"
    (root / bad_rel).parent.mkdir(parents=True)
    (root / bad_rel).write_bytes(payload[members[0]])
    with pytest.raises(DataError, match="unknown class folder 'contempt'") as err:
        load_fer2013(root)
    assert str(root) in str(err.value) and bad_rel in str(err.value)

    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr(members[0], payload[members[0]])
        zf.writestr(bad_rel, payload[members[0]])
    with pytest.raises(DataError, match="unknown class folder 'contempt'") as err:
        load_fer2013(bad_zip)
    assert str(bad_zip) in str(err.value) and bad_rel in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n truncated"])
def test_unreadable_image(zip_subset, tmp_path, content):
    path, members, payload = zip_subset
    root = _tree(tmp_path / "fer", payload, members[:5])
    bad_rel = "test/fear/PublicTest_0000bad.jpg"
    (root / bad_rel).parent.mkdir(parents=True, exist_ok=True)
    (root / bad_rel).write_bytes(content)
    with pytest.raises(DataError, match="unreadable image") as err:
        load_fer2013(root)
    assert str(root) in str(err.value) and bad_rel in str(err.value)

    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr(members[0], payload[members[0]])
        zf.writestr(bad_rel, content)
    with pytest.raises(DataError, match="unreadable image") as err:
        load_fer2013(bad_zip)
    assert str(bad_zip) in str(err.value) and bad_rel in str(err.value)


def test_not_a_zip(tmp_path):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK not really")
    with pytest.raises(DataError, match="not a readable zip") as err:
        load_fer2013(path)
    assert str(path) in str(err.value)


def test_folder_without_images(tmp_path):
    (tmp_path / "fer" / "train" / "happy").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found") as err:
        load_fer2013(tmp_path / "fer")
    assert str(tmp_path / "fer") in str(err.value)


def test_unknown_file_type_and_missing_path(tmp_path):
    other = tmp_path / "faces.parquet"
    other.write_bytes(b"x")
    with pytest.raises(DataError, match=r"expected a .csv, a .zip, a \*\.npz\.xz or a folder") as err:
        load_fer2013(other)
    assert str(other) in str(err.value)
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_fer2013(tmp_path / "nowhere.csv")


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --- the packed copy (`ferlive pack-data`) -------------------------------------------------------------------

def test_packed_copy_reads_like_the_zip_with_its_paths_and_votes(zip_subset, tmp_path):
    from training.data import read_packed_arrays, zip_image_paths
    from training.ferplus import load_ferplus, votes_or_none
    from training.pack import pack

    path, _, _ = zip_subset
    out = tmp_path / "fer.npz.xz"
    summary = pack(path, out, ["Training", "PublicTest"])
    assert summary["rows"] == 7 * (3 + 2) and summary["ferplus_votes"]
    full = load_fer2013(path)
    keep = full.splits != "PrivateTest"
    back = load_fer2013(out)
    np.testing.assert_array_equal(back.faces, full.faces[keep])  # every pixel, after the row-delta coding
    np.testing.assert_array_equal(back.labels, full.labels[keep])
    np.testing.assert_array_equal(back.splits, full.splits[keep])
    assert "PrivateTest" not in set(back.splits.tolist())
    assert read_packed_arrays(out)["paths"].tolist() == np.asarray(zip_image_paths(path))[keep].tolist()
    votes, packed = load_ferplus(path), load_ferplus(out)
    np.testing.assert_array_equal(packed.counts, votes.counts[keep])
    np.testing.assert_array_equal(packed.matched, votes.matched[keep])
    assert packed.matched.sum() >= 30
    np.testing.assert_array_equal(packed.training_targets(back)[0], votes.training_targets(full)[0])
    assert votes_or_none(out) is not None  # the FER+ metric works on it too


def test_packed_copy_errors_name_the_file(zip_subset, tmp_path):
    from training.data import write_packed
    from training.ferplus import load_ferplus, votes_or_none
    from training.pack import pack

    path, _, _ = zip_subset
    bad = tmp_path / "bad.npz.xz"
    bad.write_bytes(b"not xz at all")
    with pytest.raises(DataError, match="bad.npz.xz"):
        load_fer2013(bad, cache=False)
    data = load_fer2013(path)
    with pytest.raises(DataError, match=r"\*\.npz\.xz"):
        write_packed(data, [f"p{i}" for i in range(len(data))], tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="paths for"):
        write_packed(data, ["one"], tmp_path / "short.npz.xz")
    with pytest.raises(ValueError, match="unknown split"):
        pack(path, tmp_path / "x.npz.xz", ["Validation"])
    bad_labels = FerData(data.faces, np.where(data.labels == 3, 9, data.labels), data.splits)
    tampered = write_packed(bad_labels, [f"p{i}" for i in range(len(data))], tmp_path / "tampered.npz.xz")
    with pytest.raises(DataError, match="tampered.npz.xz: labels must be FER2013 codes"):
        load_fer2013(tampered, cache=False)
    no_votes = write_packed(data, [f"p{i}" for i in range(len(data))], tmp_path / "novotes.npz.xz")
    with pytest.raises(DataError, match="without FER\\+ votes"):
        load_ferplus(no_votes)
    assert votes_or_none(no_votes) is None
