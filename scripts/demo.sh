#!/usr/bin/env bash
# Install everything, then run the main job: a heterogeneous fleet fine-tunes SmolLM2-135M over an embedded broker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fedge demo "$@"
