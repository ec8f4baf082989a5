"""The FER2013 CSV's fast parse and its on-disk cache (fer_lab.data.cache)."""

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from fer_lab.core.errors import DataError
from fer_lab.data import fer2013
from fer_lab.data.faces import FaceSplits
from fer_lab.data.fer2013 import FER2013_CLASSES, FER2013CSV
from fer_lab.data.fer2013_reader import parse_fer2013_csv
from fer_lab.data.validation import parse_pixel_rows

from .helpers import REAL_FER2013, compose_config, write_fer2013_csv

# 2 Training rows per class, 1 PublicTest, 1 PrivateTest: Training rows are lines 2-15,
# PublicTest 16-22 and PrivateTest 23-29 (the header is line 1); line 2 is angry.
SIZES = {"Training": 2, "PublicTest": 1, "PrivateTest": 1}
GOOD = " ".join(["7"] * 2304)


def fer_csv(path: Path, replace: dict[int, str] | None = None, ending: str = "\n") -> Path:
    """The small Kaggle CSV at `path` (gzip for .gz), with the given lines (1-based) replaced."""
    write_fer2013_csv(path.with_suffix(".plain"), SIZES)
    lines = path.with_suffix(".plain").read_text().splitlines()
    for number, text in (replace or {}).items():
        lines[number - 1] = text
    data = ("\n".join(lines) + ending).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def pixels_with(token: str) -> str:
    return " ".join([token] + ["7"] * 2303)


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.npz"))


