"""The web console in a real browser (Debian's Chromium, driven by Playwright).

Creates a workflow from a template (first with a role left without an agent, which the page
must show at that role's field), builds a workflow in the builder (first with a mistake, shown
at the field the API's JSON pointer names), pauses it (a run cannot start, the API's refusal
shows) and resumes it, starts it, pauses and resumes the run and sees its status change live,
watches its steps change state, approves its sign-off step from the console, cancels a second
run (after a refused reason), and visits every page. Any console error, uncaught exception,
failed request or unexpected error status fails the test. Prints each page's load time and the
delay from an event's time in the log to its change on the page.

Usage: python3 console_test.py BASE_URL SCREENSHOT_DIR
"""

import json
import statistics
import sys
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

BASE = sys.argv[1].rstrip("/")
SHOTS = Path(sys.argv[2])
SHOTS.mkdir(parents=True, exist_ok=True)
CHROMIUM = "/usr/bin/chromium"
STEP_TIMEOUT_MS = 60_000

problems: list[str] = []
# What the test has the API refuse on purpose: (status, path prefix, path suffix).
EXPECTED_REFUSALS = [
    (422, "/v1/workflows", "/v1/workflows"),  # the builder's first submission
    (422, "/v1/templates/", "/workflows"),  # a template's role left without an agent
    (409, "/v1/workflows/", "/executions"),  # a run of a paused workflow
    (422, "/v1/executions/", "/cancel"),  # a cancellation's reason over 1000 characters
]
load_times: dict[str, float] = {}


