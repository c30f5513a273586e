"""The web console under load, in a real browser (Debian's Chromium, driven by Playwright).

Starts the bench stack (cadre-bench-console: the services in-process, a team on a zero-latency
offline provider for the load, a second team on a slower one for the runs a person watches),
opens the pages that follow the live feeds (the workflows list, the history and a busy
workflow's page, which reload their HTML on events), tells the stack to run its load, and
meanwhile starts runs of the watched workflow, follows each in its execution view (which applies
every event to the page) and loads the console's pages. Prints the achieved steps per second,
each page's load time (navigation start to the load event) idle and under load, and the delay
from each event's CloudEvents `time` (stamped when it is appended to the log) to its change on
the page (console.js's `window.cadre.latencies`), by page: counts, p50, p95, p99, max.

Figures, not assertions: it fails only when the console breaks (a console error, an uncaught
exception, a failed request, an error status) or the stack does not run.

Usage: python3 console_bench.py STACK_BINARY [FIGURES_JSON]
"""

import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

BINARY = sys.argv[1]
FIGURES = Path(sys.argv[2] if len(sys.argv) > 2 else ".cadre/bench-console.json")
CHROMIUM = "/usr/bin/chromium"

problems: list[str] = []
# Set once the measurement ends: closing the pages aborts their feeds and reloads.
closing = threading.Event()


def percentile(values, q):
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values):
    if not values:
        return "none"
    return (
        f"{len(values):6} x  p50 {percentile(values, 0.50):6.0f}  p95 {percentile(values, 0.95):6.0f}"
        f"  p99 {percentile(values, 0.99):6.0f}  max {max(values):6.0f} ms"
    )


class StackProcess:
    """The bench stack, its standard output read line by line on a thread."""

    def __init__(self, binary):
        Path(".cadre/logs").mkdir(parents=True, exist_ok=True)
        self.log = open(".cadre/logs/bench-console-stack.log", "w")
        self.process = subprocess.Popen(
            [binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, marker, timeout, on_line=print):
        """Reads lines until `marker`; returns the `KEY=value` lines seen on the way."""
        values = {}
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SystemExit(f"the bench stack did not say {marker} in {timeout} s")
            if line is None:
                raise SystemExit("the bench stack ended; see .cadre/logs/bench-console-stack.log")
            if line == marker:
                return values
            key, sep, value = line.partition("=")
            if sep and key.isupper():
                values[key] = value
            else:
                on_line(line)

    def said(self, marker, seen, on_line=print):
        """Whether `marker` has arrived (without waiting); collects `KEY=value` lines in `seen`."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return False
            if line is None:
                raise SystemExit("the bench stack ended; see .cadre/logs/bench-console-stack.log")
            if line == marker:
                return True
            key, sep, value = line.partition("=")
            if sep and key.isupper():
                seen[key] = value
            else:
                on_line(line)

    def send(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self):
        try:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            self.process.kill()


def watch(page):
    """Records whatever shows the page is broken."""

    def on_failed(request):
        if closing.is_set():
            return
        failure = request.failure or ""
        # Leaving a page closes its event streams and cancels a reload under way: not a failure.
        if "ERR_ABORTED" in failure and ("/events" in request.url or "at=" in request.url):
            return
        problems.append(f"request failed: {request.method} {request.url}: {failure}")

    def on_console(message):
        if message.type == "error":
            problems.append(f"console error on {page.url}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"uncaught on {page.url}: {error}"))
    page.on("requestfailed", on_failed)
    page.on(
        "response",
        lambda r: r.status >= 400 and problems.append(f"{r.status} for {r.request.method} {r.url}"),
    )


def load_time(page):
    """The page's load time: navigation start to the load event, in milliseconds."""
    page.wait_for_load_state("load")
    return page.evaluate(
        "() => { const n = performance.getEntriesByType('navigation')[0];"
        " return n.loadEventEnd - n.startTime; }"
    )


def processes():
    """pid -> (parent, name, CPU seconds) of every process, from /proc (Linux)."""
    found = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick)
    return found


def cpu_shares(before, after, stack_pid):
    """CPU seconds used between two snapshots: the stack (with its nats-server), the browser
    (with Playwright's driver), Postgres (the whole server, whoever uses it) and this script."""

    def under(pid, root, table):
        while pid > 1:
            if pid == root:
                return True
            pid = table.get(pid, (0,))[0]
        return False

    shares = {"stack and nats-server": 0.0, "chromium": 0.0, "postgres (whole server)": 0.0}
    for pid, (parent, name, cpu) in after.items():
        used = cpu - (before[pid][2] if pid in before and before[pid][1] == name else 0.0)
        if under(pid, stack_pid, after):
            shares["stack and nats-server"] += used
        elif under(pid, os.getpid(), after) and pid != os.getpid():
            shares["chromium"] += used
        elif name == "postgres":
            shares["postgres (whole server)"] += used
    shares["this script"] = after.get(os.getpid(), (0, "", 0.0))[2] - before.get(os.getpid(), (0, "", 0.0))[2]
    return shares


def live_figures(page):
    """console.js's figures, and how long each reload's request took (its server waits for the
    read models to reach the event, then renders the page)."""
    return page.evaluate(
        "() => Object.assign({}, window.cadre, {reloadRequests: performance"
        ".getEntriesByType('resource').filter((e) => e.name.includes('at='))"
        ".map((e) => e.duration)})"
    )


