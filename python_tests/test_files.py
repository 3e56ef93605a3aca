"""Tests of cibhash_ext.files: the atomic write, image discovery and loading."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
from PIL import Image

from cibhash_ext.files import (
    atomic_write,
    image_files,
    load_image,
    readable_images,
    remove_stale_temporaries,
    write_json,
    write_text,
)


def test_atomic_write_replaces_a_link_instead_of_following_it(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    link = tmp_path / "report.md"
    link.symlink_to(outside)
    write_text(str(link), "new")
    assert outside.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "new"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(str(path), {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as fh:
            fh.write(b"{half")
            raise RuntimeError("crash")
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert os.listdir(tmp_path) == ["metrics.json"]


def _die_while_writing(path: str) -> None:
    with atomic_write(path) as fh:
        fh.write(b"half")
        fh.flush()
        os._exit(0)


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    path = tmp_path / "checkpoint.pt"
    child = multiprocessing.get_context("fork").Process(target=_die_while_writing, args=(str(path),))
    child.start()
    child.join(30)
    dead = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(dead) == 1 and dead[0].startswith(f".checkpoint.pt.{child.pid}.")
    live = tmp_path / f".checkpoint.pt.{os.getpid()}.abc.tmp"
    live.write_bytes(b"")
    remove_stale_temporaries(str(path))
    assert sorted(os.listdir(tmp_path)) == [live.name]


def test_image_files_walk_folders_in_sorted_order(tmp_path):
    for name in ("b/2.png", "a/1.JPG", "a-c/3.webp", "a/notes.txt", "0.bmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [os.path.relpath(f, tmp_path) for f in image_files([str(tmp_path)])]
    assert found == ["0.bmp", "a/1.JPG", "a-c/3.webp", "b/2.png"]
    with pytest.raises(FileNotFoundError, match="input not found"):
        image_files([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        image_files([str(tmp_path / "empty")])


def test_unreadable_images_are_told_apart(tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100x100 is now a decompression bomb
    ok, bad = readable_images([str(good), str(tmp_path / "empty.png"), str(tmp_path / "text.jpg"), str(big)])
    assert ok == [str(good)] and len(bad) == 3
    assert load_image(str(good), "L").mode == "L"
    for path in bad:
        with pytest.raises(ValueError, match="is not a readable image"):
            load_image(path, "RGB")
