"""ImageNet (imagenet2012 via TFDS, manual download), VGG-16, L = 16, rho = 8.

lr 0.1, weight decay 1e-4, 300 epochs, random-resized crop 224 + flip;
evaluation resize 256 + centre crop 224.
"""

from configs import default
from train.data.host_augment import IMAGENET_MEAN, IMAGENET_STD


def get_config():
    config = default.get_config()
    config.dataset.name = "imagenet2012"
    config.dataset.test_split = "validation"
    config.dataset.image_size = 224
    config.dataset.augment = "imagenet"
    config.dataset.autoaugment = False
    config.dataset.cutout = 0
    config.dataset.mean, config.dataset.std = IMAGENET_MEAN, IMAGENET_STD
    config.model.levels = 16
    config.optim.weight_decay = 1e-4
    config.optim.batch_size = 256
    config.snn.presim = 8
    config.snn.time_steps = (1, 2, 4, 8, 16, 32)
    config.snn.eval_batch_size = 64
    # SNN evaluation in chunks of 16 images: the layer-by-layer simulation of
    # S = 32 steps at 224x224 holds [S, 16, H, W, C] per layer, which fits one
    # 80 GB GPU (ResNet-34 needs 225 GiB for 64 at once; benchmarks/aot.py)
    # and spreads each chunk over up to 16 devices. Same results.
    config.snn.micro_batch = 16
    config.checkpoint_every_steps = 2000
    return config
