"""CIFAR-10, VGG-16, L = 4, rho = 4: the reference recipe (300 epochs, lr 0.1)."""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset.name = "cifar10"
    return config
