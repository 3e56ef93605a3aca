"""Tests of cibhash_ext.neighbours and of neighbour positives in the input pipeline."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from cibhash_ext.config import TrainConfig, load_config
from cibhash_ext.data import ImageSet, RetrievalData
from cibhash_ext.neighbours import THUMBNAIL_SIDE, draw_partners, image_neighbours, nearest_neighbours
from cibhash_ext.pipeline import ImagePairs
from cibhash_ext.transforms import AugmentConfig


def numpy_neighbours(pixels: np.ndarray, k: int, dims: int | None) -> np.ndarray:
    """Transcription: centre, project on the leading principal axes (dims None: neither), cosine, k
    best other rows."""
    x = pixels.reshape(len(pixels), -1).astype(np.float64)
    if dims is not None:
        x = x - x.mean(axis=0)
    if dims is not None and x.shape[1] > dims:
        _, vectors = np.linalg.eigh(x.T @ x)
        x = x @ vectors[:, -dims:]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("dims", [8, 64, None])
def test_neighbours_match_a_numpy_transcription(dims):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (300, 1, 6, 6), dtype=torch.uint8, generator=g)
    got = nearest_neighbours(pixels, 5, dims=dims)
    want = numpy_neighbours(pixels.numpy(), 5, dims)
    assert got.dtype == torch.int64 and got.shape == (300, 5)
    assert np.array_equal(got.numpy(), want)


def test_an_image_is_not_its_own_neighbour_and_clusters_stay_apart():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 50, generator=g) * 10
    pixels = centres.repeat_interleave(40, dim=0) + torch.randn(120, 50, generator=g)
    table = nearest_neighbours(pixels, 10)
    assert not (table == torch.arange(120)[:, None]).any()
    assert torch.equal(table // 40, (torch.arange(120) // 40)[:, None].expand(-1, 10))


@pytest.mark.parametrize("k", [0, 5, -1])
def test_k_out_of_range_is_an_error_naming_the_limit(k):
    with pytest.raises(ValueError, match=r"neighbours must be between 1 and .*\(4\), got"):
        nearest_neighbours(torch.zeros(5, 3), k)


def test_partners_are_drawn_among_the_neighbours_uniformly_and_repeatably():
    table = torch.arange(4000).view(1000, 4)
    draw = draw_partners(table, torch.Generator().manual_seed(3))
    assert torch.equal(draw, draw_partners(table, torch.Generator().manual_seed(3)))
    assert ((draw >= table[:, 0]) & (draw <= table[:, 3])).all()
    counts = torch.bincount(draw - table[:, 0], minlength=4)
    assert counts.min() > 200  # 250 expected each


def test_image_files_are_compared_as_thumbnails(tmp_path):
    g = np.random.default_rng(0)
    pixels = g.integers(0, 256, (40, THUMBNAIL_SIDE, THUMBNAIL_SIDE), dtype=np.uint8)
    paths = []
    for i, p in enumerate(pixels):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(p).resize((48, 40)).save(paths[-1])
    thumbs = torch.stack([
        torch.from_numpy(np.array(Image.open(p).convert("L").resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE)))) for p in paths
    ])
    assert torch.equal(image_neighbours(ImageSet(None, paths=paths), 3), nearest_neighbours(thumbs, 3))


def _data(images: torch.Tensor) -> RetrievalData:
    none = ImageSet(None, images=images[:1])
    return RetrievalData(name="t", train=ImageSet(None, images=images), query=none, database=none, multi_label=False,
                         topk=10)


def test_a_table_of_the_images_themselves_gives_the_papers_views_bit_for_bit():
    images = torch.randint(0, 256, (64, 1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    cfg = TrainConfig(dataset="tensor", batch_size=16, neighbours=0)
    aug = cfg.augment_config(1)
    own = torch.arange(64)[:, None]
    source = ImagePairs(_data(images).train, aug, cfg.batch_size, cfg.seed)
    for plain, paired in zip(source.batches(2), source.batches(2, own)):
        assert torch.equal(plain[0], paired[0]) and torch.equal(plain[1], paired[1])


def test_the_second_view_comes_from_the_partner():
    # Each image is one flat grey level; without augmentation a view is that level, normalised.
    levels = torch.arange(0, 256, 4, dtype=torch.uint8)
    images = levels.view(64, 1, 1, 1).expand(64, 1, 8, 8).contiguous()
    cfg = TrainConfig(dataset="tensor", batch_size=16, neighbours=0, augment_preset="small_grayscale",
                      augment=dict(crop_scale=(1, 1), crop_ratio=(1, 1), hflip_p=0, jitter_p=0, erase_p=0))
    aug = cfg.augment_config(1)
    table = (torch.arange(64)[:, None] + torch.tensor([[1, 2]])) % 64
    mean, std = aug.mean[0], aug.std[0]
    level_of = lambda view: torch.round((view[:, 0, 0, 0] * std + mean) * 255).long() // 4  # noqa: E731
    for first, second in ImagePairs(_data(images).train, aug, 16, cfg.seed).batches(0, table):
        assert torch.allclose(first.amax(dim=(1, 2, 3)), first.amin(dim=(1, 2, 3)))
        index, partner = level_of(first), level_of(second)
        assert (((partner - index) % 64 == 1) | ((partner - index) % 64 == 2)).all()


def test_the_pil_pipeline_takes_the_matching_view_of_a_two_view_transform(tmp_path):
    levels = list(range(0, 256, 16))
    paths = []
    for level in levels:
        paths.append(str(tmp_path / f"{level:03d}.png"))
        Image.fromarray(np.full((6, 6), level, np.uint8)).save(paths[-1])
    images = ImageSet(None, paths=paths)
    data = dataclasses.replace(_data(torch.zeros(1, 1, 6, 6, dtype=torch.uint8)), train=images)

    def two_views(image):  # lightly's convention: one image in, its two views out
        value = float(np.asarray(image)[0, 0])
        return torch.tensor([value, 0.0]), torch.tensor([value, 1.0])

    cfg = TrainConfig(dataset="tensor", batch_size=4, neighbours=0)
    table = ((torch.arange(16) + 5) % 16)[:, None]
    for first, second in ImagePairs(data.train, cfg.augment_config(1, False), 4, cfg.seed, transform=two_views).batches(0, table):
        assert (first[:, 1] == 0).all() and (second[:, 1] == 1).all()
        assert torch.equal((first[:, 0] / 16 + 5) % 16, second[:, 0] / 16)


def test_the_default_is_on_for_fashion_mnist_only_and_off_in_the_paper_preset():
    assert load_config().neighbours == 10  # the Fashion-MNIST recipe
    assert TrainConfig().neighbours == 0  # the neutral default
    assert load_config(dataset="folder", data_root="x").neighbours == 0
    assert TrainConfig.paper().neighbours == 0
    with pytest.raises(ValueError, match="neighbours >= 0.*neighbours -1"):
        TrainConfig(neighbours=-1)


def test_neighbour_positives_come_with_milder_crops_unless_crops_are_set():
    assert load_config().augment_config(1).crop_scale == (0.7, 1.0)
    assert load_config(neighbours=0).augment_config(1).crop_scale == (0.5, 1.0)
    assert load_config(augment={"crop_scale": (0.3, 1.0)}).augment_config(1).crop_scale == (0.3, 1.0)
    assert load_config(dataset="folder", data_root="x").augment_config(1).crop_scale == (0.5, 1.0)


def test_a_run_written_before_neighbour_positives_keeps_its_meaning(tmp_path):
    from cibhash_ext.files import write_json
    from cibhash_ext.run_dir import CONFIG_FILE, load_run_config

    older = TrainConfig(neighbours=0).to_dict()
    del older["neighbours"]  # what a run written before the setting existed holds
    write_json(str(tmp_path / CONFIG_FILE), older)
    assert load_run_config(str(tmp_path)).neighbours == 0
    assert load_config(older).neighbours == 10  # a user's settings file gets today's recipe
