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


def test_image_files_walk_folders_in_sorted_order_and_name_what_they_leave_out(tmp_path):
    for name in ("b/2.png", "a/1.JPG", "a-c/3.webp", "a/notes.txt", "0.bmp", "b/4.GIF", "c/5.ico", "c/6.tif", "x.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    with pytest.warns(UserWarning) as caught:
        found = [os.path.relpath(f, tmp_path) for f in image_files([str(tmp_path)])]
    assert found == ["0.bmp", "a/1.JPG", "a-c/3.webp", "b/2.png", "b/4.GIF", "c/5.ico", "c/6.tif"]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("left out 2 file(s) that are not images by their extension: ")
    assert "a/notes.txt" in message and "x.csv" in message and "\n" not in message
    # A file named on its own is kept whatever its extension: reading it decides.
    assert image_files([str(tmp_path / "x.csv")]) == [str(tmp_path / "x.csv")]
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


def _pixels(path, mode="RGB") -> np.ndarray:
    return np.asarray(load_image(str(path), mode)).astype(int)


def test_every_kind_of_image_loads_as_a_viewer_shows_it(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    png = tmp_path / "a.png"
    Image.fromarray(rgb).save(png)
    for ext in ("bmp", "tif", "ppm", "tga", "webp"):  # lossless formats give the same pixels
        Image.fromarray(rgb).save(tmp_path / f"a.{ext}", **({"lossless": True} if ext == "webp" else {}))
        np.testing.assert_array_equal(_pixels(tmp_path / f"a.{ext}"), rgb, err_msg=ext)

    # GIF: the first frame of an animation; ICO loads.
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)).convert("P") for v in (30, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert (_pixels(tmp_path / "anim.gif", "L") == 30).all()
    Image.fromarray(rgb).resize((32, 32)).save(tmp_path / "a.ico")
    assert load_image(str(tmp_path / "a.ico"), "RGB").size == (32, 32)

    # EXIF orientation 6 (stored rotated; shown turned 90 degrees clockwise).
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "rotated.png", exif=exif)
    np.testing.assert_array_equal(_pixels(tmp_path / "rotated.png"), np.rot90(rgb, k=-1))

    # Transparency: composited onto white (PIL's convert would keep the hidden colour).
    rgba = np.dstack([rgb, np.where(np.arange(16) < 8, 0, 255)[None, :].repeat(12, 0)]).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    got = _pixels(tmp_path / "alpha.png")
    assert (got[:, :8] == 255).all() and (got[:, 8:] == rgb[:, 8:]).all()
    palette = Image.fromarray(np.tile(np.arange(4, dtype=np.uint8), (4, 1)), "P")
    palette.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120])
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    got = _pixels(tmp_path / "palette.png")
    assert (got[:, 0] == 255).all() and (got[:, 1] == [40, 50, 60]).all() and (got[:, 3] == [100, 110, 120]).all()

    # 16 bits: scaled to 8 (PIL's own conversion clips everything above 255 to white).
    deep = (np.arange(12 * 16).reshape(12, 16) * 300).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.fromarray(deep).save(tmp_path / "deep.tif")
    for name in ("deep.png", "deep.tif"):
        assert Image.open(tmp_path / name).mode.startswith("I")
        np.testing.assert_array_equal(_pixels(tmp_path / name, "L"), deep >> 8, err_msg=name)

    # CMYK (JPEG) and grayscale files load in either mode.
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(_pixels(tmp_path / "cmyk.jpg") - rgb).mean() < 12
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(_pixels(tmp_path / "gray.png"), np.repeat(rgb[..., :1], 3, axis=2))
