#!/usr/bin/env bash
# The wheels scripts/cuda_check.sh needs on a lent GPU machine that has torch, transformers and peft but no package
# index (Python 3.12, x86-64): bitsandbytes and the few fedge imports it lacks, into .whl/ (git-ignored, ~46 MB),
# which cuda_check.sh installs when it finds it. Carry .whl with the run.
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=()
for tag in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  bitsandbytes==0.50.2 galore-torch==1.0 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
du -sh .whl
