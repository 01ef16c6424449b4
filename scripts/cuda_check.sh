#!/usr/bin/env bash
# The CUDA proof, run the first time a GPU is at hand (at most 8 minutes on one GPU): fedge's trainer on SmolLM2-135M
# and Qwen2.5-0.5B in NF4, INT8 and bf16, peak memory and step time against the planner, and the refitted calibration
# written to fedge/profiles/calibration/cuda.json, marked measured (benchmarks/cuda_check.py). Commit that file.
# Without CUDA it exits non-zero and says so. Extra arguments go to the benchmark (--quick: a shorter check).
set -euo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if ! $py -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "cuda_check: no CUDA device here (torch cannot see one); nothing was measured" >&2
  exit 2
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # wheels carried to a GPU machine without an index (scripts/device_wheels.sh)
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fedge-site .whl/*.whl
  export PYTHONPATH="/tmp/fedge-site:$PYTHONPATH"
fi
exec timeout 480 $py benchmarks/cuda_check.py "$@"
