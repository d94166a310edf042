"""CPU-scale reproduction on CIFAR-10 (JPEG copy, image folder): QCFS ResNet-20,
L = 4, the reference recipe scaled to about 90 minutes of a 2-core CPU.

    python -m train.main --config=configs/cifar10_cpu_resnet20.py \\
        --workdir=workdirs/cifar10_cpu --config.dataset.root=DIR

DIR holds train/<class>/*.jpg and test/<class>/*.jpg. ResNet-20 is the
smallest architecture of the reference (41 M multiply-adds per image), so it
trains the most epochs in the time; measured here at about 65 images/s for
training, so 7 epochs of 50,000 images fit in about 90 minutes. The cosine
schedule runs over those epochs; the augmentation is the reference one (crop
with 4-pixel padding, flip, AutoAugment CIFAR-10 policy, Cutout 16).
"""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.dataset.name = "image_folder"
    config.model.arch = "resnet20"
    config.optim.epochs = 7
    config.snn.time_steps = (1, 2, 4, 8, 16, 32)
    config.snn.presim = 4
    config.snn.iterations = (1, 2)
    config.checkpoint_every_steps = 200
    return config
