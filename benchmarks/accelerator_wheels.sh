#!/usr/bin/env bash
# Downloads into .whl/ the wheels that the project's `train` and `test` extras
# need and that the offline GPU machine's Python lacks, for
# benchmarks/accelerator_check.sh (which installs them there). Run in the
# repository root, on a machine that reaches PyPI:
#
#   bash benchmarks/accelerator_wheels.sh          # download, check, print sizes
#   bash benchmarks/accelerator_wheels.sh --list   # only print the names to bring
#   bash benchmarks/accelerator_wheels.sh --image  # only print what the machine has
#
# The GPU machine: Python 3.12, x86-64, jax with the CUDA plugin and the
# packages in IMAGE_HAS below (what its description lists, plus what those
# packages themselves require). Wheels for anything it has are not brought:
# a second copy on PYTHONPATH would shadow the machine's own (numpy, jax, ...).
#
# Left out on purpose: tensorflow-datasets (`train` extra; imported only for
# TFDS data sets, inside train/data/sources.py tfds_splits, train/prepare.py and one
# test of tests/test_pipeline.py: an image-folder run and the tests of the
# check script never import it), ruff (`test` extra; lint only), jax, jaxlib.
#
# Versions: those the project's development environment resolves.
# FALLBACK wheels go to .whl/fallback/ and are installed only where the
# machine's copy is missing or older than the project's packages need.
set -euo pipefail

# distribution==version  # why
WHEELS=(
  ml_collections==1.1.0  # train: configs and their command-line flags
  grain==0.2.18          # train: the input pipeline
  array_record==0.8.6    # grain requires it
  portpicker==1.6.0      # grain requires it (imported with grain)
  tensorboardX==2.6.5    # train: TensorBoard scalars (optional in train/metric_writer.py)
)
# grain's generated protocol buffers need protobuf >= 5.28.3 at run time.
FALLBACK=(protobuf==7.36.2)
# Packages the machine has (its description), then ones it must have because
# those require them: packaging (matplotlib), fsspec and zipp (etils[epath],
# required by orbax-checkpoint), jax and jaxlib.
IMAGE_HAS="absl-py chex etils flax optax orbax-checkpoint numpy pillow pytest matplotlib
tensorboard tensorstore protobuf pyyaml msgpack cloudpickle psutil pyarrow scikit-learn scipy
torch typing-extensions tqdm rich wrapt packaging fsspec zipp jax jaxlib"
LIMIT_MIB=40

names() { for w in "${WHEELS[@]}"; do echo "${w%%==*}"; done; }

case "${1:-}" in
  --list) names; exit 0 ;;
  --image) printf '%s\n' $IMAGE_HAS; exit 0 ;;
  "") ;;
  *) echo "usage: bash benchmarks/accelerator_wheels.sh [--list | --image]" >&2; exit 2 ;;
esac

norm() { echo "$1" | tr 'A-Z_.' 'a-z--'; }
for name in $(names); do
  for have in $IMAGE_HAS; do
    if [ "$(norm "$name")" = "$(norm "$have")" ]; then
      echo "error: $name is in WHEELS but the machine has it (IMAGE_HAS)" >&2
      exit 1
    fi
  done
done

platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
download() {   # download DIR NAME==VERSION...
  local dir=$1; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$dir" "$@"
}
rm -rf .whl
download .whl "${WHEELS[@]}"
download .whl/fallback "${FALLBACK[@]}"

# Every requirement of every wheel (for Linux, Python 3.12, no extras) must be
# on the machine or among the wheels.
python3 - "$IMAGE_HAS $(names | tr '\n' ' ') ${FALLBACK[*]%%==*}" .whl/*.whl <<'EOF'
import re
import sys
import zipfile

try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


known = {norm(n) for n in sys.argv[1].split()}
env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
missing = []
for path in sys.argv[2:]:
    with zipfile.ZipFile(path) as wheel:
        meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        lines = wheel.read(meta).decode().splitlines()
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if (req.marker is None or req.marker.evaluate(env)) and norm(req.name) not in known:
                missing.append(f"{path.split('/')[-1]} requires {req}")
if missing:
    sys.exit("error: not on the machine and not among the wheels:\n  " + "\n  ".join(missing))
EOF

ls -l .whl/*.whl .whl/fallback/*.whl | awk '{printf "%9.2f MiB  %s\n", $5 / 1048576, $NF}'
total=$(cat .whl/*.whl .whl/fallback/*.whl | wc -c)
echo "total: $(awk -v b="$total" 'BEGIN { printf "%.2f", b / 1048576 }') MiB in .whl/"
if git check-ignore -q .whl 2>/dev/null; then :; else
  echo "note: .whl/ is not ignored by git; before carrying it: echo /.whl/ >> $(git rev-parse --git-path info/exclude)"
fi
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "error: the wheels exceed $LIMIT_MIB MiB" >&2
  exit 1
fi
