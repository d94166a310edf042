"""CIFAR-100, ResNet-20, L = 4, rho = 4: the reference recipe (300 epochs, lr 0.02)."""

from configs import cifar100


def get_config():
    config = cifar100.get_config()
    config.model.arch = "resnet20"
    return config