def watch(page):
    """Records whatever shows the page is broken."""

    def on_console(message):
        if message.type != "error":
            return
        # Requests the test has refused on purpose (see EXPECTED_REFUSALS): Chromium logs them.
        if "Failed to load resource" in message.text and ("422" in message.text or "409" in message.text):
            return
        problems.append(f"console error on {page.url}: {message.text}")

    def on_failed(request):
        failure = request.failure or ""
        # Leaving a page closes its event streams and cancels a reload under way (`?at=`, asked
        # when an event arrives): neither is a failure.
        if "ERR_ABORTED" in failure and ("/events" in request.url or "at=" in request.url):
            return
        problems.append(f"request failed: {request.method} {request.url}: {failure}")

    def on_response(response):
        path = response.url.removeprefix(BASE)
        expected = any(
            response.status == status and path.startswith(prefix) and path.endswith(suffix)
            for status, prefix, suffix in EXPECTED_REFUSALS
        )
        if response.status >= 400 and not expected:
            problems.append(f"{response.status} for {response.request.method} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"uncaught on {page.url}: {error}"))
    page.on("requestfailed", on_failed)
    page.on("response", on_response)


def loaded(page, name):
    """Records the page's load time (navigation start to the load event), in milliseconds."""
    page.wait_for_load_state("load")
    timing = page.evaluate(
        "() => { const n = performance.getEntriesByType('navigation')[0];"
        " return {load: n.loadEventEnd - n.startTime, ttfb: n.responseStart - n.startTime}; }"
    )
    load_times[name] = timing["load"]


def visit(page, path, name):
    page.goto(BASE + path)
    loaded(page, name)
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


def fill_step(step, values):
    for field, value in values.items():
        element = step.locator(f'[data-field="{field}"]')
        if field == "type":
            element.select_option(value)
        else:
            element.fill(value)


def main():
    started = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(STEP_TIMEOUT_MS)
        watch(page)

        # The console, from `/`.
        page.goto(BASE + "/")
        loaded(page, "workflows")
        expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
        expect(page.locator("#templates")).to_contain_text("Implement a feature")
        page.screenshot(path=SHOTS / "workflows.png", full_page=True)

        # A workflow from a template: every role but one given an agent, then all of them.
        page.locator("#templates tr", has_text="Critical production bug resolution").get_by_role(
            "link", name="Create a workflow"
        ).click()
        loaded(page, "template")
        roles = page.locator("#from-template select[data-role]")
        assert roles.count() > 1, roles.count()
        for select in roles.all()[1:]:
            select.select_option(index=1)
        page.locator("#ft-name").fill("Outage drill")
        page.get_by_role("button", name="Create workflow").click()
        first_role = roles.first
        expect(first_role).to_have_attribute("aria-invalid", "true")
        expect(page.locator("label:has(select[data-role]) .field-error")).to_have_count(1)
        role = first_role.get_attribute("data-role")
        expect(page.locator(f'label:has(select[data-role="{role}"]) .field-error')).to_contain_text(role)
        page.screenshot(path=SHOTS / "template-error.png", full_page=True)
        first_role.select_option(index=1)
        page.get_by_role("button", name="Create workflow").click()
        page.wait_for_url("**/console/workflows/*")
        loaded(page, "workflow (from a template)")
        expect(page.get_by_role("heading", level=1)).to_contain_text("Outage drill")
        expect(page.locator("dl.facts")).to_contain_text("Critical production bug resolution")

        # The builder: three steps, the second depending on a step that does not exist.
        page.get_by_role("link", name="New workflow").click()
        loaded(page, "builder")
        # No name yet: a mistake for the API to point at.
        page.get_by_label("Description").first.fill("Analyse, build, then a person signs off.")
        for checkbox in page.locator('#wf-agents input[type="checkbox"]').all():
            checkbox.check()
        steps = page.locator("#steps > fieldset")
        fill_step(steps.nth(0), {
            "id": "analyse", "name": "Analyse the request", "type": "analysis",
            "description": "Understand what is asked.", "instructions": "List the requirements.",
            "expectedOutput": "Requirements",
        })
        page.get_by_role("button", name="Add a step").click()
        fill_step(steps.nth(1), {
            "id": "build", "name": "Build it", "type": "implementation", "dependsOn": "analyze",
            "description": "Make the change.", "instructions": "Implement the requirements.",
            "expectedOutput": "The change",
        })
        page.get_by_role("button", name="Add a step").click()
        fill_step(steps.nth(2), {
            "id": "sign-off", "name": "Sign off the release", "type": "approval",
            "dependsOn": "build", "description": "A person approves.",
            "instructions": "Approve the release.", "expectedOutput": "A decision",
        })
        page.get_by_role("button", name="Create workflow").click()
        error = steps.nth(1).locator(".field-error")
        expect(error).to_be_visible()
        expect(error).to_contain_text("analyze")
        # The message sits under the field the pointer names, which is marked invalid.
        expect(steps.nth(1).locator('label:has([data-field="dependsOn"]) .field-error')).to_be_visible()
        expect(steps.nth(1).locator('[data-field="dependsOn"]')).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#wf-name")).to_have_attribute("aria-invalid", "true")
        expect(page.locator('label[for="wf-name"] + #wf-name + .field-error')).to_be_visible()
        page.screenshot(path=SHOTS / "builder-error.png", full_page=True)
        page.locator("#wf-name").fill("Release from the console")
        steps.nth(1).locator('[data-field="dependsOn"]').fill("analyse")
        page.get_by_role("button", name="Create workflow").click()
        page.wait_for_url("**/console/workflows/*")
        loaded(page, "workflow")
        expect(page.locator("#node-sign-off")).to_be_visible()
        page.screenshot(path=SHOTS / "workflow.png", full_page=True)

        # Paused, it starts no run (the API's refusal shows) until resumed.
        page.get_by_role("button", name="Pause workflow").click()
        expect(page.locator("#workflow-status .badge")).to_have_text("paused")
        page.get_by_role("button", name="Start run").click()
        expect(page.locator("#start-run .error")).to_contain_text("paused")
        page.screenshot(path=SHOTS / "workflow-paused.png", full_page=True)
        page.get_by_role("button", name="Resume workflow").click()
        expect(page.get_by_role("button", name="Pause workflow")).to_be_visible()

        # Start it and watch it live.
        page.get_by_role("button", name="Start run").click()
        page.wait_for_url("**/console/executions/*")
        loaded(page, "execution")
        expect(page.locator("#live")).to_have_text("live")
        expect(page.locator("#node-analyse")).to_have_class("node st-running")
        expect(page.locator("#step-analyse .agent a")).not_to_be_empty()
        page.screenshot(path=SHOTS / "execution-running.png", full_page=True)

        # Pause the run and resume it: the buttons follow the status the log's events bring.
        run_action = lambda name: page.locator(f'#run-actions [data-run-action="{name}"]')
        expect(run_action("resume")).to_be_hidden()
        run_action("pause").click()
        expect(page.locator("#run-status .badge")).to_have_text("paused")
        expect(run_action("pause")).to_be_hidden()
        expect(run_action("cancel")).to_be_visible()
        page.screenshot(path=SHOTS / "execution-paused.png", full_page=True)
        run_action("resume").click()
        expect(page.locator("#run-status .badge")).to_have_text("running")
        expect(run_action("resume")).to_be_hidden()
        expect(run_action("pause")).to_be_enabled()
        expect(page.locator("#node-analyse")).to_have_class("node st-completed")
        expect(page.locator("#node-build")).to_have_class("node st-running")
        expect(page.locator("#step-analyse .duration")).to_contain_text(" s")

        # The sign-off waits for a person: approve it from the console.
        card = page.locator("#escalations article.escalation")
        expect(card).to_be_visible()
        expect(card).to_contain_text("Sign off the release")
        expect(page.locator("#node-sign-off")).to_have_class("node st-escalated")
        page.screenshot(path=SHOTS / "execution-approval.png", full_page=True)
        card.get_by_label("Comment (optional)").fill("Looks good from the console.")
        card.get_by_role("button", name="Approve").click()
        expect(page.locator("#run-status .badge")).to_have_text("completed")
        expect(page.locator("#node-sign-off")).to_have_class("node st-completed")
        expect(page.locator("#progress-text")).to_have_text("3 of 3 steps done")
        expect(page.locator("#escalations article.escalation")).to_have_count(0)
        # The timeline follows the run live, rows derived from its steps' facts included: each
        # step's completion, and what its agent shared with the team.
        expect(page.locator("#timeline li").first).to_be_visible()
        expect(page.locator("#timeline")).to_contain_text("Completed step")
        expect(page.locator("#timeline li.interaction.knowledge_sharing").first).to_be_visible()
        page.screenshot(path=SHOTS / "execution-completed.png", full_page=True)
        latencies = page.evaluate("() => window.cadre.latencies")
        execution_url = page.url

        # A reload of the finished run shows the same from the read models.
        page.reload()
        loaded(page, "execution (finished)")
        expect(page.locator("#node-sign-off")).to_have_class("node st-completed")

        visit(page, "/console/history?status=completed", "history")
        expect(page.locator("#history")).to_contain_text("Release from the console")
        visit(page, "/console/escalations?status=resolved", "escalations")
        expect(page.locator("article.escalation")).to_contain_text("approve")
        visit(page, "/console/agents", "agents")
        expect(page.locator("#agents")).to_contain_text("Ada")
        page.locator("#agents a").first.click()
        loaded(page, "agent")
        page.screenshot(path=SHOTS / "agent.png", full_page=True)
        page.go_back()
        page.goto(execution_url)
        page.get_by_role("heading", level=1).get_by_role("link").click()
        loaded(page, "workflow (after the run)")
        expect(page.locator("#runs")).to_contain_text("completed")

        # A page that opened before an event reloads itself when the event arrives.
        page.goto(BASE + "/console/history")
        loaded(page, "history (live)")
        before = page.locator("#history tbody tr").count()
        workflow_id = page.locator("#history tbody tr a").first.get_attribute("href").rsplit("/", 1)[1]
        # The body is read before the call returns: a response whose body is still arriving
        # when the test leaves the page is aborted, and an aborted request fails the test.
        started_run = page.evaluate(
            "async (id) => { const response = await fetch('/v1/workflows/' + id + '/executions',"
            " {method: 'POST'}); await response.text(); return response.status; }",
            workflow_id,
        )
        assert started_run == 202, started_run
        expect(page.locator("#history tbody tr")).to_have_count(before + 1)
        latencies += page.evaluate("() => window.cadre.latencies")

        # Cancel that run: the dialog asks first, and shows the API's problem at its field.
        page.locator("#history tbody tr").first.get_by_role("link", name="#").click()
        loaded(page, "execution (to cancel)")
        expect(page.locator("#live")).to_have_text("live")
        run_action("cancel").click()
        dialog = page.locator("#cancel-dialog")
        expect(dialog).to_be_visible()
        dialog.get_by_label("Reason (optional)").fill("x" * 1001)
        dialog.get_by_role("button", name="Cancel the run", exact=True).click()
        expect(dialog.locator(".field-error")).to_contain_text("1000")
        expect(page.locator("#cancel-reason")).to_have_attribute("aria-invalid", "true")
        page.screenshot(path=SHOTS / "execution-cancel-refused.png", full_page=True)
        dialog.get_by_label("Reason (optional)").fill("Started by mistake.")
        dialog.get_by_role("button", name="Cancel the run", exact=True).click()
        expect(dialog).to_be_hidden()
        expect(page.locator("#run-status .badge")).to_have_text("cancelled")
        expect(page.locator("#run-actions button:visible")).to_have_count(0)
        expect(page.locator("#live")).to_have_text("ended")
        # Without a reload, each step reads what the API says (those under way: cancelled).
        run_id = page.url.split("?")[0].rstrip("/").rsplit("/", 1)[1]
        # The cancel's answer waits for the read models at most a few seconds: on a loaded
        # machine they may still be behind, so compare once they show the run cancelled.
        results = page.evaluate(
            "async (id) => { for (let i = 0; i < 300; i++) {"
            " const run = await (await fetch('/v1/executions/' + id)).json();"
            " if (run.status === 'cancelled') return run.stepResults;"
            " await new Promise((done) => setTimeout(done, 100)); }"
            " throw new Error('the read models never showed the run cancelled'); }",
            run_id,
        )
        for step, entry in results.items():
            expect(page.locator(f'tr[data-step="{step}"] .state .badge')).to_have_text(
                entry["status"].replace("_", " ")
            )
        page.screenshot(path=SHOTS / "execution-cancelled.png", full_page=True)
        latencies += page.evaluate("() => window.cadre.latencies")
        browser.close()

    print("\n== web console in Chromium")
    for name, ms in load_times.items():
        print(f"page load  {name:<26} {ms:7.1f} ms")
    if latencies:
        values = sorted(l["ms"] for l in latencies)
        p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
        print(
            f"event in the log -> on the page: {len(values)} events, "
            f"median {statistics.median(values):.0f} ms, p95 {p95:.0f} ms, max {values[-1]:.0f} ms"
        )
        by_type: dict[str, list[float]] = {}
        for l in latencies:
            by_type.setdefault(l["type"].removeprefix("dev.cadre."), []).append(l["ms"])
        for kind, ms in sorted(by_type.items()):
            print(f"  {kind:<40} {len(ms):3} x, median {statistics.median(ms):6.0f} ms")
    print(f"screenshots in {SHOTS}; took {time.monotonic() - started:.1f} s")
    (SHOTS / "figures.json").write_text(json.dumps({"load_ms": load_times, "latencies": latencies}, indent=1))
    if problems:
        print("\nthe console is broken:", file=sys.stderr)
        for problem in problems:
            print("  " + problem, file=sys.stderr)
        sys.exit(1)
    if not latencies:
        print("no live event was measured", file=sys.stderr)
        sys.exit(1)
    print("browser test passed")


if __name__ == "__main__":
    main()
