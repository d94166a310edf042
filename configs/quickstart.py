"""Quick start on scikit-learn's bundled handwritten digits (no download).

ResNet-20 with L = 4 on 8x8 images: trains, converts, calibrates and reports
in a few minutes on 2 CPU cores.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.dataset.name = "digits"
    config.dataset.image_size = 8
    config.dataset.augment = "none"
    config.dataset.mean, config.dataset.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    config.model.arch = "resnet20"
    config.optim.epochs = 30
    config.optim.batch_size = 64
    config.optim.lr = 0.1
    config.snn.time_steps = (1, 2, 4, 8, 16, 32)
    config.snn.presim = 4
    config.snn.iterations = (1, 2)
    config.snn.eval_batch_size = 120
    config.log_every_steps = 50
    config.checkpoint_every_steps = 200
    return config
