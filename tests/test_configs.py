"""Every shipped config loads, validates, and holds the reference recipe
(docs/method.md) for its data set."""

import importlib
import pathlib

import pytest

from train.validate import validate_config

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
SHIPPED = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "default"))

# config -> (data set, arch, L, epochs, lr, weight decay, rho, cutout)
FULL_SIZE = {
    "cifar10": ("cifar10", "vgg16", 4, 300, 0.1, 5e-4, 4, 16),
    "cifar10_resnet20": ("cifar10", "resnet20", 4, 300, 0.1, 5e-4, 4, 16),
    "cifar100": ("cifar100", "vgg16", 4, 300, 0.02, 5e-4, 4, 8),
    "cifar100_resnet20": ("cifar100", "resnet20", 4, 300, 0.02, 5e-4, 4, 8),
    "imagenet": ("imagenet2012", "vgg16", 16, 300, 0.1, 1e-4, 8, 0),
    "imagenet_resnet34": ("imagenet2012", "resnet34", 16, 300, 0.1, 1e-4, 8, 0),
}


def load(name):
    return importlib.import_module(f"configs.{name}").get_config()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_validates(name):
    validate_config(load(name))


def test_every_full_size_setting_of_the_paper_has_a_config():
    assert set(FULL_SIZE) <= set(SHIPPED)


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_config_holds_the_reference_recipe(name):
    config = load(name)
    dataset, arch, levels, epochs, lr, wd, rho, cutout = FULL_SIZE[name]
    assert (config.dataset.name, config.model.arch, config.model.levels) == (dataset, arch, levels)
    assert (config.optim.epochs, config.optim.lr, config.optim.weight_decay) == (epochs, lr, wd)
    assert config.snn.presim == rho and config.dataset.cutout == cutout
    assert config.dataset.autoaugment == dataset.startswith("cifar")
    assert max(config.snn.time_steps) >= 8


def test_cpu_reproduction_config_is_the_cifar10_recipe_shortened():
    config, full = load("cifar10_cpu_resnet20"), load("cifar10_resnet20")
    assert config.dataset.name == "image_folder" and config.model.arch == "resnet20"
    assert config.optim.epochs < full.optim.epochs
    for field in ("lr", "weight_decay", "momentum", "batch_size"):
        assert config.optim[field] == full.optim[field]
    assert config.dataset.cutout == 16 and config.dataset.autoaugment
    assert tuple(config.snn.time_steps) == (1, 2, 4, 8, 16, 32) and config.snn.presim == 4
    assert tuple(config.snn.iterations) == (1, 2)


def test_a_config_lacking_a_default_field_is_refused_in_one_line():
    """The pipeline reads every field of configs/default.py directly: a config
    file not built on it is refused up front, naming what it lacks."""
    import ml_collections

    from configs import quickstart
    from train.errors import ConfigError

    config = quickstart.get_config()
    validate_config(config)
    fields = config.to_dict()
    del fields["optim"]["momentum"], fields["dataset"]["jpeg_draft"]
    with pytest.raises(ConfigError, match=r"^the config lacks dataset.jpeg_draft, optim.momentum: "
                                          r"build config files on configs.default.get_config\(\)"):
        validate_config(ml_collections.ConfigDict(fields))
