#!/usr/bin/env bash
# One prepared script for a machine with a GPU (or TPU): correctness, speed,
# the input pipeline, and a paper-scale CIFAR-10 ResNet-20 run with plain and
# COS evaluation at T = 1..32. Figures go to stdout and to $OUT (default
# workdirs/accelerator_check).
#
#   bash benchmarks/accelerator_check.sh CIFAR10_JPEG_TARBALL [EPOCHS]
#
# CIFAR10_JPEG_TARBALL: a .tar.gz of an image folder (train/<class>/*.jpg,
# test/<class>/*.jpg). EPOCHS: training epochs of the ResNet-20 run (the
# reference recipe is 300; the schedule is scaled to the epochs given, and the
# number used is printed with the results). Needs the project's `train`
# dependencies installed next to an accelerator build of jax
# (pip install -e '.[train,cuda12]' or '.[train,tpu]').
#
# Not yet run on an accelerator: no GPU or TPU has been available to the
# project's sessions. Each step is independent; a failing step is reported
# and the script goes on.
set -uo pipefail
tarball=${1:?usage: bash benchmarks/accelerator_check.sh CIFAR10_JPEG_TARBALL [EPOCHS]}
epochs=${2:-60}
out=${OUT:-workdirs/accelerator_check}
data=$(mktemp -d)
mkdir -p "$out"

step() {   # step NAME COMMAND...: runs, times and logs one step
  local name=$1; shift
  echo "=== $name: $*"
  local start=$SECONDS
  "$@" 2>&1 | tee "$out/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s"
}

step devices python -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())"
# Correctness on the accelerator: spike-exact parity and the fast paths.
step tests python -m pytest -q -x tests/test_neuron.py tests/test_simulate.py \
  tests/test_performance_paths.py tests/test_device_augment.py
# Speed: ANN, SNN (T = 1..16, rho 0/4) and training step, CIFAR size, batch 128.
step speed_resnet20 python -m benchmarks.speed --arch resnet20 --batch 128 --repeats 9
step speed_vgg16 python -m benchmarks.speed --arch vgg16 --batch 128 --repeats 9

tar -xzf "$tarball" -C "$data"
root=$(dirname "$(find "$data" -type d -name train -print -quit)")
workers=$(( $(nproc) - 2 ))
step input_pipeline python -m benchmarks.input_pipeline --config=configs/cifar10.py \
  --config.model.arch=resnet20 --config.dataset.name=image_folder \
  --config.dataset.root="$root" --config.dataset.device_augment=True \
  --config.data_workers="$workers" --workers="0,2,$workers"
# Paper-scale run: the CIFAR-10 ResNet-20 recipe for $epochs epochs, then
# plain conversion and COS (rho = 4, k = 1, 2) at T = 1..32 on the whole test set.
step resnet20_run python -m train.main --config=configs/cifar10_resnet20.py \
  --workdir="$out/resnet20_e$epochs" --config.dataset.name=image_folder \
  --config.dataset.root="$root" --config.optim.epochs="$epochs" \
  --config.dataset.device_augment=True --config.data_workers="$workers" \
  --config.snn.iterations='(1,2)' --config.snn.eval_batch_size=500
cat "$out/resnet20_e$epochs/results.md" 2>/dev/null
rm -rf "$data"
