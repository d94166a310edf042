"""ImageNet, ResNet-34 (official layout: 3x3 stride-1 stem, no max-pool), L = 16, rho = 8."""

from configs import imagenet


def get_config():
    config = imagenet.get_config()
    config.model.arch = "resnet34"
    return config