def assert_same(one: FaceSplits, other: FaceSplits) -> None:
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(one, split).images, getattr(other, split).images)
        assert np.array_equal(getattr(one, split).labels, getattr(other, split).labels)
    assert one.skipped == other.skipped


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files parsed (not read from a cache) from now on."""
    parsed: list[Path] = []

    def spy(path: Path, count: int) -> dict[str, np.ndarray]:
        parsed.append(path)
        return parse_fer2013_csv(path, count)

    monkeypatch.setattr(fer2013, "parse_fer2013_csv", spy)
    return parsed


def forbid_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(path: Path, count: int) -> None:
        raise AssertionError(f"{path} parsed, not read from the cache")

    monkeypatch.setattr(fer2013, "parse_fer2013_csv", fail)


def test_second_load_reads_the_cache(tmp_path: Path, monkeypatch, caplog) -> None:
    path, cache = fer_csv(tmp_path / "fer2013.csv.gz"), tmp_path / "cache"
    uncached = FER2013CSV(str(path), FER2013_CLASSES).load()
    with caplog.at_level(logging.INFO, logger="fer_lab.data.cache"):
        first = FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(cache)).load()
        assert "cached to" in caplog.text
        caplog.clear()
        forbid_parsing(monkeypatch)
        again = FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(cache)).load()
        assert "read from the cache" in caplog.text
    assert len(entries(cache)) == 1
    assert_same(first, uncached)
    assert_same(again, uncached)
    assert (len(again.train), len(again.val), len(again.test)) == (14, 7, 7)


def test_changed_source_is_parsed_again(tmp_path: Path, parses: list[Path], caplog) -> None:
    path, cache = fer_csv(tmp_path / "fer2013.csv"), tmp_path / "cache"
    source = FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(cache))
    source.load()
    before = path.stat()
    # one pixel changed, same size and mtime: only the content hash tells
    text = path.read_text()
    start = text.index(",", text.index("\n")) + 1  # line 2's first pixel
    end = text.index(" ", start)
    value = text[start : end - 1] + ("1" if text[end - 1] == "0" else "0")  # still 0..255
    path.write_text(text[:start] + value + text[end:])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with caplog.at_level(logging.INFO, logger="fer_lab.data.cache"):
        assert source.load().train.images[0, 0, 0] == int(value)
    assert "the source changed" in caplog.text
    assert len(parses) == 2
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # touched
    source.load()
    source.load()
    assert len(parses) == 3
    assert len(entries(cache)) == 1  # rewritten, not added


BAD_LINES = {
    3: "",
    4: f"2,{GOOD},Training,x",
    5: "2,1 2 3,Training",
    9: f"9,{GOOD},Training",
    16: f"2,{pixels_with('300')},PublicTest",
    23: f"2,{GOOD},Trainig",
}


def test_bad_rows_from_the_cache_keep_their_lines(tmp_path: Path, monkeypatch) -> None:
    path, cache = fer_csv(tmp_path / "fer2013.csv", BAD_LINES), tmp_path / "cache"
    skipping = FER2013CSV(str(path), FER2013_CLASSES, on_bad_data="skip").load()
    with pytest.raises(DataError) as uncached_error:
        FER2013CSV(str(path), FER2013_CLASSES).load()
    FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(cache), on_bad_data="skip").load()
    forbid_parsing(monkeypatch)
    cached = FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(cache), on_bad_data="skip")
    assert_same(cached.load(), skipping)
    assert [item.line for item in skipping.skipped] == [4, 5, 9, 16, 23]
    with pytest.raises(DataError) as cached_error:
        FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(cache)).load()
    assert str(cached_error.value) == str(uncached_error.value)
    assert "line 16 [PublicTest]: pixel value 300 out of range 0..255" in str(cached_error.value)


def test_class_subsets_share_one_cache_entry(tmp_path: Path, monkeypatch) -> None:
    path, cache = fer_csv(tmp_path / "fer2013.csv", {2: "0,1 2 3,Training"}), tmp_path / "cache"
    expected = FER2013CSV(str(path), ["happy", "sad"]).load()
    FER2013CSV(str(path), ["sad", "fear"], cache_dir=str(cache)).load()
    forbid_parsing(monkeypatch)
    happy_sad = FER2013CSV(str(path), ["happy", "sad"], cache_dir=str(cache)).load()
    assert_same(happy_sad, expected)
    assert (len(happy_sad.train), happy_sad.skipped) == (4, [])  # line 2 (angry) is unused
    with pytest.raises(DataError, match="line 2 "):  # ... but bad for a load that uses it
        FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(cache)).load()
    assert len(entries(cache)) == 1


def test_usage_check_follows_the_splits_after_the_cache(tmp_path: Path, monkeypatch) -> None:
    path, cache = fer_csv(tmp_path / "fer2013.csv"), tmp_path / "cache"
    path.write_text(path.read_text().replace("PublicTest", "Dev"))
    splits = {"train": "Training", "val": "Dev", "test": "PrivateTest"}
    FER2013CSV(str(path), FER2013_CLASSES, splits=splits, cache_dir=str(cache)).load()
    forbid_parsing(monkeypatch)
    with pytest.raises(DataError, match="line 16 \\[Dev\\]: unknown Usage 'Dev'"):
        FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(cache)).load()


def test_unwritable_cache_dir_only_warns(tmp_path: Path, caplog) -> None:
    path = fer_csv(tmp_path / "fer2013.csv")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with caplog.at_level(logging.WARNING):
        splits = FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(not_a_folder / "c")).load()
    assert len(splits.train) == 14
    assert "cannot write the cache" in caplog.text and "going on without it" in caplog.text


def test_unreadable_cache_entry_is_rebuilt(tmp_path: Path, parses: list[Path], caplog) -> None:
    path, cache = fer_csv(tmp_path / "fer2013.csv"), tmp_path / "cache"
    FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(cache)).load()
    (entry,) = entries(cache)
    entry.write_bytes(entry.read_bytes()[:1000])  # cut short, as by a full disk
    with caplog.at_level(logging.WARNING):
        assert len(FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(cache)).load().val) == 7
    assert "unreadable cache entry" in caplog.text
    FER2013CSV(str(path), FER2013_CLASSES, cache_dir=str(cache)).load()
    assert len(parses) == 2
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temporary file left


def test_no_cache_dir_writes_nothing(tmp_path: Path, monkeypatch, caplog) -> None:
    (tmp_path / "data").mkdir()
    path = fer_csv(tmp_path / "data" / "fer2013.csv")
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="fer_lab.data.cache"):
        FER2013CSV(str(path), FER2013_CLASSES, cache_dir=None).load()
    assert sorted(tmp_path.rglob("*")) == before
    assert "no cache" in caplog.text


def test_dataset_configs_cache_in_paths_cache_dir(monkeypatch) -> None:
    monkeypatch.delenv("FER_LAB_CACHE_DIR", raising=False)
    for dataset in ("fer2013", "fer2013_happy_sad"):
        cfg = compose_config(f"dataset={dataset}")
        assert cfg.dataset.cache_dir == cfg.paths.cache_dir
        assert Path(cfg.paths.cache_dir) == Path(cfg.paths.root_dir) / ".cache"
    monkeypatch.setenv("FER_LAB_CACHE_DIR", "/somewhere/else")
    cfg = compose_config("dataset=fer2013_happy_sad")
    assert instantiate(cfg.dataset).cache_dir == Path("/somewhere/else")
    cfg = compose_config("dataset=fer2013", "dataset.cache_dir=null")
    assert instantiate(cfg.dataset).cache_dir is None


@pytest.mark.parametrize("ending", ["\n", "", "\n\n\n"])
def test_fast_reader_agrees_with_pandas_on_odd_lines(tmp_path: Path, ending: str) -> None:
    """The same bytes as .csv (cut by hand) and as .txt (read by pandas) give the same table."""
    odd = {
        3: "",
        4: ",,",
        5: "2,1 2 3",
        6: "3",
        7: f"2,{GOOD},Training,x",
        8: f"3.0,{GOOD},Training",
        9: f" 3,{GOOD.replace(' ', chr(9))},Training",
        10: f"2, {GOOD},Training ",
        11: f"2,0{GOOD},PublicTest",
        12: f"2,{pixels_with('+5')},Training",
        13: f"2,{pixels_with('256')},Training",
        14: f"x,{GOOD},",
        16: f"2,{pixels_with('1.5')},PublicTest",
        17: "2,,Training",
        18: ",1 2,",
        19: f"2,{GOOD}  7,Training",
        20: f"2,{GOOD[:-1]}1234,PublicTest",
        21: "   ",
        24: "\t,,",
    }
    fast = parse_fer2013_csv(fer_csv(tmp_path / "fer2013.csv", odd, ending), 2304)
    slow = parse_fer2013_csv(fer_csv(tmp_path / "fer2013.txt", odd, ending), 2304)
    assert fast.keys() == slow.keys()
    for name in fast:
        np.testing.assert_array_equal(fast[name], slow[name], err_msg=name)
    assert fast["extra_lines"].tolist() == [7]
    assert 4 not in fast["lines"] and 3 not in fast["lines"]


def test_windows_line_ends_read_like_unix_ones(tmp_path: Path) -> None:
    unix = fer_csv(tmp_path / "fer2013.csv", BAD_LINES)
    windows = tmp_path / "windows" / "fer2013.csv"
    windows.parent.mkdir()
    windows.write_bytes(unix.read_bytes().replace(b"\n", b"\r\n"))
    loads = [
        FER2013CSV(str(p), FER2013_CLASSES, on_bad_data="skip").load() for p in (unix, windows)
    ]
    assert [item.line for item in loads[1].skipped] == [4, 5, 9, 16, 23]
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(loads[0], split).images, getattr(loads[1], split).images)


def test_vectorised_pixel_parse_matches_numpy_across_blocks() -> None:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, (300, 40))
    values[:, 0] = rng.choice([0, 9, 10, 99, 100, 255], 300)
    rows = [" ".join(map(str, row)) for row in values]
    rows[70] = rows[70] + " 1"
    rows[200] = rows[200].replace(" ", "  ", 1)  # still 40 values
    images, reasons = parse_pixel_rows([row.encode() for row in rows], 40)
    assert [(i, r) for i, r in enumerate(reasons) if r] == [(70, "41 pixel values, expected 40")]
    good = np.arange(300) != 70
    assert np.array_equal(images[good], values[good]) and not images[70].any()


@pytest.mark.fer2013
@pytest.mark.slow
@pytest.mark.skipif(not REAL_FER2013.exists(), reason="real FER2013 not beside the repository")
def test_real_fer2013_from_the_cache_equals_the_parse(tmp_path: Path, monkeypatch) -> None:
    parsed = FER2013CSV(str(REAL_FER2013), FER2013_CLASSES, cache_dir=str(tmp_path)).load()
    assert (len(parsed.train), len(parsed.val), len(parsed.test)) == (28709, 3589, 3589)
    forbid_parsing(monkeypatch)
    cached = FER2013CSV(str(REAL_FER2013), FER2013_CLASSES, cache_dir=str(tmp_path)).load()
    assert_same(cached, parsed)
    assert np.bincount(cached.test.labels).tolist() == [491, 55, 528, 879, 594, 416, 626]
    with gzip.open(REAL_FER2013, "rt") as file:  # the first rows, read by numpy's own parser
        next(file)
        rows = [next(file).split(",")[1] for _ in range(500)]
    expected = np.fromstring(" ".join(rows), dtype=np.int64, sep=" ").reshape(500, 48, 48)
    assert np.array_equal(cached.train.images[:500], expected)
