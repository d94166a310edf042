#!/usr/bin/env bash
# One prepared script for a lent GPU machine (or a TPU VM): correctness, speed,
# the input pipeline, and the fast CIFAR-10 recipe (configs/cifar10_fast.py)
# with plain and COS evaluation at T = 1, 2, 4, 8, all in ONE command of at
# most BUDGET_S seconds (default 510), most valuable first.
#
#   bash benchmarks/accelerator_check.sh CIFAR10_JPEG_TARBALL [EPOCHS]
#
# CIFAR10_JPEG_TARBALL: a .tar.gz of an image folder (train/<class>/*.jpg,
# test/<class>/*.jpg). EPOCHS: epochs of the fast recipe's run (default: the
# config's 10; the schedule is scaled to the epochs used).
#
# The device tool (a machine with no network that runs one command in a copy
# of the repository root; $OUT comes back). Prepare in the repository root:
#
#   bash benchmarks/accelerator_wheels.sh      # .whl/: the packages the machine lacks, ~5 MiB
#   mkdir -p .data && cp CIFAR10_JPEG_TARBALL .data/cifar10-jpeg.tar.gz   # ~19 MiB
#   printf '/.whl/\n/.data/\n' >> "$(git rev-parse --git-path info/exclude)"
#
# (about 25 MiB with the repository's files; the tool carries 64 MiB), then
# call the tool with
#
#   command:   bash benchmarks/accelerator_check.sh .data/cifar10-jpeg.tar.gz
#   carry:     [".whl", ".data"]
#   timeout_s: 600
#
# BUDGET_S=510 leaves 90 s to the 600 s limit and, of 900 s of device time,
# 390 s for the machine's start and the transfers. With less device time
# left, prefix the command with BUDGET_S=<device seconds left - 390>.
#
# Files in $OUT (default workdirs/accelerator_check): check.log (every step's
# output, in order, written as it comes), summary.txt (each step's exit
# status and seconds), and the fast recipe run's results.md, results.json,
# metrics.jsonl. Each step runs under a time limit; a failing step is
# reported and the script goes on. SKIP="tests speed_vgg16 ..." (step names)
# skips steps, leaving their time to the fast recipe run.
#
# Not yet run on an accelerator. Dry-run on the 2-core CPU machine with
# Python 3.12 and the wheels installed as below (the steps ran into their
# time limits there, as expected on a CPU).
set -uo pipefail
start=$SECONDS
tarball=${1:?usage: bash benchmarks/accelerator_check.sh CIFAR10_JPEG_TARBALL [EPOCHS]}
epochs=${2:-}
budget=${BUDGET_S:-510}
py=${PYTHON:-python3}
out=${OUT:-workdirs/accelerator_check}
mkdir -p "$out"
log=$out/check.log
: > "$log"
: > "$out/summary.txt"

left() { echo $((budget - (SECONDS - start))); }

step() {   # step NAME LIMIT_S COMMAND...: runs, times and logs one step
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  if [[ " ${SKIP:-} " == *" $name "* ]]; then
    echo "=== $name: skipped (SKIP)" | tee -a "$log" "$out/summary.txt"
    return
  fi
  echo "=== $name (limit ${limit} s): $*" | tee -a "$log"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
  local status=${PIPESTATUS[0]}
  local line="=== $name: exit $status, $((SECONDS - t0)) s"
  if [ "$status" = 124 ]; then
    line="$line (time limit)"
    echo | tee -a "$log"     # the step's last line may be unfinished
  fi
  echo "$line" | tee -a "$log" "$out/summary.txt"
}

