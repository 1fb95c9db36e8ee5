"""The pixel hash: equal for equal decoded pixels, whatever the file's bytes; different otherwise."""

import numpy as np
from PIL import Image

from embedlab.audit.hashing import hash_files, pixel_hash


def test_the_same_pixels_in_other_bytes_share_a_hash_and_one_changed_pixel_does_not(tmp_path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png", compress_level=9)
    Image.fromarray(pixels).save(tmp_path / "b.png", compress_level=1)
    Image.fromarray(pixels).save(tmp_path / "c.webp", lossless=True)
    changed = pixels.copy()
    changed[5, 5, 0] ^= 1
    Image.fromarray(changed).save(tmp_path / "d.png")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    hashes = [pixel_hash(tmp_path / name, 3) for name in ("a.png", "b.png", "c.webp", "d.png")]
    assert hashes[0] == hashes[1] == hashes[2] != hashes[3]


def test_the_size_is_part_of_the_hash_and_a_box_crops_first(tmp_path) -> None:
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.zeros((6, 4, 3), np.uint8)).save(tmp_path / "tall.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "square.png")
    assert pixel_hash(tmp_path / "wide.png", 3) != pixel_hash(tmp_path / "tall.png", 3)
    assert pixel_hash(tmp_path / "wide.png", 3, (1, 0, 5, 4)) == pixel_hash(tmp_path / "square.png", 3)


def test_hash_files_keeps_the_order_in_worker_processes(tmp_path) -> None:
    paths = []
    for n in range(40):
        path = tmp_path / f"{n}.png"
        Image.fromarray(np.full((3, 3), n, np.uint8)).save(path)
        paths.append(path)
    in_process = hash_files(paths, [None] * 40, 1)
    assert hash_files(paths, [None] * 40, 1, num_workers=2) == in_process
    assert in_process == [pixel_hash(p, 1) for p in paths] and len(set(in_process)) == 40
