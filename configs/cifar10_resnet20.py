"""CIFAR-10, ResNet-20, L = 4, rho = 4: the reference recipe (300 epochs, lr 0.1)."""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.model.arch = "resnet20"
    return config
