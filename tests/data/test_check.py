from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from embedlab.config import DataConfig
from embedlab.data import check
from embedlab.data.check import UnreadableFile, cache_file, check_files, unreadable_message
from embedlab.data.images import ImageFiles
from embedlab.data.sources import read_csv, read_folder
from embedlab.data.splits import prepare_data


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of each test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """The files the check decodes, in order (the real decode still runs)."""
    seen: list[Path] = []
    original = check.decode_error

    def counted(path: Path, image_size: int, channels: int) -> str | None:
        seen.append(path)
        return original(path, image_size, channels)

    monkeypatch.setattr(check, "decode_error", counted)
    return seen


def test_a_truncated_and_a_missing_file_are_reported_together(unreadable_data) -> None:
    images = read_csv(unreadable_data.csv, 12, 3).images
    found = check_files(images, "bad")
    assert [u.path for u in found.unreadable] == [unreadable_data.truncated, unreadable_data.missing]
    truncated, missing = found.unreadable
    assert "cannot be read as an image" in truncated.reason and "truncated" in truncated.reason
    assert missing.reason == "does not exist"
    assert found.decoded == 20 and found.cached == 0  # the missing file is stat'ed, never decoded


def test_prepare_data_refuses_them_in_one_error_naming_the_way_on(unreadable_data) -> None:
    cfg = DataConfig(dataset=str(unreadable_data.csv), image_size=12)
    with pytest.raises(ValueError) as raised:
        prepare_data(cfg)
    message = str(raised.value)
    assert message.startswith("2 of 21 image files cannot be used: ")
    assert f"{unreadable_data.truncated} cannot be read as an image" in message
    assert f"{unreadable_data.missing} does not exist" in message
    assert "data.skip_unreadable: true" in message and "\n" not in message


def test_skip_unreadable_leaves_them_out_of_every_split(unreadable_data) -> None:
    cfg = DataConfig(dataset=str(unreadable_data.csv), image_size=12, skip_unreadable=True)
    data = prepare_data(cfg)
    used = [*data.train.paths, *data.query.paths]  # type: ignore[attr-defined]
    assert len(used) == 19
    assert unreadable_data.truncated not in used and unreadable_data.missing not in used
    assert [u.path for u in data.skipped] == [unreadable_data.truncated, unreadable_data.missing]
    assert data.record["skipped_unreadable"] == 2
    assert prepare_data(cfg).record == data.record  # the same split every time


def test_a_second_check_decodes_nothing_and_a_touched_file_alone_again(image_folder, decodes) -> None:
    images = read_folder(image_folder, 8, 3).images
    first = check_files(images, "folder")
    assert first.decoded == len(decodes) == 20 and first.unreadable == []
    decodes.clear()
    second = check_files(images, "folder")
    assert decodes == [] and second.decoded == 0 and second.cached == 20
    touched = images.paths[7]
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    third = check_files(images, "folder")
    assert decodes == [touched.resolve()] and third.decoded == 1 and third.cached == 19


def test_a_cached_failure_is_still_reported_without_a_decode(unreadable_data, decodes) -> None:
    images = read_csv(unreadable_data.csv, 12, 3).images
    first = check_files(images, "bad")
    decodes.clear()
    again = check_files(images, "bad")
    assert decodes == [] and again.unreadable == first.unreadable


def test_workers_decode_what_the_process_itself_would(unreadable_data, monkeypatch) -> None:
    monkeypatch.setattr(check, "FILES_PER_BATCH", 4)  # 5 batches over 2 worker processes
    images = read_csv(unreadable_data.csv, 12, 3).images
    in_process = check_files(images, "in process")
    with_workers = check_files(images, "with workers", num_workers=2)
    assert with_workers.decoded == 20 and with_workers.unreadable == in_process.unreadable


@pytest.mark.parametrize("workers", [0, 1])
def test_a_check_leaves_the_global_random_state_alone(image_folder, workers) -> None:
    # Weights are initialised after the check: a run must not depend on whether the cache was warm.
    images = read_folder(image_folder, 8, 3).images
    state = torch.get_rng_state()
    assert check_files(images, f"cold {workers}", num_workers=workers).decoded == 20
    assert torch.equal(torch.get_rng_state(), state)


def test_the_cache_is_one_json_file_per_collection_under_xdg_cache_home(image_folder, own_cache) -> None:
    images = read_folder(image_folder, 8, 3).images
    check_files(images, "folder")
    path = cache_file("folder")
    assert path.parent == own_cache / "embedlab" / "decode-check"
    stored = json.loads(path.read_text())
    entry = stored["files"][str(images.paths[0].resolve())]
    assert entry == [images.paths[0].stat().st_size, images.paths[0].stat().st_mtime_ns, None]
    assert not list(path.parent.glob("*.tmp"))  # written atomically
    assert cache_file("another collection") != path


def test_a_corrupt_or_unwritable_cache_only_costs_a_decode(
    image_folder, tmp_path, monkeypatch, decodes
) -> None:
    images = read_folder(image_folder, 8, 3).images
    check_files(images, "folder")
    cache_file("folder").write_text("{not json")
    decodes.clear()
    assert check_files(images, "folder").decoded == 20 == len(decodes)
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be made
    assert check_files(images, "folder").unreadable == []


def test_a_long_list_names_the_first_twenty_then_counts_the_rest() -> None:
    unreadable = [UnreadableFile(n, Path(f"/x/{n}.png"), "does not exist") for n in range(25)]
    message = unreadable_message(unreadable, 100)
    assert message.startswith("25 of 100 image files cannot be used: /x/0.png does not exist; ")
    assert "/x/19.png" in message and "/x/20.png" not in message and "; and 5 more." in message


def test_every_file_unreadable_with_skip_is_still_an_error(tmp_path) -> None:
    table = tmp_path / "gone.csv"
    table.write_text("path,label\na.png,x\nb.png,y\n")
    cfg = DataConfig(dataset=str(table), skip_unreadable=True)
    with pytest.raises(ValueError, match="none of its 2 image files can be used"):
        prepare_data(cfg)


def test_built_in_sets_are_not_checked(monkeypatch) -> None:
    monkeypatch.setattr("embedlab.data.splits.check_files", lambda *a, **k: pytest.fail("checked"))
    data = prepare_data(DataConfig(dataset="digits", validation={"split": "images"}))
    assert data.skipped == [] and data.record["skipped_unreadable"] == 0


def test_check_files_takes_any_image_files(image_folder) -> None:
    paths = sorted(image_folder.rglob("*.png"))[:2]
    images = ImageFiles(labels=torch.tensor([0, 1]), paths=paths, size=4, num_channels=1)
    assert check_files(images, "two grey").decoded == 2
