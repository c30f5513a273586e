// Cadre's web console: applies the event log's live feeds (server-sent events) to the page the
// server rendered, and sends the console's forms to the JSON API. No framework, no build step.
//
// An SSE event is one stored event: `id` its stream sequence, `event` its CloudEvents type,
// `data` the CloudEvents JSON, whose `data` member is the payload. EventSource reconnects by
// itself with Last-Event-ID, so a dropped connection loses nothing.
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  // What a test (or a curious person) can read: the delay from each event's CloudEvents `time`
  // to its change on the page, for events that happened after the page was opened.
  const cadre = (window.cadre = { latencies: [], applied: 0, reloads: 0 });

  function measured(cloudEvent) {
    cadre.applied += 1;
    const at = Date.parse(cloudEvent.time);
    if (!Number.isNaN(at) && at >= performance.timeOrigin) {
      cadre.latencies.push({ type: cloudEvent.type, ms: Date.now() - at });
    }
  }

  function liveState(text) {
    const live = $("#live");
    if (live) live.textContent = text;
  }

  // Opens `url` and hands each event's CloudEvent to `onEvent`; returns the EventSource. With
  // `wanted` (a test on the type), events of other types are not even parsed: a busy tenant's
  // feed brings thousands a second, and a list page wants a few.
  function subscribe(url, onEvent, wanted = () => true) {
    const source = new EventSource(url);
    source.onopen = () => liveState("live");
    source.onerror = () => liveState(source.readyState === EventSource.CLOSED ? "" : "reconnecting…");
    // Every event arrives named by its type, and EventSource has no listener for any name:
    // listen to each known type (a test checks the list against proto's).
    const handle = (message) => {
      let cloudEvent;
      try {
        cloudEvent = JSON.parse(message.data);
      } catch {
        return;
      }
      onEvent(cloudEvent, source, message.lastEventId);
    };
    source.addEventListener("message", handle);
    for (const type of KNOWN_TYPES.filter(wanted)) source.addEventListener(type, handle);
    return source;
  }

  const KNOWN_TYPES = [
    "agent.registered.v1", "agent.status_reported.v1", "agent.alert_raised.v1",
    "workflow.created.v1", "workflow.paused.v1", "workflow.resumed.v1",
    "template.registered.v1", "workflow.knowledge_shared.v1", "workflow.knowledge_validated.v1",
    "workflow.knowledge_superseded.v1", "execution.started.v1", "execution.step_scheduled.v1",
    "execution.task_handed_off.v1", "execution.step_started.v1", "execution.step_deferred.v1",
    "execution.interaction_recorded.v1", "execution.step_completed.v1", "execution.step_failed.v1",
    "execution.step_timed_out.v1", "execution.step_skipped.v1",
    "execution.step_deadlines_checked.v1", "execution.step_retry_scheduled.v1",
    "execution.step_retry_due.v1", "execution.step_escalated.v1", "execution.escalation_resolved.v1",
    "execution.lead_taken.v1", "execution.escalated.v1", "execution.saga_started.v1",
    "execution.replanned.v1", "execution.step_reviewed.v1", "execution.votes_tallied.v1",
    "execution.questions_asked.v1", "execution.question_assigned.v1",
    "execution.question_answered.v1", "execution.questions_expired.v1", "execution.paused.v1",
    "execution.resumed.v1", "execution.completed.v1", "execution.failed.v2",
    "execution.cancelled.v1", "subscription.created.v1", "subscription.deleted.v1",
    "subscription.delivered.v1", "subscription.delivery_failed.v1",
  ].map((t) => "dev.cadre." + t);

  // The tenant's or a workflow's feed with only the types `wanted` picks: the log filters
  // them, so the page is never sent the others (most of a busy log).
  const only = (feed, wanted) =>
    feed + (feed.includes("?") ? "&" : "?") + "types=" + KNOWN_TYPES.filter(wanted).join(",");

  // ---- Lists: reload the page's own HTML when an event that changes it arrives. ----

  // Replaces the page's `main` with the server's, read once the read models have the event at
  // log position `at` (if given). Resolves to the response, or null when it did not replace.
  async function reloadMain(at) {
    const url = new URL(location.href);
    url.hash = "";
    if (at !== undefined) url.searchParams.set("at", at);
    const response = await fetch(url, { headers: { accept: "text/html" } });
    if (!response.ok) return null;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    $("main").replaceChildren(...$("main", fresh).childNodes);
    cadre.reloads += 1;
    return response;
  }

  // At most one reload in flight and one waiting: the events that arrive meanwhile share the
  // next one, so a busy log costs a reload per round trip, not one per event (nor a pile of
  // reloads racing each other). `at` has the server answer once the read models have the
  // oldest event not yet shown; its Cadre-Log-Position says how far they had got, so the
  // events up to there are on the page and the others wait for the next reload.
  function reloadOn(feed, prefixes) {
    let waiting = [];
    let inFlight = false;
    async function reload() {
      inFlight = true;
      while (waiting.length) {
        try {
          const response = await reloadMain(waiting[0].sequence);
          if (!response) {
            waiting = [];
            continue;
          }
          const reached = Number(response.headers.get("cadre-log-position") ?? Infinity);
          for (const event of waiting) if (event.sequence <= reached) measured(event.cloudEvent);
          waiting = waiting.filter((event) => event.sequence > reached);
          // Not there within the server's (bounded) wait: try again shortly.
          if (waiting.length && response.headers.get("cadre-read-models") === "behind") {
            await new Promise((resolve) => setTimeout(resolve, 250));
          }
        } catch {
          // Offline for a moment: the next event reloads.
          waiting = [];
        }
      }
      inFlight = false;
    }
    const changes = (type) => prefixes.some((p) => type.startsWith(p));
    subscribe(only(feed, changes), (cloudEvent, source, sequence) => {
      if (!changes(cloudEvent.type)) return;
      waiting.push({ cloudEvent, sequence: Number(sequence) });
      if (!inFlight) reload();
    }, changes);
  }

  // ---- The execution view: apply each event to the steps, the graph and the timeline. ----

  function execution(feed, workflowFeed) {
    const run = $("#run");
    const executionId = run.dataset.execution;
    const agents = JSON.parse(run.dataset.agents || "{}");
    // The plan's steps, which the graph and the progress bar show, and where in the log the
    // run was last re-planned: a step shows on the graph and counts as done for what it did in
    // that plan, if its position (its latest scheduling, or its first event if never
    // scheduled: `data-position`, as the server renders it) comes after the re-plan; a step
    // the new plan keeps is pending until it is scheduled again.
    let steps = JSON.parse(run.dataset.steps || "[]");
    let replanSequence = Number(run.dataset.replanSequence || 0);
    const inPlan = (row) => !replanSequence || Number(row.dataset.position || 0) > replanSequence;
    const name = (id) => agents[id] || "an unknown agent";

    function badge(status) {
      const span = document.createElement("span");
      span.className = "badge st-" + status;
      span.textContent = status.replace(/_/g, " ");
      return span;
    }

    function timeCell(iso) {
      const t = document.createElement("time");
      t.dateTime = iso;
      t.textContent = iso.replace("T", " ").slice(0, 19);
      return t;
    }

    function stepRow(stepId, sequence) {
      let row = document.getElementById("step-" + stepId);
      if (!row) {
        // A step the run added (a delegation, an undoing, a re-plan).
        row = document.createElement("tr");
        row.id = "step-" + stepId;
        row.dataset.step = stepId;
        if (sequence) row.dataset.position = sequence;
        row.innerHTML =
          '<th scope="row"></th><td class="state"></td><td class="agent"></td>' +
          '<td class="attempt"></td><td class="started"></td><td class="ended"></td>' +
          '<td class="duration"></td>';
        $("th", row).textContent = stepId;
        $("#step-table tbody").append(row);
      }
      return row;
    }

    // The status a row's badge shows.
    const rowStatus = (row) => ((($(".state .badge", row) || {}).className || "").match(/\bst-([a-z_]+)/) || [])[1];

    function paintNode(stepId, status) {
      const node = document.getElementById("node-" + stepId);
      if (node) {
        node.setAttribute("class", "node st-" + status);
        $("text.state", node).textContent = status.replace(/_/g, " ");
      }
    }

    // Sets what is known of a step: its status, agent, attempt, start, end, duration; the
    // event's log `sequence` moves its position when it schedules the step.
    function setStep(stepId, change, at, sequence) {
      const row = stepRow(stepId, sequence);
      if (change.scheduled && sequence) row.dataset.position = sequence;
      if (change.status) {
        $(".state", row).replaceChildren(badge(change.status));
        paintNode(stepId, inPlan(row) ? change.status : "pending");
      }
      if (change.agentId) {
        const link = document.createElement("a");
        link.href = "/console/agents/" + change.agentId;
        link.textContent = name(change.agentId);
        $(".agent", row).replaceChildren(link);
      }
      if (change.attempt) $(".attempt", row).textContent = change.attempt;
      if (change.scheduled) {
        for (const cell of [".started", ".ended", ".duration"]) $(cell, row).textContent = "—";
      }
      if (change.started) {
        $(".started", row).replaceChildren(timeCell(at));
        row.dataset.startedAt = at;
      }
      if (change.ended) {
        $(".ended", row).replaceChildren(timeCell(at));
        const ms = change.durationMs ?? (row.dataset.startedAt ? Date.parse(at) - Date.parse(row.dataset.startedAt) : null);
        if (ms != null) $(".duration", row).textContent = (ms / 1000).toFixed(1) + " s";
      }
      progress();
    }

    function progress() {
      const done = steps.filter((id) => {
        const row = document.getElementById("step-" + id);
        return row && inPlan(row) && ["completed", "skipped"].includes(rowStatus(row));
      }).length;
      $("#progress").max = Math.max(steps.length, 1);
      $("#progress").value = done;
      $("#progress-text").textContent = done + " of " + steps.length + " steps done";
    }

    // A re-plan gives the run new steps: the graph of the new plan comes from the page as
    // the server draws it once the read models reach the re-plan (`at`); the statuses the
    // feed brought since are the table's, and go on the graph again. If the page cannot be
    // had, the graph stays the old plan's (the table and the progress follow the new one).
    async function redrawPlan(sequence) {
      try {
        const response = await fetch("/console/executions/" + executionId + "?at=" + sequence);
        if (!response.ok) return;
        const fragment = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = $(".dag-wrap", fragment);
        const note = $("#plan-note", fragment);
        if (!fresh) return;
        $(".dag-wrap").replaceWith(fresh);
        if (note) $("#plan-note").replaceWith(note);
        for (const row of $$("#step-table tbody tr[data-step]")) {
          const status = rowStatus(row);
          if (status) paintNode(row.dataset.step, inPlan(row) ? status : "pending");
        }
      } catch (error) {
        console.warn("redrawing the re-planned graph failed", error);
      }
    }

    function runStatus(status, at) {
      $("#run-status").replaceChildren(badge(status));
      if (at) $("#run-ended").replaceChildren(timeCell(at));
      showRunActions(status);
    }

    // Each control button lists the statuses it applies in (the server's rule).
    const dialog = $("#cancel-dialog");
    function showRunActions(status) {
      for (const button of $$("#run-actions [data-run-action]")) {
        button.hidden = !button.dataset.statuses.split(" ").includes(status);
        button.disabled = false;
      }
      $("#run-actions .note").textContent = "";
      if (dialog && dialog.open && $('#run-actions [data-run-action="cancel"]').hidden) dialog.close();
    }
    runControls(executionId);

    // The card comes from the read models, which the server lets reach the event's log
    // position (`at`) first.
    const resolved = new Set();
    async function addEscalation(escalationId, sequence) {
      if (document.getElementById("esc-" + escalationId)) return;
      const response = await fetch("/console/escalations/" + escalationId + "/card?at=" + sequence);
      if (!response.ok || document.getElementById("esc-" + escalationId)) return;
      const fragment = new DOMParser().parseFromString(await response.text(), "text/html");
      const card = $("article.escalation", fragment);
      // Resolved in the meantime (a replayed feed brings both events at once): nothing waits.
      if (card && $("form.resolve", card) && !resolved.has(escalationId)) $("#escalations").append(card);
    }

    function removeEscalation(escalationId) {
      resolved.add(escalationId);
      const card = document.getElementById("esc-" + escalationId);
      if (card) card.remove();
    }

    // What a person's resolution makes of the step, as the read models say it.
    const RESOLVED_STATUS = {
      approve: "completed", provideOutput: "completed", skip: "skipped",
      retry: "escalating", reassign: "escalating", abort: "aborted", reject: "aborted",
    };

    // A run that fails or is cancelled cancels its steps still under way, and a re-plan
    // replaces them, as the read models show them (with what they were doing in
    // `cancelledWhile` or `replacedWhile`).
    const UNDER_WAY = ["scheduled", "running", "waiting", "awaiting_answers", "retry_waiting", "escalated", "escalating", "voting", "changes_requested"];
    function closeUnderWay(closed, at) {
      // Every row, not only the workflow's steps: a saga's and a re-plan's steps have rows too.
      for (const row of $$("#step-table tbody tr[data-step]")) {
        if (UNDER_WAY.includes(rowStatus(row))) setStep(row.dataset.step, { status: closed }, at);
      }
    }

    // The interaction timeline, as the read models have it once they reach the event that
    // changed it (most rows are derived from what happened to the steps): fetched again after
    // each such event, at most one request at a time, for the latest event seen.
    let timelineWanted = 0;
    let timelineBusy = false;
    async function refreshTimeline(sequence) {
      timelineWanted = Math.max(timelineWanted, Number(sequence) || 0);
      if (timelineBusy) return;
      timelineBusy = true;
      try {
        let at;
        do {
          at = timelineWanted;
          const response = await fetch("/console/executions/" + executionId + "/timeline?at=" + at);
          if (!response.ok) break;
          const fragment = new DOMParser().parseFromString(await response.text(), "text/html");
          const fresh = $("#timeline", fragment);
          if (fresh) $("#timeline").replaceWith(fresh);
        } while (timelineWanted !== at);
      } finally {
        timelineBusy = false;
      }
    }

    const apply = {
      step_scheduled: (d, at, seq) => setStep(d.step.id, { status: "scheduled", agentId: d.agent.id, attempt: d.attempt, scheduled: true }, at, seq),
      step_started: (d, at, seq) => setStep(d.stepId, { status: "running", agentId: d.agentId, attempt: d.attempt, started: true }, at, seq),
      step_deferred: (d, at, seq) => setStep(d.stepId, { status: "waiting" }, at, seq),
      questions_asked: (d, at, seq) => setStep(d.stepId, { status: "awaiting_answers" }, at, seq),
      step_completed: (d, at, seq) => setStep(d.stepId, { status: "completed", ended: true, durationMs: d.durationMs }, at, seq),
      step_failed: (d, at, seq) => setStep(d.stepId, { status: "failed", ended: true }, at, seq),
      step_timed_out: (d, at, seq) => setStep(d.stepId, { status: "timed_out", ended: true }, at, seq),
      step_retry_scheduled: (d, at, seq) => setStep(d.stepId, { status: "retry_waiting" }, at, seq),
      step_skipped: (d, at, seq) => setStep(d.stepId, { status: "skipped" }, at, seq),
      step_reviewed: (d, at, seq) => {
        if (!d.approved) setStep(d.stepId, { status: "changes_requested" }, at, seq);
      },
      step_escalated: (d, at, sequence) => {
        setStep(d.stepId, { status: d.escalationId ? "escalated" : "escalating" }, at, sequence);
        if (d.escalationId) addEscalation(d.escalationId, sequence);
      },
      escalated: (d, at, sequence) => {
        runStatus("escalated");
        addEscalation(d.escalationId, sequence);
      },
      escalation_resolved: (d, at) => {
        removeEscalation(d.escalationId);
        const action = d.resolution && d.resolution.action;
        const status = RESOLVED_STATUS[action];
        if (d.stepId && status) setStep(d.stepId, { status, ended: status !== "escalating" }, at);
        // The run's own escalation (over its time), let go on.
        if (!d.stepId && action === "continue") runStatus("running");
      },
      replanned: (d, at, sequence) => {
        closeUnderWay("replaced", at);
        // The feed replays the run from its start: a re-plan the page was drawn with, or one
        // before it, changes no plan.
        if (Number(sequence) > replanSequence) {
          steps = d.steps.map((step) => step.id);
          replanSequence = Number(sequence);
          progress();
          redrawPlan(sequence);
        }
        // The replaced steps' escalations are closed: nobody can resolve them any more.
        for (const card of $$('#escalations article.escalation:not([data-kind="execution"])')) {
          removeEscalation(card.dataset.escalation);
        }
      },
      paused: () => runStatus("paused"),
      resumed: () => runStatus("running"),
      completed: (d, at) => runStatus("completed", at),
      failed: (d, at) => {
        closeUnderWay("cancelled", at);
        runStatus("failed", at);
      },
      cancelled: (d, at) => {
        closeUnderWay("cancelled", at);
        runStatus("cancelled", at);
      },
    };

    const factOf = (type) => type.replace(/^dev\.cadre\.execution\./, "").replace(/\.v\d+$/, "");
    subscribe(feed, (cloudEvent, source, sequence) => {
      const fact = factOf(cloudEvent.type);
      const handler = apply[fact];
      if (!handler) return;
      handler(cloudEvent.data, cloudEvent.time, sequence);
      refreshTimeline(sequence);
      measured(cloudEvent);
      if (fact === "completed" || fact === "failed" || fact === "cancelled") {
        // The feed ends with the run; without this EventSource would reconnect for nothing.
        source.close();
        liveState("ended");
        for (const card of $$("#escalations article.escalation")) card.remove();
      }
    }, (type) => Object.hasOwn(apply, factOf(type)));

    // Interactions recorded apart from the run's own facts (a question's answer, a review's
    // feedback) come on the workflow's feed.
    const interaction = (type) => type.includes(".interaction_recorded.") || type.includes(".question_answered.");
    subscribe(only(workflowFeed, interaction), (cloudEvent, source, sequence) => {
      const d = cloudEvent.data;
      if (!d || d.executionId !== executionId) return;
      refreshTimeline(sequence);
      measured(cloudEvent);
    }, interaction);
  }

  // ---- Forms: they call the JSON API and show its problems where they belong. ----

  async function send(method, url, body) {
    const response = await fetch(url, {
      method,
      headers: { "content-type": "application/json", accept: "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let json = null;
    try {
      json = await response.json();
    } catch {
      json = null;
    }
    return { response, json };
  }

  function problemText(json, response) {
    if (json && json.detail) return json.detail;
    if (json && json.title) return json.title;
    return "The request failed (" + response.status + ").";
  }

  // A problem+json answer on one line: its title, its detail, and each error's field.
  function problemSummary(json, response) {
    if (!json || !(json.title || json.detail)) return problemText(json, response);
    let text = [json.title, json.detail].filter(Boolean).join(": ");
    for (const e of json.errors || []) text += "; " + (e.pointer ? e.pointer + " " : "") + (e.message || "invalid");
    return text;
  }

  // The element of `form` whose data-pointer is the longest prefix of a JSON pointer of the
  // request (a whole path segment at a time), else its `.form-error` line (data-pointer="").
  function byPointer(form, pointer) {
    let best = form.querySelector('[data-pointer=""]');
    let bestLength = -1;
    for (const el of $$("[data-pointer]", form)) {
      const p = el.dataset.pointer;
      if (p && (pointer === p || pointer.startsWith(p + "/")) && p.length > bestLength) {
        best = el;
        bestLength = p.length;
      }
    }
    return best;
  }

  // Shows a problem's errors in `form`, each at the element `target(pointer)` names (inside
  // its label, or right after it) and marked invalid; a problem without errors goes to the
  // form's `.form-error` line.
  let errorCount = 0;
  function formProblems(form, target) {
    function clear() {
      $$(".field-error", form).forEach((e) => e.remove());
      $$("[aria-invalid]", form).forEach((e) => {
        e.removeAttribute("aria-invalid");
        e.removeAttribute("aria-describedby");
      });
      $(".form-error", form).textContent = "";
    }

    function show(el, message) {
      if (el.classList.contains("form-error")) {
        el.textContent = (el.textContent ? el.textContent + " " : "") + message;
        return;
      }
      errorCount += 1;
      const note = document.createElement("span");
      note.className = "field-error";
      note.id = "field-error-" + errorCount;
      note.textContent = message;
      el.setAttribute("aria-invalid", "true");
      el.setAttribute("aria-describedby", note.id);
      // Inside the field's label, right under it; after a group (a fieldset) that has none.
      const label = el.closest("label");
      if (label) label.append(note);
      else el.after(note);
    }

    function report(json, response) {
      const errors = (json && json.errors) || [];
      if (!errors.length) show($(".form-error", form), problemText(json, response));
      for (const e of errors) show(target(e.pointer || ""), e.message || e.detail || "invalid");
      const first = $(".field-error", form);
      if (first) first.scrollIntoView({ block: "center" });
    }

    return { clear, report };
  }

  const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

  function builder(form) {
    const stepTemplate = $("#step-template");
    const phaseTemplate = $("#phase-template");

    function renumber(container) {
      $$(":scope > fieldset", container).forEach((fieldset, i) => {
        $(".n", fieldset).textContent = String(i + 1);
      });
    }

    function add(template, container) {
      const fieldset = template.content.firstElementChild.cloneNode(true);
      $(".remove", fieldset).addEventListener("click", () => {
        fieldset.remove();
        renumber(container);
      });
      container.append(fieldset);
      renumber(container);
      return fieldset;
    }

    $("#add-step").addEventListener("click", () => add(stepTemplate, $("#steps")));
    $("#add-phase").addEventListener("click", () => add(phaseTemplate, $("#phases")));
    add(stepTemplate, $("#steps"));

    function field(fieldset, name) {
      return $('[data-field="' + name + '"]', fieldset).value.trim();
    }

    function request() {
      const steps = $$("#steps > fieldset").map((fs) => {
        const step = {
          id: field(fs, "id"),
          name: field(fs, "name"),
          type: field(fs, "type"),
          description: field(fs, "description"),
          instructions: field(fs, "instructions"),
          expectedOutput: field(fs, "expectedOutput"),
          requiredSkills: list(field(fs, "requiredSkills")),
          dependsOn: list(field(fs, "dependsOn")),
        };
        const agent = field(fs, "preferredAgentId");
        if (agent) step.preferredAgentId = agent;
        const timeout = field(fs, "timeoutMinutes");
        if (timeout) step.timeoutMinutes = Number(timeout);
        return step;
      });
      const phases = $$("#phases > fieldset").map((fs) => ({
        name: field(fs, "name"),
        mode: field(fs, "mode"),
        steps: list(field(fs, "steps")),
      }));
      const body = {
        name: $("#wf-name").value.trim(),
        description: $("#wf-description").value.trim(),
        workflowType: $("#wf-type").value,
        participatingAgents: $$('#wf-agents input[name="agent"]:checked').map((c) => c.value),
        configuration: { steps },
      };
      if (phases.length) body.configuration.phases = phases;
      const coordinator = $("#wf-coordinator").value;
      if (coordinator) body.coordinatorAgentId = coordinator;
      return body;
    }

    // The element a JSON pointer of the request names: a step's or phase's field, else the
    // form element whose data-pointer is the pointer's longest prefix, else the form.
    function target(pointer) {
      const parts = pointer.split("/").slice(1);
      if (parts[0] === "configuration" && (parts[1] === "steps" || parts[1] === "phases")) {
        const container = parts[1] === "steps" ? $("#steps") : $("#phases");
        const fieldset = parts[2] !== undefined ? $$(":scope > fieldset", container)[Number(parts[2])] : null;
        if (!fieldset) return container.parentElement;
        const input = parts[3] ? $('[data-field="' + parts[3] + '"]', fieldset) : null;
        return input || fieldset;
      }
      return byPointer(form, pointer);
    }

    const problems = formProblems(form, target);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      problems.clear();
      const button = $("#create");
      button.disabled = true;
      try {
        const { response, json } = await send("POST", "/v1/workflows", request());
        if (response.status === 201 && json && json.id) {
          location.assign("/console/workflows/" + json.id);
          return;
        }
        problems.report(json, response);
      } finally {
        button.disabled = false;
      }
    });
  }

  // A workflow made of a template: each role mapped to the agent chosen for it (a role left
  // unchosen is left out, for the API to name it).
  function fromTemplate(form) {
    const problems = formProblems(form, (pointer) => byPointer(form, pointer));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      problems.clear();
      const body = { agents: {} };
      const name = $("#ft-name", form).value.trim();
      if (name) body.name = name;
      const description = $("#ft-description", form).value.trim();
      if (description) body.description = description;
      for (const select of $$("select[data-role]", form)) {
        if (select.value) body.agents[select.dataset.role] = select.value;
      }
      const coordinator = $("#ft-coordinator", form).value;
      if (coordinator) body.coordinatorAgentId = coordinator;
      const button = $("#create-from-template", form);
      button.disabled = true;
      try {
        const { response, json } = await send("POST", "/v1/templates/" + form.dataset.template + "/workflows", body);
        if (response.status === 201 && json && json.id) {
          location.assign("/console/workflows/" + json.id);
          return;
        }
        problems.report(json, response);
      } finally {
        button.disabled = false;
      }
    });
  }

  // Delegated: the workflow page reloads its `main`, this form with it.
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (form.id !== "start-run") return;
    event.preventDefault();
    const error = $(".error", form);
    error.textContent = "";
    const raw = $("#run-input", form).value.trim();
    let body = {};
    if (raw) {
      try {
        body = { input: JSON.parse(raw) };
      } catch {
        error.textContent = "The input is not JSON.";
        return;
      }
    }
    const { response, json } = await send("POST", "/v1/workflows/" + form.dataset.workflow + "/executions", body);
    if (response.ok && json && json.executionId) {
      location.assign("/console/executions/" + json.executionId);
    } else {
      error.textContent = problemText(json, response);
    }
  });

  // ---- Controls: a run's pause, resume and cancel; a workflow's pause and resume. ----

  // The buttons are shown by the run's status (see showRunActions), which only the log's
  // events change: a click sends the command, and the page changes when the log records it.
  function runControls(executionId) {
    const box = $("#run-actions");
    const dialog = $("#cancel-dialog");
    if (!box || !dialog) return;
    const note = $(".note", box);
    const error = $(".error", box);
    const cancelForm = $("#cancel-form", dialog);
    const problems = formProblems(cancelForm, (pointer) => byPointer(cancelForm, pointer));

    async function control(action, extra) {
      const shown = $("#run-status").textContent;
      error.textContent = "";
      note.textContent = "";
      $$("button", box).forEach((b) => (b.disabled = true));
      const answer = await send("POST", "/v1/executions/" + executionId + "/" + action, { requestedBy: "console", ...extra });
      if (!answer.response.ok) {
        $$("button", box).forEach((b) => (b.disabled = false));
      } else if ($("#run-status").textContent === shown) {
        note.textContent = "Accepted; waiting for the log to record it…";
      }
      return answer;
    }

    box.addEventListener("click", async (event) => {
      const button = event.target.closest("[data-run-action]");
      if (!button) return;
      const action = button.dataset.runAction;
      if (action === "cancel") {
        problems.clear();
        dialog.showModal();
        return;
      }
      const { response, json } = await control(action, {});
      if (!response.ok) error.textContent = problemSummary(json, response);
    });
    $("#cancel-keep", dialog).addEventListener("click", () => dialog.close());
    cancelForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      problems.clear();
      const reason = $("#cancel-reason", cancelForm).value.trim();
      const submit = $('button[type="submit"]', cancelForm);
      submit.disabled = true;
      try {
        const { response, json } = await control("cancel", reason ? { reason } : {});
        if (response.ok) dialog.close();
        else problems.report(json, response);
      } finally {
        submit.disabled = false;
      }
    });
  }

  // Delegated: the workflow page reloads its `main`, buttons included.
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("#workflow-actions [data-workflow-action]");
    if (!button) return;
    const box = button.closest("#workflow-actions");
    const error = $(".error", box);
    error.textContent = "";
    button.disabled = true;
    const url = "/v1/workflows/" + box.dataset.workflow + "/" + button.dataset.workflowAction;
    const { response, json } = await send("POST", url, { requestedBy: "console" });
    if (response.ok) {
      // The log's event reloads the page (with the buttons the new status allows); without a
      // live feed, reload it now: the answer came once the read models had the change.
      if ($("#live").textContent !== "live") await reloadMain().catch(() => null);
    } else {
      error.textContent = problemSummary(json, response);
      button.disabled = false;
    }
  });

  // Escalation actions, wherever a card is (delegated: cards come and go).
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("form.resolve [data-action]");
    if (!button) return;
    const form = button.closest("form.resolve");
    const action = button.dataset.action;
    const body = { action, requestedBy: "console" };
    const reason = form.elements.reason && form.elements.reason.value.trim();
    if (reason) body.reason = reason;
    if (action === "reassign") body.agentId = form.elements.agentId.value;
    if (action === "provideOutput") body.output = form.elements.output.value;
    const error = $(".error", form);
    error.textContent = "";
    $$("button", form).forEach((b) => (b.disabled = true));
    const { response, json } = await send("POST", "/v1/escalations/" + form.dataset.escalation + "/resolve", body);
    if (response.ok) {
      form.replaceWith(Object.assign(document.createElement("p"), { className: "outcome", textContent: "Sent: " + action }));
    } else {
      error.textContent = problemText(json, response);
      $$("button", form).forEach((b) => (b.disabled = false));
    }
  });

  const body = document.body;
  if ($("#builder")) builder($("#builder"));
  if ($("#from-template")) fromTemplate($("#from-template"));
  if (body.dataset.workflowFeed && body.dataset.feed) {
    execution(body.dataset.feed, body.dataset.workflowFeed);
  } else if (body.dataset.feed && body.dataset.reloadOn) {
    reloadOn(body.dataset.feed, body.dataset.reloadOn.split(/\s+/).filter(Boolean));
  }
})();
