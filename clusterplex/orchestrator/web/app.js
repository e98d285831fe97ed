// ClusterPlex orchestrator page: live snapshots over Server-Sent Events (/api/v1/events).
// Every value shown comes from the network (worker names, reasons, sessions): it is only ever
// put into the page as text (textContent), never parsed as HTML.
"use strict";

const KIND_TEXT = {
  no_worker: "no worker could take it",
  remote_failed: "failed on a worker",
  refused: "a worker refused it",
  fell_back_local: "fell back to local",
  resumed: "moved to another worker",
};
const JOB_STATE_TEXT = {
  pending: "waiting for a worker",
  assigned: "starting",
  running: "transcoding",
  cancelled: "stopping",
};

let snapshotAt = 0;          // performance.now() when the last snapshot arrived
let runningJobs = [];        // [{cell, seconds}] for the ticking time column

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function cell(row, text, cls, sub) {
  const td = el("td", text, cls);
  if (sub) td.appendChild(el("span", sub, "sub"));
  row.appendChild(td);
  return td;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = String(m).padStart(2, "0"), ss = String(r).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${m}:${ss}`;
}

function shortId(id) { return String(id || "").slice(0, 8); }

function fill(tableId, items, render) {
  const body = document.querySelector(`#${tableId} tbody`);
  const rows = items.map(render);
  body.replaceChildren(...rows);
  document.getElementById(`${tableId}-empty`).classList.toggle("hidden", items.length > 0);
}

function hardware(w) {
  const hw = w.hardware || {};
  const parts = [];
  if (hw.model) parts.push(hw.model);
  parts.push(`${hw.cpus || "?"} threads${hw.arch ? ", " + hw.arch : ""}`);
  if (hw.memory) parts.push(`${Math.round(hw.memory / (1 << 30))} GiB`);
  const gpus = Array.isArray(hw.gpus) ? hw.gpus : [];
  for (const g of gpus) parts.push(`GPU ${g.name || g.vendor || "?"}`);
  const codecs = Array.isArray(hw.hw_codecs) ? hw.hw_codecs : [];
  return [parts.join(" · "), codecs.length ? "hardware codecs: " + codecs.join(", ") : "no hardware codecs"];
}

function bar(percent) {
  const outer = el("span", null, "bar");
  const inner = el("span");
  inner.style.width = `${Math.min(100, Math.max(0, percent))}%`;
  outer.appendChild(inner);
  return outer;
}

function renderWorker(w) {
  const tr = el("tr");
  tr.dataset.key = w.key;
  tr.dataset.name = w.name;
  tr.dataset.state = w.state;
  cell(tr, w.name, "name", w.name !== w.address ? w.address : "");
  const st = cell(tr, w.state.replace("_", " "), `state state-${w.state}`);
  if (w.reason) st.appendChild(el("span", w.reason, "reason"));
  const [hw, codecs] = hardware(w);
  cell(tr, hw, null, codecs);
  const cpu = (w.load && typeof w.load.cpu === "number") ? w.load.cpu : 0;
  const load = cell(tr, "", "num");
  load.appendChild(bar(cpu));
  load.appendChild(document.createTextNode(`${cpu.toFixed(0)}%`));
  cell(tr, `${w.running_jobs}/${w.max_jobs}`, "num jobs");
  const c = w.codecs;
  if (c && c.state) {
    cell(tr, `${c.state} ${c.present}/${c.total}`, `codecs-${c.state}`, c.reason || c.version || "");
  } else {
    cell(tr, "not managed", "muted");
  }
  cell(tr, w.version || "");
  return tr;
}

function renderJob(j) {
  const tr = el("tr");
  tr.dataset.id = j.id;
  tr.dataset.state = j.state;
  cell(tr, shortId(j.id), "mono", j.needs || "");
  cell(tr, j.session || "—");
  cell(tr, j.worker || "—");
  cell(tr, j.state, `state state-${j.state}`);
  const moved = j.restarts ? `moved ${j.restarts}×, continued from the last segment` : "";
  if (typeof j.progress === "number") {
    const p = cell(tr, "", "progress", moved);
    p.insertBefore(document.createTextNode(`${j.progress.toFixed(1)}%`), p.firstChild);
    p.insertBefore(bar(j.progress), p.firstChild);
  } else {
    cell(tr, JOB_STATE_TEXT[j.state] || j.state, "progress", moved);
  }
  const seconds = j.running_seconds !== null && j.running_seconds !== undefined ? j.running_seconds : j.age_seconds;
  const t = cell(tr, duration(seconds), "num time");
  runningJobs.push({cell: t, seconds});
  cell(tr, j.decision || "", "muted");
  return tr;
}

function renderRecent(r) {
  const tr = el("tr");
  tr.dataset.kind = r.kind;
  tr.dataset.job = r.job;
  cell(tr, new Date(r.time * 1000).toLocaleTimeString());
  cell(tr, KIND_TEXT[r.kind] || r.kind, `kind kind-${r.kind}`);
  cell(tr, r.session || "—");
  cell(tr, r.worker || "—");
  cell(tr, r.reason, "reason-text");
  return tr;
}

function renderFinished(j) {
  const tr = el("tr");
  tr.dataset.id = j.id;
  tr.dataset.state = j.state;
  let result, cls;
  if (j.state === "exited") {
    result = j.exit_code === 0 ? "done" : `exit code ${j.exit_code}`;
    cls = j.exit_code === 0 ? "result-ok" : "result-failed";
  } else if (j.state === "failed") {
    result = "failed"; cls = "result-failed";
  } else {
    result = j.state; cls = "";
  }
  cell(tr, shortId(j.id), "mono");
  cell(tr, j.session || "—");
  cell(tr, j.worker || "—");
  cell(tr, result, `result ${cls}`, j.reason || "");
  cell(tr, duration(j.running_seconds), "num");
  return tr;
}

function render(s) {
  snapshotAt = performance.now();
  runningJobs = [];
  document.getElementById("status").textContent = s.status;
  document.getElementById("version").textContent = `clusterplex ${s.version}`;
  fill("workers", s.workers, renderWorker);
  fill("jobs", s.jobs, renderJob);
  fill("recent", s.recent, renderRecent);
  fill("finished", s.finished, renderFinished);
  document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
}

function tick() {
  const elapsed = (performance.now() - snapshotAt) / 1000;
  for (const r of runningJobs) r.cell.textContent = duration(r.seconds + elapsed);
}

function setLive(on) {
  const live = document.getElementById("live");
  live.textContent = on ? "live" : "reconnecting…";
  live.className = on ? "on" : "off";
}

function connect() {
  const source = new EventSource("/api/v1/events");
  source.addEventListener("open", () => setLive(true));
  source.addEventListener("error", () => setLive(false));   // EventSource reconnects by itself
  source.addEventListener("snapshot", (ev) => {
    try {
      render(JSON.parse(ev.data));
    } catch (e) {
      document.getElementById("status").textContent = `cannot show the orchestrator's data: ${e}`;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  connect();
  setInterval(tick, 1000);
});
