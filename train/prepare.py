"""Prepares a TFDS data set once, in the array-record format the pipeline reads.

    python -m train.prepare --dataset=cifar10 --data_dir=DIR
    python -m train.prepare --dataset=imagenet2012 --data_dir=DIR --manual_dir=DIR_WITH_TARS

CIFAR is downloaded by TFDS (needs internet). ImageNet is never downloaded:
put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in ``--manual_dir``
as TFDS documents. Preparing needs TensorFlow (``pip install tensorflow-cpu``);
training and evaluation afterwards do not.
"""

from __future__ import annotations

import sys

from absl import app, flags

flags.DEFINE_enum("dataset", None, ["cifar10", "cifar100", "imagenet2012"], "TFDS data set.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (then --config.dataset.root=DIR).")
flags.DEFINE_string("manual_dir", None, "Directory holding the manually downloaded ImageNet tars.")
flags.mark_flags_as_required(["dataset"])
FLAGS = flags.FLAGS


def main(argv) -> None:
    del argv
    import tensorflow_datasets as tfds

    if FLAGS.dataset == "imagenet2012" and not FLAGS.manual_dir:
        print("error: imagenet2012 needs --manual_dir with ILSVRC2012_img_train.tar and "
              "ILSVRC2012_img_val.tar", file=sys.stderr)
        sys.exit(2)
    builder = tfds.builder(FLAGS.dataset, data_dir=FLAGS.data_dir, file_format="array_record")
    config = tfds.download.DownloadConfig(manual_dir=FLAGS.manual_dir)
    builder.download_and_prepare(download_config=config)
    print(f"prepared {FLAGS.dataset} in {builder.data_dir}")


if __name__ == "__main__":
    app.run(main)
