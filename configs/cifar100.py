"""CIFAR-100, VGG-16, L = 4, rho = 4: the reference recipe (300 epochs, lr 0.02, Cutout 8)."""

from configs import default
from train.data.host_augment import CIFAR100_MEAN, CIFAR100_STD


def get_config():
    config = default.get_config()
    config.dataset.name = "cifar100"
    config.dataset.cutout = 8
    config.dataset.mean, config.dataset.std = CIFAR100_MEAN, CIFAR100_STD
    config.optim.lr = 0.02
    return config
