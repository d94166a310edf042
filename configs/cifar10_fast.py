"""The fast convertible CIFAR-10 recipe (docs/fast_recipe.md): a QCFS form of
airbench's network (Jordan, 2024) trained for 10 epochs, then converted.

    python -m train.main --config=configs/cifar10_fast.py --workdir=W \\
        --config.dataset.root=DIR

DIR holds train/<class>/*.jpg and test/<class>/*.jpg (an image folder); with
``--config.dataset.name=cifar10`` it is TFDS's cifar10 (``root`` its data_dir).

Network (``cosjax.models.FastNet``): a 2x2 whitening convolution whose
filters come from the training images' patches and stay fixed, then conv
groups of widths 64/256/256 with average pooling, batch norm (scale fixed
at 1) and QCFS activations (L = 4), global average pooling, a linear head.

Recipe, airbench's hyper-parameters carried over to a mean (not summed)
loss: Nesterov SGD, momentum 0.85, batch 1024; airbench's learning rate
11.5 and weight decay 0.0153 "per 1024 examples" become, for the mean loss
at batch B, ``lr = 11.5 * B / S`` and a decoupled decay of ``0.0153 * B / S``
per step, ``S = 1024 * (1 + 1 / (1 - momentum))``; batch-norm biases at 8x
the learning rate (the same decay; airbench's 64x drives a third of the first
group's QCFS channels dead by the peak learning rate); label smoothing 0.2;
the triangular schedule (0.2 lr -> lr at 20% of the steps -> 0); Lookahead of the weights
every 5 steps; random 2-pixel translation (reflection) and alternating
flips, computed in the training step on a training set held on the device.
"""

from configs import default

MOMENTUM = 0.85
BATCH = 1024
_S = 1024 * (1 + 1 / (1 - MOMENTUM))


def get_config():
    config = default.get_config()
    config.dataset.name = "image_folder"
    config.dataset.augment = "flip_translate"
    config.dataset.autoaugment = False
    config.dataset.cutout = 0
    config.dataset.device_augment = True
    config.dataset.on_device = True
    config.dataset.translate = 2
    config.dataset.alternating_flip = True

    config.model.arch = "fastnet"
    config.model.levels = 4
    config.model.fastnet.widths = (64, 256, 256)
    config.model.fastnet.lam_init = 2.0

    opt = config.optim
    opt.epochs = 10
    opt.batch_size = BATCH
    opt.momentum = MOMENTUM
    opt.nesterov = True
    opt.lr = 11.5 * BATCH / _S
    opt.weight_decay = 0.0153 * BATCH / _S
    opt.weight_decay_mode = "decoupled"
    opt.lr_multipliers = "bn_bias=8"
    opt.frozen = ("bn_scale", "whiten/kernel")
    opt.label_smoothing = 0.2
    opt.schedule = "triangular"
    opt.warmup_fraction = 0.2
    opt.initial_lr_fraction = 0.2
    opt.average = "lookahead"
    opt.average_every = 5
    opt.average_decay = 0.95 ** 5

    config.snn.time_steps = (1, 2, 4, 8)
    config.snn.presim = 4
    config.snn.iterations = (1, 2)
    config.snn.eval_batch_size = 400     # splits over 1, 2, 4 or 8 devices
    config.log_every_steps = 12
    config.checkpoint_every_steps = 48
    return config
