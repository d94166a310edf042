"""Defaults shared by every config: the reference recipe (docs/method.md).

Every field can be overridden on the command line, e.g.
``--config.model.arch=resnet20 --config.snn.presim=8``.
"""

import ml_collections

from train.data.host_augment import CIFAR10_MEAN, CIFAR10_STD


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 42
    # train_eval: train (or resume) then evaluate; eval: evaluate the checkpoint
    # in the workdir (or config.init_from); analyze: offset-spike and cost analysis.
    config.mode = "train_eval"
    config.init_from = ""          # a PyTorch .pth state dict of the official code
    config.precision = "highest"   # matmul/conv precision: highest | high | default
    config.data_threads = 4

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "cifar10"      # cifar10 | cifar100 | imagenet2012 | image_folder | digits
    config.dataset.root = ""             # TFDS data_dir, or the image folder root
    config.dataset.train_split = "train"
    config.dataset.test_split = "test"
    config.dataset.image_size = 32
    config.dataset.eval_resize = 256     # ImageNet eval: resize shorter side, then centre crop
    config.dataset.augment = "cifar"     # cifar | imagenet | none
    config.dataset.autoaugment = True
    config.dataset.cutout = 16           # Cutout hole side; 0 disables
    config.dataset.mean = CIFAR10_MEAN
    config.dataset.std = CIFAR10_STD
    config.dataset.skip_broken = False   # True: skip images that fail to decode or have another
                                         # size (listed in results.json), instead of stopping

    # Input pipeline (issue 13): host memory, worker processes, device augmentation.
    config.data_prefetch_batches = 2     # training batches buffered ahead on the host (per worker;
                                         # at least data_threads)
    config.data_workers = 0              # >0: decode + augment in this many worker processes
                                         # (same batches); 0: threads in the training process
    config.dataset.device_augment = False  # True: the host sends uint8 and the jitted training
                                         # step finishes the augmentation. augment=cifar: the
                                         # host does AutoAugment, the step crop, flip,
                                         # normalisation and Cutout (train/data/device_augment.py
                                         # lists the differences to the reference order);
                                         # augment=imagenet: the host decodes and does the
                                         # random-resized crop, the step flip and normalisation
    config.dataset.jpeg_draft = True     # augment=imagenet on an image folder: decode each JPEG
                                         # at 1/2, 1/4 or 1/8 size where the crop/resize still
                                         # gets enough pixels (train/data/decoding.py); False: full size
    config.dataset.on_device = False     # True (device_augment, no AutoAugment): the training
                                         # set is decoded once and held on every device as uint8
                                         # (CIFAR: 147 MiB); each step gets only the batch's
                                         # example indices (same batches, same parameters)

    config.dataset.translate = 2         # augment=flip_translate: shift by up to this many pixels
    config.dataset.alternating_flip = True  # augment=flip_translate: each example flipped every
                                         # other epoch (False: a fair coin each epoch)

    config.model = ml_collections.ConfigDict()
    config.model.arch = "vgg16"
    config.model.levels = 4              # L, quantisation levels of QCFS
    # arch=fastnet only (cosjax.models.FastNet, docs/fast_recipe.md):
    config.model.fastnet = ml_collections.ConfigDict()
    config.model.fastnet.widths = (64, 256, 256)   # one conv group per width
    config.model.fastnet.convs_per_group = 2
    config.model.fastnet.activation = "qcfs"       # qcfs | gelu (gelu: ANN only, not convertible)
    config.model.fastnet.pool = "avg"              # avg | max (max: ANN only, not convertible)
    config.model.fastnet.pool_after_activation = False   # True: conv-BN-act-pool (pool the
                                                         # activations), not conv-pool-BN-act
    config.model.fastnet.dirac_init = True         # identity init of the first filters
    config.model.fastnet.lam_init = 8.0            # initial QCFS threshold
    config.model.fastnet.head_scale = 1 / 9        # the logits are scaled by this
    config.model.fastnet.bn_epsilon = 1e-5         # flax's; airbench's 1e-12 gives a channel
                                                   # that QCFS makes constant 1e6x gradients
    config.model.fastnet.whiten_examples = 5000    # training images whose patches set the
                                                   # whitening filters; 0 = random init, trained
    config.model.fastnet.whiten_eps = 5e-4

    config.optim = ml_collections.ConfigDict()
    config.optim.epochs = 300
    config.optim.batch_size = 128        # global, split over all devices
    config.optim.lr = 0.1
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-4     # on every parameter, lambda included
    # More of the optimiser (train/optimizer.py); the defaults are the reference recipe.
    config.optim.nesterov = False
    config.optim.weight_decay_mode = "coupled"   # coupled: lr * wd per step; decoupled: wd per
                                                 # step, whatever the group's learning rate
    config.optim.schedule = "cosine"     # cosine | triangular
    config.optim.warmup_fraction = 0.2   # triangular: the peak, as a fraction of the steps
    config.optim.initial_lr_fraction = 0.2   # triangular: the first step's rate / lr
    config.optim.lr_multipliers = ""     # "GROUP=FACTOR,...", GROUP: bn_scale, bn_bias, lam,
                                         # kernel, bias, or a path pattern like "whiten/*"
    config.optim.frozen = ()             # groups (or path patterns) never changed, e.g. ("bn_scale",)
    config.optim.label_smoothing = 0.0
    config.optim.average = "none"        # none | ema | lookahead (train/weight_average.py)
    config.optim.average_every = 5       # steps between updates of the average
    config.optim.average_decay = 0.95 ** 5   # the average's weight at the last step

    config.snn = ml_collections.ConfigDict()
    config.snn.time_steps = (1, 2, 4, 8, 16, 32)   # T values reported
    config.snn.presim = 4                # rho of COS
    config.snn.iterations = (1,)         # k values of COS to evaluate
    config.snn.methods = ()              # more conversion methods, beside plain and COS
                                         # (docs/method.md section 5): "srp" (tau =
                                         # snn.presim), "srp:TAU", "group" (m = 4),
                                         # "group:M", "parallel", "signed"; on the command
                                         # line: "--config.snn.methods=('srp','parallel')"
    config.snn.eval_batch_size = 200     # global; splits over 1, 2, 4 or 8 devices
    config.snn.micro_batch = 0           # >0: simulate eval batches in chunks of this many
                                         # samples (bounds memory; same results); 0 = off
    config.snn.max_eval_examples = 0     # >0: a seeded random subset of this many test
                                         # images (all classes); 0 = the whole test set
    # Static calibration (docs/static_calibration.md): one initial potential per
    # neuron/channel/layer from `calib_size` training images (eval transform),
    # evaluated as the method `static` with no pre-simulation. Evaluation only.
    config.snn.static = ml_collections.ConfigDict()
    config.snn.static.enabled = False
    config.snn.static.window = 4              # W, steps over which offsets are minimised
    config.snn.static.estimator = "grid"      # grid | mean_cos
    config.snn.static.granularity = "channel" # neuron | channel | layer
    config.snn.static.calib_size = 512        # training images (a seeded random subset)
    config.snn.static.clip_range = (-0.5, 1.5)  # mean_cos: clip per-sample v0 before
                                              # averaging; () = no clipping (not advised)
    config.snn.static.potentials = ""         # a static_potentials.npz to evaluate as it
                                              # is (no calibration); "" = calibrate, or reuse
                                              # WORKDIR's file when its settings match

    # Test-time augmentation (docs/fast_recipe.md): 0 off; 1: the image and
    # its mirror; 2: also both translated by one pixel diagonally each way
    # (6 views). The ANN and every SNN row are reported with and without it.
    config.snn.tta = 0

    config.analysis = ml_collections.ConfigDict()
    config.analysis.window = 0           # offset window W; 0 = rho (or L when rho = 0)

    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 3
    return config
