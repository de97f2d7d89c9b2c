// The labeling page: fetch a task, show it, collect a choice, post it with an idempotency key.
//
// Keyboard: 1-4 choose, Enter submits, S skips, U undoes the last label (not while typing a
// reason; Ctrl+Enter submits from the reason box). Left/right order is chosen by the server per
// view and echoed back in `shown_left`; the page maps "A (left)"/"B (right)" to responses a/b.
"use strict";

const CHOICES = ["left", "right", "tie", "both_bad"];
const state = { task: null, choice: null, shownAt: 0, busy: false };

function $(id) {
  return document.getElementById(id);
}

function setStatus(msg, isError) {
  const node = $("status");
  node.textContent = msg;
  node.classList.toggle("error", Boolean(isError));
}

function renderConversation(task) {
  const box = $("conversation");
  box.replaceChildren();
  const turns = task.messages && task.messages.length ? task.messages : [{ role: "user", content: task.prompt }];
  for (const turn of turns) {
    const div = document.createElement("div");
    div.className = "turn turn-" + (turn.role === "assistant" ? "assistant" : turn.role === "system" ? "system" : "user");
    const who = document.createElement("div");
    who.className = "role";
    who.textContent = String(turn.role);
    div.appendChild(who);
    const body = document.createElement("div");
    body.className = "md";
    body.appendChild(renderMarkdown(turn.content));
    div.appendChild(body);
    box.appendChild(div);
  }
}

function renderProgress(progress) {
  if (!progress) return;
  const open = progress.available === null ? "…" : String(progress.available);
  $("progress").textContent = progress.labeled + " labeled · " + open + " open";
}

function showTask(task, progress) {
  state.task = task;
  state.choice = null;
  state.shownAt = performance.now();
  renderProgress(progress);
  document.querySelectorAll(".choice").forEach((b) => b.classList.remove("selected"));
  document.querySelectorAll("input[name=strength]").forEach((r) => (r.checked = r.value === ""));
  $("reason").value = "";
  $("submit").disabled = true;
  $("task").hidden = !task;
  $("empty").hidden = Boolean(task);
  if (!task) return;
  renderConversation(task);
  $("left-body").replaceChildren(renderMarkdown(task.left));
  $("right-body").replaceChildren(renderMarkdown(task.right));
  $("task").dataset.comparison = String(task.comparison_id);
}

async function loadNext() {
  const out = await api.call("GET", "/api/tasks/next");
  showTask(out.task, out.progress);
  if (!out.task) setStatus("No comparisons left for you right now.");
}

function choose(choice) {
  if (!state.task || state.busy) return;
  state.choice = choice;
  document.querySelectorAll(".choice").forEach((b) => b.classList.toggle("selected", b.dataset.choice === choice));
  $("submit").disabled = false;
}

// Displayed sides -> the stored choice about responses a and b.
function storedChoice(choice, shownLeft) {
  if (choice === "left") return shownLeft;
  if (choice === "right") return shownLeft === "a" ? "b" : "a";
  return choice;
}

// Post with retries: the same idempotency key makes a retried post safe.
async function postLabel(body) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await api.call("POST", "/api/labels", body);
    } catch (e) {
      const retriable = e.status === undefined || e.status >= 500 || e.status === 429;
      if (!retriable || attempt >= 5) throw e;
      setStatus("connection problem, retrying…", true);
      await new Promise((r) => setTimeout(r, 300 * 2 ** attempt));
    }
  }
}

async function withBusy(fn) {
  if (state.busy) return;
  state.busy = true;
  try {
    await fn();
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    state.busy = false;
  }
}

function submit() {
  if (!state.task || !state.choice) return;
  const task = state.task;
  const strength = document.querySelector("input[name=strength]:checked");
  const body = {
    comparison_id: task.comparison_id,
    choice: storedChoice(state.choice, task.shown_left),
    shown_left: task.shown_left,
    strength: strength && strength.value ? strength.value : null,
    reason: $("reason").value.trim() || null,
    seconds: Math.round((performance.now() - state.shownAt) / 100) / 10,
    idempotency_key: task.view_id,
  };
  withBusy(async () => {
    await postLabel(body);
    setStatus("Saved.");
    await loadNext();
  });
}

function skip() {
  if (!state.task) return;
  const id = state.task.comparison_id;
  withBusy(async () => {
    await api.call("POST", "/api/tasks/" + id + "/skip");
    setStatus("Skipped.");
    await loadNext();
  });
}

function undo() {
  withBusy(async () => {
    const out = await api.call("POST", "/api/labels/undo");
    if (!out.undone) {
      setStatus("Nothing to undo.");
      return;
    }
    showTask(out.task, out.progress);
    setStatus("Undone: label the comparison again.");
  });
}

function onKey(ev) {
  if (ev.target && ev.target.id === "reason") {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      submit();
    }
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const n = "1234".indexOf(ev.key);
  if (n >= 0) choose(CHOICES[n]);
  else if (ev.key === "Enter") {
    ev.preventDefault();
    submit();
  } else if (ev.key === "s" || ev.key === "S") skip();
  else if (ev.key === "u" || ev.key === "U") undo();
}

document.addEventListener("DOMContentLoaded", async () => {
  if (!api.requireLogin()) return;
  document.querySelectorAll(".choice").forEach((b) => b.addEventListener("click", () => choose(b.dataset.choice)));
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", undo);
  $("logout").addEventListener("click", api.logout);
  document.addEventListener("keydown", onKey);
  try {
    const me = await api.call("GET", "/api/me");
    $("whoami").textContent = me.name;
    if (me.role === "admin") $("admin-link").hidden = false;
    await loadNext();
  } catch (e) {
    setStatus(e.message, true);
  }
});
