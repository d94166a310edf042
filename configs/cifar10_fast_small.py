"""The fast recipe (configs/cifar10_fast.py) with conv groups of 64/128/128
channels (airbench93's widths): about half the multiply-adds per image.

    python -m train.main --config=configs/cifar10_fast_small.py --workdir=W \\
        --config.dataset.root=DIR
"""

from configs import cifar10_fast


def get_config():
    config = cifar10_fast.get_config()
    config.model.fastnet.widths = (64, 128, 128)
    return config
