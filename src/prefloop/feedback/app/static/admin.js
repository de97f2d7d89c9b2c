// Admin page: per-annotator quality table, disable/enable (which also excludes labels from
// exports and training), and adding annotators (shows their one-time login link once).
"use strict";

function $(id) {
  return document.getElementById(id);
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  return typeof value === "number" ? value.toFixed(digits) : String(value);
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function renderRow(a) {
  const tr = document.createElement("tr");
  tr.dataset.annotator = a.name;
  if (a.disabled) tr.className = "disabled";
  cell(tr, a.name);
  cell(tr, a.kind);
  cell(tr, a.role);
  cell(tr, String(a.labels));
  cell(tr, fmt(a.gold_accuracy, 2));
  cell(tr, String(a.gold_labels));
  cell(tr, fmt(a.peer_agreement, 2));
  cell(tr, fmt(a.cohen_kappa, 2));
  cell(tr, fmt(a.median_seconds, 1));
  cell(tr, fmt(a.left_rate, 2));
  cell(tr, a.disabled ? "disabled, excluded" : "active");
  const btn = document.createElement("button");
  btn.type = "button";
  btn.textContent = a.disabled ? "enable" : "disable + exclude";
  btn.addEventListener("click", () => setDisabled(a.id, !a.disabled));
  cell(tr, "").appendChild(btn);
  return tr;
}

async function refresh() {
  const out = await api.call("GET", "/api/admin/annotators");
  $("annotators").querySelector("tbody").replaceChildren(...out.annotators.map(renderRow));
  $("summary").textContent =
    out.labels + " labels on " + out.comparisons + " comparisons · Fleiss κ " + fmt(out.fleiss_kappa, 2) +
    " (comparisons with ≥2 labels, active annotators)";
}

async function setDisabled(id, disabled) {
  try {
    await api.call("PATCH", "/api/admin/annotators/" + id, { disabled });
    await refresh();
  } catch (e) {
    $("status").textContent = e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  if (!api.requireLogin()) return;
  $("logout").addEventListener("click", api.logout);
  $("add-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const out = await api.call("POST", "/api/admin/annotators", { name: $("add-name").value, role: $("add-role").value });
      $("add-result").textContent = "One-time login link for " + out.name + ": " + window.location.origin + out.login_path;
      await refresh();
    } catch (e) {
      $("add-result").textContent = e.message;
    }
  });
  refresh().catch((e) => ($("status").textContent = e.message));
});
