"""benchmarks/photos.py on a handful of generated "photos": the folder, the held-out queries and the
ground truth it builds, the P@10 and mAP it reports (against hand-computed values), and a tiny run."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cibhash_ext.evaluation import mean_average_precision
from cibhash_ext.files import load_image
from conftest import load_benchmark


@pytest.fixture(scope="module")
def photos_module():
    return load_benchmark("photos")


def _fake_photos(folder, count=4):
    """Smooth random colour images (blurred noise), distinct from each other, as PNG files."""
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((80, 60), Image.Resampling.BICUBIC).save(os.path.join(folder, f"photo{i}.png"))
    return folder


def _files_under(folder):
    return {os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names}


def test_build_writes_every_edit_holds_queries_out_and_leaks_nothing(photos_module, tmp_path):
    photos, notes = photos_module.find_photos((_fake_photos(str(tmp_path / "src")),), sources=())
    assert len(photos) == 4 and notes == []
    out = str(tmp_path / "bench")
    truth = photos_module.build(out, photos, copies=12, queries_per_photo=3, side=48, seed=0)

    # The ground truth lies outside both folders and is what build returned.
    assert sorted(os.listdir(out)) == ["photos", "queries", "truth.json"]
    assert json.loads((tmp_path / "bench" / "truth.json").read_text()) == json.loads(json.dumps(truth))
    assert len(truth["database"]) == 4 * 12 and len(truth["queries"]) == 4 * 3

    # Every storage kind and every content edit, for every photo, in the training folder.
    for photo in range(4):
        copies = [e for e in truth["database"] if e["photo"] == photo]
        assert {e["storage"] for e in copies} == set(photos_module.STORAGE)
        assert {e["edit"] for e in copies} == set(photos_module.EDITS)
        assert sum(e["photo"] == photo for e in truth["queries"]) == 3

    # The folders hold exactly the listed images: queries never in the training folder, no other file,
    # and no name that tells the photo.
    database = {os.path.relpath(e["path"], "photos") for e in truth["database"]}
    queries = {os.path.relpath(e["path"], "queries") for e in truth["queries"]}
    assert _files_under(os.path.join(out, "photos")) == database
    assert _files_under(os.path.join(out, "queries")) == queries
    assert all(e["path"].startswith("photos" + os.sep) for e in truth["database"])
    assert all(e["path"].startswith("queries" + os.sep) for e in truth["queries"])
    assert any(len(p.split(os.sep)) > 2 for p in database)  # nested folders
    for path in database | queries:
        assert "photo" not in path and "src" not in path

    # Each file is stored as its kind says and reads back, upright, at the size of its edit.
    formats = {"jpeg": ("JPEG", "RGB"), "png": ("PNG", "RGB"), "webp": ("WEBP", "RGB"), "gif": ("GIF", "P"),
               "grayscale": ("JPEG", "L"), "cmyk": ("JPEG", "CMYK"), "rgba": ("PNG", "RGBA"), "16bit": ("PNG", "I;16"),
               "exif": ("JPEG", "RGB"), "tiff": ("TIFF", "RGB"), "bmp": ("BMP", "RGB"), "palette": ("PNG", "P")}
    for entry in truth["database"] + truth["queries"]:
        path = os.path.join(out, entry["path"])
        with Image.open(path) as img:
            assert (img.format, img.mode) == formats[entry["storage"]], entry
            stored_size, exif = img.size, img.getexif()
        assert tuple(load_image(path, "RGB").size) == tuple(entry["params"]["size"]), entry
        if entry["storage"] == "exif":
            assert exif[0x0112] == entry["params"]["orientation"]
            assert stored_size != tuple(entry["params"]["size"]) or entry["params"]["orientation"] == 3
        else:
            assert 0x0112 not in exif
    rotated = next(e for e in truth["database"] if e["storage"] == "exif" and e["params"]["orientation"] in (6, 8))
    assert rotated  # a sideways file really is tested

    # The same seed builds the same bytes.
    again = photos_module.build(str(tmp_path / "again"), photos, copies=12, queries_per_photo=3, side=48, seed=0)
    assert again == truth
    digest = lambda root, e: hashlib.sha256(open(os.path.join(root, e["path"]), "rb").read()).hexdigest()  # noqa: E731
    assert [digest(out, e) for e in truth["database"]] == [digest(str(tmp_path / "again"), e) for e in truth["database"]]

    # A folder that exists already is refused in one line.
    with pytest.raises(SystemExit, match="exists"):
        photos_module.build(out, photos, copies=1, queries_per_photo=1, side=48, seed=0)


def test_scores_on_a_planted_case(photos_module):
    database_photo = torch.tensor([0, 0, 1, 1, 0, 1, 2, 2, 0, 1, 1, 0])
    query_photo = torch.tensor([0, 2])
    ranking = torch.stack([torch.arange(12), torch.arange(11, -1, -1)])
    # Query 0 (photo 0, ranking 0..11): copies at ranks 1, 2, 5, 9, 12; P@10 = 4/10,
    # AP = (1/1 + 2/2 + 3/5 + 4/9 + 5/12) / 5. Query 1 (photo 2, ranking 11..0): copies 7 and 6 at
    # ranks 5 and 6; P@10 = 2/10, AP = (1/5 + 2/6) / 2.
    ap0 = (1 + 1 + 3 / 5 + 4 / 9 + 5 / 12) / 5
    ap1 = (1 / 5 + 2 / 6) / 2
    scores = photos_module.ranking_scores(ranking, query_photo, database_photo)
    assert scores["p_at_10"] == pytest.approx((0.4 + 0.2) / 2, abs=1e-12)
    assert scores["map"] == pytest.approx((ap0 + ap1) / 2, abs=1e-12)
    assert scores["map"] == pytest.approx(0.4794444444, abs=1e-9)
    with pytest.raises(ValueError, match="ranking must be"):
        photos_module.ranking_scores(ranking[:, :5], query_photo, database_photo)


def test_rankings_break_ties_by_lower_index_and_match_the_library(photos_module):
    # Codes with planted ties: database rows 1 and 3 equal the query, rows 0 and 2 are one bit away.
    database = torch.tensor([[0b0001], [0b0000], [0b0010], [0b0000], [0b1111]], dtype=torch.uint8)
    ranking = photos_module.hamming_ranking(torch.tensor([[0]], dtype=torch.uint8), database, 8)
    assert ranking.tolist() == [[1, 3, 0, 2, 4]]
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    assert photos_module.cosine_ranking(torch.tensor([[3.0, 0.0]]), features).tolist() == [[0, 2, 3, 1]]

    # mAP over the whole ranking equals the library's mAP@N on the same codes.
    g = torch.Generator().manual_seed(0)
    db_codes = torch.randint(0, 4, (60, 2), generator=g, dtype=torch.uint8)  # few distinct codes: many ties
    q_codes = torch.randint(0, 4, (9, 2), generator=g, dtype=torch.uint8)
    db_photo, q_photo = torch.randint(0, 5, (60,), generator=g), torch.randint(0, 5, (9,), generator=g)
    ours = photos_module.ranking_scores(photos_module.hamming_ranking(q_codes, db_codes, 16), q_photo, db_photo)
    assert ours["map"] == pytest.approx(mean_average_precision(q_codes, db_codes, q_photo, db_photo, 60), abs=1e-12)


def test_tiny_run_end_to_end(photos_module, tmp_path, capsys):
    src = _fake_photos(str(tmp_path / "src"), count=6)
    out = str(tmp_path / "bench")
    photos_module.main(["--out", out, "--sources", "", "--extra", src, "--copies", "12", "--queries-per-photo", "2",
                        "--side", "48", "--backbones", "convnet", "--epochs", "1", "--batch-size", "16",
                        "--pixel-size", "8", "--threads", "1"])
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert (results["photos"], results["database"], results["queries"]) == (6, 72, 12)
    assert results["sources"] == {f"extra:{src}": 6}
    assert set(results["methods"]) == {"CIBHash, convnet: convnet, 1 epochs of batch 16", "LSH, pixels", "ITQ, pixels"}
    for scores in results["methods"].values():
        for length in ("16", "32", "64"):
            assert 0 < scores[length]["p_at_10"] <= 1 and 0 < scores[length]["map"] <= 1
    # ITQ on 8x8 pixels finds most copies of 6 distinct photos among 72 files.
    assert results["methods"]["ITQ, pixels"]["64"]["map"] > 0.5
    shown = capsys.readouterr().out
    assert shown.startswith("python ") and "| ITQ, pixels |" in shown and "train convnet" in shown
    # --reuse scores the folder built before (here without training: the pixel baselines alone).
    photos_module.main(["--out", out, "--reuse", "--backbones", "", "--pixel-size", "8", "--threads", "1"])
    reused = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert reused["methods"]["ITQ, pixels"] == results["methods"]["ITQ, pixels"]
    assert "reusing" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="unknown"):
        photos_module.main(["--out", out, "--sources", "nothing"])
    with pytest.raises(SystemExit, match="only 6 photos"):
        photos_module.main(["--out", str(tmp_path / "other"), "--sources", "", "--extra", src, "--photos", "9"])


def test_the_recipe_search_trains_on_one_stored_cache_and_scores_like_the_benchmark(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch not installed")
    recipe_module = load_benchmark("photos_recipe")
    photos = recipe_module.bench
    out = str(tmp_path / "bench")
    photos.main(["--out", out, "--sources", "", "--extra", _fake_photos(str(tmp_path / "src"), count=6), "--copies",
                 "12", "--queries-per-photo", "2", "--side", "48", "--backbones", "", "--pixel-size", "8",
                 "--threads", "1"])
    small = {"augment": {"size": 32}, "epochs": 2, "batch_size": 16, "code_lengths": [16, 32, 64]}
    recipe_module.main(["--out", out, "--threads", "1", "a=" + json.dumps(small),
                        "b=" + json.dumps({**small, "feature_cache": 2})])
    results = json.loads((tmp_path / "bench" / "recipe" / "results.json").read_text())
    assert [results[n]["feature_cache"] for n in ("a", "b")] == [4, 2]
    caches = [n for n in os.listdir(tmp_path / "bench" / "recipe") if n.startswith("cache-")]
    assert len(caches) == 1  # one cache of 4 views served both runs
    # The score of run "a" is what the benchmark's own scoring gives for its encoded files.
    from cibhash_ext import encode, load_model

    truth = json.loads((tmp_path / "bench" / "truth.json").read_text())
    database_paths, database_photo = photos.ordered_truth(out, truth, "database")
    query_paths, query_photo = photos.ordered_truth(out, truth, "queries")
    model = load_model(str(tmp_path / "bench" / "recipe" / "runs" / "a"))
    db, q = encode(model, database_paths), encode(model, query_paths)
    for v in (16, 32, 64):
        expected = photos.ranking_scores(photos.hamming_ranking(q[v], db[v], v), query_photo, database_photo)
        assert results["a"]["scores"][str(v)] == pytest.approx(expected, abs=1e-12)
