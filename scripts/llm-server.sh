#!/usr/bin/env bash
# Runs a real OpenAI-compatible model server on 127.0.0.1, in the foreground: llama-cpp-python's
# server with Gemma 3 270M Q4_K_M (both installed by scripts/ensure-llm.sh, on first use).
#
# usage: scripts/llm-server.sh [--port P] [--ctx N] [--threads N] [--alias ID] [--json-schema]
#                              [--outlive-parent] [-- SERVER ARGS...]
#   --port     port on 127.0.0.1 (default $LLM_PORT, else a free one)
#   --ctx      context size in tokens, shared by prompt and answer (default $LLM_CTX, else 4096)
#   --threads  generation threads (default $LLM_THREADS, else 1; prompt processing uses 2)
#   --alias    the model id the server reports (default $LLM_MODEL_ALIAS, else gemma-3-270m); a
#              request may name any model, this one answers
#   --json-schema  take OpenAI's response_format {"type":"json_schema","json_schema":{"schema":S}}
#              as llama-cpp-python's own {"type":"json_object","schema":S}, which constrains the
#              answer to S (without it, llama-cpp-python 0.3.36 answers json_schema with HTTP 500)
#   --outlive-parent  keep serving after the process that started the script is gone
#   after --   passed to `python -m llama_cpp.server` as they are (e.g. --n_batch 256)
#
# Once GET /v1/models answers it prints exactly two lines on stdout and nothing after them:
#   http://127.0.0.1:PORT/v1
#   MODEL_ID
# The server's own output goes to .cadre/llm-server-PORT.log (its tail is shown on stderr if the
# server dies or does not answer within $LLM_START_TIMEOUT seconds, default 180).
# The script's process becomes the server (exec), so whatever stops the script stops the server:
# ctrl-c, SIGTERM, or a test's Child::kill (SIGKILL). Unless --outlive-parent, the server also exits
# by itself once the process that started the script is gone, so a test that forgets to kill it (a
# server kept in a static, a panic) leaves nothing running.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=${LLM_PORT:-0}
ctx=${LLM_CTX:-4096}
threads=${LLM_THREADS:-1}
alias=${LLM_MODEL_ALIAS:-gemma-3-270m}
timeout=${LLM_START_TIMEOUT:-180}
watch_parent=1
json_schema=0
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --ctx) ctx=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --alias) alias=$2; shift 2 ;;
    --json-schema) json_schema=1; shift ;;
    --outlive-parent) watch_parent=0; shift ;;
    --) shift; break ;;
    -h | --help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "llm-server: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
model=$("$root/scripts/ensure-llm.sh")
python="$root/.cadre/venv-llm/bin/python"
# A free port, or a check that the given one is free: another server answering /v1/models there
# would otherwise pass for this one.
port=$("$python" - "$port" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError as error:
    sys.exit(f"llm-server: cannot listen on 127.0.0.1:{sys.argv[1]}: {error.strerror}")
print(s.getsockname()[1])
EOF
)
log="$root/.cadre/llm-server-$port.log"
base="http://127.0.0.1:$port/v1"
server_pid=$$

# The watcher, detached (the subshell exits at once, so no zombie is left under the server): it
# waits for /v1/models, prints the base URL and the model id on the script's stdout, and reports a
# server that died or never answered (stopping the latter).
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
            fail(f"no answer from {base}/models within {timeout:g}s")
        time.sleep(0.2)
print(base)
print(models[0]["id"] if models else "", flush=True)
EOF
)

# The server itself. Measured on this 2-core machine with a cargo build beside it: generation on 2
# threads whose OpenMP workers spin while they wait (the default) collapses to 4-10 tokens/s on the
# first answers, 2 sleeping threads give 25-37, 1 thread 30-48 (2 spinning threads on an idle
# machine: about 66). So generation gets 1 thread, and prompt processing 2 threads that sleep.
# The server's default logits_all=true computes the 262,144-word vocabulary's logits for every
# prompt token (only `logprobs` needs them): off, a 580-token prompt takes 2-3 s instead of 4-8 s.
# The server answers one request at a time, the others wait; by default a waiting request would
# also cut a streamed answer short (a bare [DONE], no finish_reason), hence --interrupt_requests false.
# The environment variables HOST, PORT, CONFIG_FILE and API_KEY would override or add to these
# arguments (llama_cpp.server reads them), so they are dropped; a thread stops the server once its
# parent (whoever started this script) is gone. The first argument only names the process
# (`pgrep -af llama_cpp.server` finds it).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} CADRE_LLM_WATCH_PARENT=$watch_parent
export CADRE_LLM_JSON_SCHEMA=$json_schema
exec "$python" - llama_cpp.server --model "$model" --model_alias "$alias" \
  --host 127.0.0.1 --port "$port" --n_ctx "$ctx" --n_threads "$threads" --n_threads_batch 2 \
  --logits_all false --interrupt_requests false --chat_format gemma3 "$@" >"$log" 2>&1 <<'EOF'
import json, os, runpy, signal, sys, threading, time
from llama_cpp import llama_chat_format as chat_format

for name in list(os.environ):
    if name.upper() in ("HOST", "PORT", "CONFIG_FILE", "API_KEY"):
        del os.environ[name]

# The model file carries no chat template, and llama-cpp-python's own formats fit it badly: its
# fallback ("llama-2") wraps the turns in [INST] markers Gemma never saw, and its "gemma" format
# drops system messages. This is Gemma 3's own template: the system text opens the first user turn.
@chat_format.register_chat_format("gemma3")
def format_gemma3(messages, **kwargs):
    def text(message):
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        return content.strip()

    prefix = "\n\n".join(text(m) for m in messages if m["role"] == "system")
    prefix = prefix + "\n\n" if prefix else ""
    turns = [m for m in messages if m["role"] != "system"] or [{"role": "user", "content": ""}]
    prompt = ""
    for message in turns:
        role = "model" if message["role"] == "assistant" else "user"
        prompt += f"<start_of_turn>{role}\n{prefix}{text(message)}<end_of_turn>\n"
        prefix = ""
    prompt += "<start_of_turn>model\n"
    return chat_format.ChatFormatterResponse(prompt=prompt, stop=["<end_of_turn>"])

class JsonSchemaAsGrammar:
    """--json-schema: rewrites response_format in chat completion requests before the server reads
    them (an ASGI middleware)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope["method"] != "POST"
                or not scope["path"].endswith("/chat/completions")):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            request = json.loads(body)
            response_format = request.get("response_format") or {}
            if response_format.get("type") == "json_schema":
                schema = (response_format.get("json_schema") or {}).get("schema") or {}
                request["response_format"] = {"type": "json_object", "schema": schema}
                body = json.dumps(request).encode()
        except (ValueError, AttributeError):
            pass  # not ours to judge: the server answers it as it is
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        scope = dict(scope, headers=headers + [(b"content-length", str(len(body)).encode())])
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

if os.environ.pop("CADRE_LLM_JSON_SCHEMA", "0") == "1":
    import llama_cpp.server.app as server_app
    plain_create_app = server_app.create_app

    def create_app(*args, **kwargs):
        app = plain_create_app(*args, **kwargs)
        app.add_middleware(JsonSchemaAsGrammar)
        return app

    server_app.create_app = create_app

parent = os.getppid()

def watch_parent():
    while os.getppid() == parent:
        time.sleep(1)
    print("llm-server: parent process gone, stopping", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
    os._exit(1)

if os.environ.pop("CADRE_LLM_WATCH_PARENT", "1") == "1":
    threading.Thread(target=watch_parent, daemon=True).start()
sys.argv = sys.argv[1:]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
EOF