def open_live(page, url):
    page.goto(url)
    # Every reload's timing, not the default 250 entries.
    page.evaluate("() => performance.setResourceTimingBufferSize(100000)")


def main():
    started = time.monotonic()
    stack = StackProcess(BINARY)
    loads: dict[str, dict[str, list[float]]] = {"idle": {}, "under load": {}}
    latencies: dict[str, list[dict]] = {}
    live_counts: dict[str, dict] = {}
    watched_runs = 0
    try:
        info = stack.until("READY", 300)
        base = info["CONSOLE_URL"].rstrip("/")
        watched = info["WATCHED_WORKFLOW"]
        busy = info["LOAD_WORKFLOWS"].split()[0]
        list_pages = {
            "workflows": "/console",
            "history": "/console/history",
            "workflow (busy)": f"/console/workflows/{busy}",
        }
        visits = dict(list_pages, agents="/console/agents", escalations="/console/escalations")

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )

            def new_page():
                # A context each: Chromium opens at most six connections to one host per
                # context, and every open feed holds one.
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.set_default_timeout(60_000)
                watch(page)
                return page

            live = {}
            for name, path in list_pages.items():
                page = new_page()
                open_live(page, base + path)
                loads["idle"].setdefault(name, []).append(load_time(page))
                live[name] = page
            # One tab follows a watched run in its execution view while another loads pages.
            viewer = new_page()
            viewer.goto(base + "/console")
            visitor = new_page()
            for name, path in visits.items():
                visitor.goto(base + path)
                loads["idle"].setdefault(name, []).append(load_time(visitor))

            stack.send("go")
            cpu_before, cpu_started = processes(), time.monotonic()
            seen: dict[str, str] = {}
            done = False
            ended = (
                "() => ['completed', 'failed', 'cancelled'].includes("
                "document.querySelector('#run-status .badge')?.textContent)"
            )
            while not done:
                # A run of the watched workflow, started as the console's button does.
                execution = viewer.evaluate(
                    "async (id) => (await (await fetch('/v1/workflows/' + id + '/executions',"
                    " {method: 'POST', headers: {'content-type': 'application/json'}, body: '{}'}))"
                    ".json()).executionId",
                    watched,
                )
                viewer.goto(f"{base}/console/executions/{execution}")
                loads["under load"].setdefault("execution", []).append(load_time(viewer))
                while not viewer.evaluate(ended):
                    for name, path in visits.items():
                        # A person's pace: a page a second at most.
                        opened = time.monotonic()
                        visitor.goto(base + path)
                        loads["under load"].setdefault(name, []).append(load_time(visitor))
                        if done := done or stack.said("LOAD_DONE", seen):
                            break
                        time.sleep(max(0.0, 1.0 - (time.monotonic() - opened)))
                    if done:
                        try:
                            viewer.wait_for_function(ended, timeout=180_000)
                        except PlaywrightTimeout:
                            # Its steps wait for the read models too: under overload, long.
                            print("note: the last watched run had not ended 3 minutes after the load")
                latencies.setdefault("execution", []).extend(live_figures(viewer)["latencies"])
                watched_runs += 1
                done = done or stack.said("LOAD_DONE", seen)

            cpu = cpu_shares(cpu_before, processes(), stack.process.pid)
            cpu_wall = time.monotonic() - cpu_started
            # Reloads still under way finish; then the live pages say what they saw.
            time.sleep(3)
            for name, page in live.items():
                if page.evaluate("() => document.visibilityState") != "visible":
                    print(f"warning: the {name} page was hidden (its timers may be throttled)")
                figures = live_figures(page)
                latencies[name] = figures["latencies"]
                live_counts[name] = {
                    "applied": figures["applied"],
                    "reloads": figures["reloads"],
                    "reloadRequestMs": figures["reloadRequests"],
                }
            closing.set()
            browser.close()
    finally:
        stack.stop()

    achieved = json.loads(seen.get("LOAD_FIGURES", "{}"))
    print("\n== web console under load, in Chromium")
    for phase, pages in loads.items():
        for name, values in pages.items():
            print(f"page load {phase:<10} {name:<16} {summary(values)}")
    every = []
    for name, values in latencies.items():
        ms = [l["ms"] for l in values]
        every += ms
        print(f"event -> page {name:<22} {summary(ms)}")
    print(f"event -> page {'all':<22} {summary(every)}")
    for name, counts in live_counts.items():
        print(f"reload request {name:<21} {summary(counts['reloadRequestMs'])}  ({counts['reloads']} reloads)")
    by_type: dict[str, list[float]] = {}
    for l in latencies.get("execution", []):
        by_type.setdefault(l["type"].removeprefix("dev.cadre."), []).append(l["ms"])
    for kind, ms in sorted(by_type.items()):
        print(f"  execution view: {kind:<36} {summary(ms)}")
    print(
        f"CPU while loaded ({cpu_wall:.0f} s, {os.cpu_count()} cores): "
        + ", ".join(f"{name} {seconds / cpu_wall:.2f}" for name, seconds in cpu.items())
        + " cores"
    )
    print(
        f"achieved {achieved.get('achievedStepsPerSecond', 0):.0f} steps/s; {watched_runs} watched "
        f"runs followed; took {time.monotonic() - started:.0f} s"
    )
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(
        json.dumps({"load": achieved, "loadMs": loads, "latencies": latencies, "live": live_counts}, indent=1)
    )
    print(f"figures in {FIGURES}")
    if problems:
        print("\nthe console broke under load:", file=sys.stderr)
        for problem in problems[:50]:
            print("  " + problem, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
