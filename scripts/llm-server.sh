#!/usr/bin/env bash
# Runs a real OpenAI-compatible model server on 127.0.0.1, in the foreground: llama-cpp-python's
# server with Gemma 3 270M Q4_K_M (both installed by scripts/ensure-llm.sh, on first use).
#
# usage: scripts/llm-server.sh [--port P] [--ctx N] [--threads N] [--alias ID] [-- SERVER ARGS...]
#   --port     port on 127.0.0.1 (default $LLM_PORT, else a free one)
#   --ctx      context size in tokens, shared by prompt and answer (default $LLM_CTX, else 4096)
#   --threads  generation threads (default $LLM_THREADS, else 2; prompt processing uses 2)
#   --alias    the model id the server reports and accepts (default $LLM_MODEL_ALIAS, else gemma-3-270m)
#   after --    passed to `python -m llama_cpp.server` as they are (e.g. --n_batch 256)
#
# Once GET /v1/models answers it prints exactly two lines on stdout and nothing after them:
#   http://127.0.0.1:PORT/v1
#   MODEL_ID
# The server's own output goes to .cadre/llm-server-PORT.log (its tail is shown on stderr if the
# server dies or does not answer within $LLM_START_TIMEOUT seconds, default 180).
# The script's process becomes the server (exec), so whatever stops the script stops the server:
# ctrl-c, SIGTERM, or a test's Child::kill (SIGKILL). The server also exits by itself once the process
# that started the script is gone, so a test that forgets to kill it leaves nothing running.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=${LLM_PORT:-0}
ctx=${LLM_CTX:-4096}
threads=${LLM_THREADS:-2}
alias=${LLM_MODEL_ALIAS:-gemma-3-270m}
timeout=${LLM_START_TIMEOUT:-180}
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --ctx) ctx=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --alias) alias=$2; shift 2 ;;
    --) shift; break ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "llm-server: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
model=$("$root/scripts/ensure-llm.sh")
python="$root/.cadre/venv-llm/bin/python"
if [ "$port" = 0 ]; then
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
log="$root/.cadre/llm-server-$port.log"
base="http://127.0.0.1:$port/v1"
server_pid=$$

# The watcher, detached (a grandchild, so no zombie is left under the server): it waits for
# /v1/models, prints the base URL and the model id on the script's stdout, and reports a server
# that died or never answered (stopping the latter).
(
  "$python" - "$base" "$server_pid" "$timeout" "$log" <<'EOF' &
import json, os, signal, sys, time, urllib.request
base, pid, timeout, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]

def alive():
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too; its state is the field after the ")" that ends the command name.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def fail(why):
    print(f"llm-server: {why}; the end of {log}:", file=sys.stderr)
    try:
        with open(log, errors="replace") as f:
            sys.stderr.write("".join(f.readlines()[-30:]))
    except OSError:
        pass
    sys.exit(1)

deadline = time.monotonic() + timeout
while True:
    if not alive():
        fail("the server exited before it answered")
    try:
        with urllib.request.urlopen(base + "/models", timeout=2) as response:
            models = json.load(response)["data"]
        break
    except Exception:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGTERM)
            fail(f"no answer from {base}/models within {timeout:.0f}s")
        time.sleep(0.2)
print(base)
print(models[0]["id"] if models else "", flush=True)
EOF
)

# The server itself. The environment variables HOST, PORT, CONFIG_FILE and API_KEY would override or
# add to these arguments (llama_cpp.server reads them), so they are dropped; a thread stops the server
# once its parent (whoever started this script) is gone.
exec "$python" - --model "$model" --model_alias "$alias" --host 127.0.0.1 --port "$port" \
  --n_ctx "$ctx" --n_threads "$threads" --n_threads_batch 2 "$@" >"$log" 2>&1 <<'EOF'
import os, runpy, signal, sys, threading, time
for name in list(os.environ):
    if name.upper() in ("HOST", "PORT", "CONFIG_FILE", "API_KEY"):
        del os.environ[name]
parent = os.getppid()

def watch_parent():
    while os.getppid() == parent:
        time.sleep(1)
    print("llm-server: parent process gone, stopping", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
    os._exit(1)

threading.Thread(target=watch_parent, daemon=True).start()
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
EOF