# Packages: the wheels in .whl/ (benchmarks/accelerator_wheels.sh) whose
# distribution the machine lacks, or has older than the project needs, go to
# /tmp/site without network or dependencies; the machine's own stay in use.
export PYTHONPATH=$PWD
if [ -d .whl ]; then
  wheels=$("$py" - .whl <<'EOF'
import importlib.metadata as md
import pathlib
import sys

minimum = {"protobuf": (5, 28, 3)}   # grain's generated protocol buffers
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("**/*.whl")):
    name = wheel.name.split("-")[0]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        print(wheel)
        continue
    parts = tuple(int(p) for p in have.split(".")[:3] if p.isdigit())
    if parts < minimum.get(name.lower(), ()):
        print(wheel)
EOF
)
  echo "=== wheels to install: ${wheels:-none}" | tee -a "$log"
  if [ -n "$wheels" ]; then
    # shellcheck disable=SC2086
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site $wheels 2>&1 | tee -a "$log"
    export PYTHONPATH=/tmp/site:$PWD
  fi
fi

step devices 60 "$py" -c "import importlib.metadata as md, jax; from train.job import devices_line
import cosjax, grain, ml_collections, train.main
print('jax', jax.__version__, {d: md.version(d) for d in ('jaxlib', 'flax', 'optax', 'grain', 'numpy')})
print(devices_line())"
# Correctness on the accelerator: spike-exact parity with NumPy references,
# the fast paths and the device augmentation (86 tests; the two slowest,
# 43 of 200 s on the 2-core CPU, left out).
step tests 100 "$py" -m pytest -q -x -p no:cacheprovider tests/test_neuron.py tests/test_simulate.py \
  tests/test_performance_paths.py tests/test_device_augment.py \
  -k "not test_batch_independence and not test_float64_whole_path"
# Speed, CIFAR size, batch 128: ANN forward, SNN at T = 1, 4, 16 (rho 0 and 4,
# k = 1) and the training step, with compile times.
for arch in resnet20 vgg16; do
  step "speed_$arch" 60 "$py" -m benchmarks.speed --arch "$arch" --batch 128 --repeats 5 \
    --time-steps 1,4,16 --presim 0,4 --iterations 1
done

# The ahead-of-time plan (benchmarks.aot: deviceless compile, data-sheet
# roofline ESTIMATES) beside the same programs compiled and timed here, with
# the ratios measured / planned (GPUs described in benchmarks/gpu_targets.py).
step plan_check 150 "$py" -m benchmarks.plan_check --config=configs/cifar100.py --repeats 5

data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
step untar 60 tar -xzf "$tarball" -C "$data"
root=$(dirname "$(find "$data" -type d -name train -print -quit)")
workers=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))
common=(--config.model.arch=resnet20 --config.dataset.name=image_folder
        --config.dataset.root="$root" --config.dataset.device_augment=True
        --config.data_workers="$workers")
step input_pipeline 90 "$py" -m benchmarks.input_pipeline --config=configs/cifar10.py "${common[@]}" \
  --workers="$workers" --batches=40 --steps=200 --repeats=5

# Paper-scale run: the fast convertible recipe (configs/cifar10_fast.py,
# docs/fast_recipe.md): 10 epochs of the QCFS FastNet 64/256/256, then the
# ANN, plain conversion and COS (rho = 4, k = 1, 2) at T = 1, 2, 4, 8 on the
# whole test set, with and without 6-view test-time augmentation. On the
# 2-core CPU its training takes about an hour; EPOCHS overrides the 10.
run=$data/cifar10_fast
fast_epochs=()
[ -n "$epochs" ] && fast_epochs=(--config.optim.epochs="$epochs")
step fast_run $(( $(left) > 30 ? $(left) - 15 : 15 )) "$py" -m train.main \
  --config=configs/cifar10_fast.py --workdir="$run" --config.dataset.root="$root" \
  --config.snn.tta=2 "${fast_epochs[@]}"
for f in results.md results.json metrics.jsonl; do
  cp "$run/$f" "$out/" 2>/dev/null
done
cat "$out/results.md" 2>/dev/null | tee -a "$log"
echo "=== total: $((SECONDS - start)) s of a $budget s budget" | tee -a "$log" "$out/summary.txt"
