"""Small file helpers used everywhere: atomic writes, image files found under folders, images loaded.

Every file the library writes (run directories, checkpoints, index files, codes) goes through
:func:`atomic_write`: a temporary file in the target's folder, fsync, rename over the target, fsync of
the folder. A reader never sees half a file, a crash leaves the old file intact, and a symbolic link
at the target is replaced, never followed, so a received run directory cannot redirect a write.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import stat
import tempfile
import warnings
from typing import IO, Iterator, Sequence

__all__ = [
    "IMAGE_EXTENSIONS",
    "atomic_write",
    "write_json",
    "write_text",
    "torch_save",
    "image_files",
    "load_image",
    "read_json",
    "read_array",
    "readable_images",
    "remove_stale_temporaries",
    "skipped_warning",
]

# Formats PIL identifies but cannot decode on its own (Ghostscript, video, scientific stubs, Windows
# metafiles): their files count as not images rather than failing when their pixels are needed.
_UNDECODABLE_FORMATS = frozenset({"BUFR", "EPS", "GRIB", "HDF5", "MPEG", "WMF"})


def _image_extensions() -> tuple[str, ...]:
    from PIL import Image

    Image.init()
    formats = Image.registered_extensions()
    return tuple(sorted(e for e, f in formats.items() if f in Image.OPEN and f not in _UNDECODABLE_FORMATS))


# Every extension of a format PIL opens and decodes (JPEG, PNG, GIF, TIFF, BMP, ICO, WebP, ...).
IMAGE_EXTENSIONS = _image_extensions()


def _temporary_pattern(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{glob.escape(os.path.basename(path))}.*.tmp")


def _writer_alive(temporary: str, path: str) -> bool:
    """Whether the process that created a temporary of ``path`` (its pid is in the name) still runs."""
    middle = os.path.basename(temporary)[len(os.path.basename(path)) + 2 : -len(".tmp")]
    pid = middle.split(".", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _file_mode(path: str) -> int:
    """The mode a new file gets (0o666 less the umask), or the mode of the file being replaced."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        pass
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(path: str) -> None:
    """Deletes the temporary files that interrupted writes of ``path`` left behind
    (``.<name>.<pid>.*.tmp`` whose process is gone; a write under way in another process is kept)."""
    for stale in glob.glob(_temporary_pattern(path)):
        if not _writer_alive(stale, path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)


@contextlib.contextmanager
def atomic_write(path: str, binary: bool = True) -> Iterator[IO]:
    """Opens a temporary file for writing ``path``; on a clean exit it replaces ``path`` atomically.

    The file is flushed and fsync'ed, renamed over ``path`` (``os.replace``: a link at ``path`` is
    replaced, not followed) and the folder is fsync'ed. On an exception the temporary file is removed
    and ``path`` is untouched; temporaries left by a hard kill are removed by the next write.

    Args:
        path (str): the destination; its folder must exist.
        binary (bool): open in binary mode (else text, UTF-8).

    Yields:
        The open temporary file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) and not os.path.islink(path):
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_write(path, binary=False) as fh:
        fh.write(text)


def read_json(path: str, what: str):
    """The JSON value in ``path``; ``what`` names the file in errors.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON (or not UTF-8).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {path} is not valid JSON: {exc}") from None


def read_array(path: str, what: str):
    """The numpy array (or NpzFile) in a .npy/.npz file, never unpickled; ``what`` names it in errors."""
    import numpy as np

    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file {path!r} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{what} file {path!r} is not a readable .npy/.npz file: {exc}") from None


def write_json(path: str, obj) -> None:
    """Writes ``obj`` as indented JSON (sorted keys, final newline) to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_save(obj, path: str) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    with atomic_write(path) as fh:
        torch.save(obj, fh)


def image_files(inputs: Sequence[str]) -> list[str]:
    """The image files among ``inputs``: files as given, folders searched recursively in sorted order.

    A file inside a folder whose extension is not an image format's (:data:`IMAGE_EXTENSIONS`, any
    case) is left out, and the files left out are counted and named in one warning. A file named in
    ``inputs`` is kept whatever its extension (reading it tells whether it is an image).

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: no image file was found.
    """
    files, others = [], []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            for dirpath, _, names in sorted(os.walk(item)):
                for name in sorted(names):
                    (files if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(os.path.join(dirpath, name))
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    if others:
        warnings.warn(_named(f"left out {len(others)} file(s) that are not images by their extension", others),
                      stacklevel=2)
    if not files:
        raise ValueError(f"no image files (extensions of the formats PIL reads) in {[os.fspath(i) for i in inputs]}")
    return files


def _as_8_bits(img):
    """16-bit images scaled to 8 bits: PIL's own conversion clips every value above 255 to white.

    A 32-bit integer ("I") image holds 16-bit data when any value passes 255 (PIL opens some
    16-bit files so) and is scaled the same way; one within 0..255 is taken as it is.
    """
    sixteen = img.mode.startswith("I;16")
    if sixteen or (img.mode == "I" and img.getextrema()[1] > 255):
        return img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return img


def _on_white(img):
    """Transparent pixels composited onto white, as a viewer shows them; other images unchanged."""
    from PIL import Image

    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img


def load_image(path: str, mode: str):
    """Image ``path`` as a loaded PIL image in ``mode`` ("L" or "RGB"), as a viewer shows it.

    The first frame of an animation (GIF, WebP, APNG); the EXIF orientation applied (a photo stored
    sideways with its orientation tag is turned upright); 16-bit images scaled to 8 bits;
    transparent pixels composited onto white; CMYK, palette and every other mode converted by PIL.

    Raises:
        ValueError: the file is not a readable image (the message names it).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            ImageOps.exif_transpose(img, in_place=True)
            return _on_white(_as_8_bits(img)).convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path} is not a readable image: {exc}") from None


def readable_images(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits ``paths`` into image files that open and pass PIL's check, and the others (empty,
    truncated headers, not an image). A cheap check: pixels are decoded later."""
    from PIL import Image, UnidentifiedImageError

    good, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.verify()
            good.append(path)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            bad.append(path)
    return good, bad


def _named(what: str, paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
    return f"{what}: {shown}"


def skipped_warning(bad: Sequence[str]) -> str:
    """The one warning that names the unreadable files left out."""
    return _named(f"skipped {len(bad)} unreadable image file(s)", bad)
