// sleuth's page: new research (with clarifying questions), a live view of a run, its answer or report, history.
// Plain DOM; every piece of text from the server is set with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let current = null;       // the run shown
let streamAbort = null;   // stops the live stream of the run shown
let asked = new Set();    // runs whose clarifying questions were already shown

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { sessionStorage.setItem("sleuth-token", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
  return sessionStorage.getItem("sleuth-token") || "";
}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, Object.assign({}, opts, {headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body)}));
  if (res.status === 401) {
    const given = prompt("This server needs a token:");
    if (given) { sessionStorage.setItem("sleuth-token", given); return api(path, opts); }
  }
  return res;
}

async function errorText(res) {
  try { const b = await res.json(); return (b.error && b.error.message) || res.statusText; } catch (e) { return res.statusText; }
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// ---------------------------------------------------------------- events
function describe(kind, d) {
  switch (kind) {
    case "status": return d.status + (d.note ? " — " + d.note : "") + (d.error ? " — " + d.error : "");
    case "step": return `step ${d.step}: ${d.tool} ${d.summary || ""}`;
    case "queries": return d.queries.join(" | ");
    case "page": return d.url;
    case "observation": return d.ok ? `${d.tool} ok (${(d.seconds || 0).toFixed(2)} s)` : `${d.tool} error: ${d.error}`;
    case "context": return "context manager compressed old observations " + JSON.stringify(d);
    case "format_error": return d.message;
    case "blocked": return d.reason;
    case "question": return `${d.index + 1}/${d.of}: ${d.question}`;
    case "answers": return d.timed_out ? "no answers; going on without them" : d.answers.join(" / ");
    case "section": return d.title || d.heading || "";
    case "stage": return d.stage || d.name || JSON.stringify(d);
    case "answer": return d.answer || "(no answer)";
    default: { const rest = Object.assign({}, d); delete rest.ts; return JSON.stringify(rest).slice(0, 300); }
  }
}

function showEvent(kind, d) {
  if (kind === "observation") return;   // shown through step/page
  const li = el("li", "ev-" + kind);
  li.append(el("span", "kind", kind), el("span", "", describe(kind, d)));
  $("events").append(li);
  $("events").scrollTop = $("events").scrollHeight;
  if (kind === "status") setStatus(d.status);
  if (kind === "section") {
    const box = el("div", "section");
    box.append(el("strong", "", d.title || d.heading || "Section"));
    if (d.text || d.markdown) box.append(el("p", "", d.text || d.markdown));
    $("sections").append(box);
  }
}

function setStatus(s) {
  $("run-status").textContent = s;
  $("run-status").className = "status " + s;
  $("cancel").disabled = ["done", "failed", "cancelled", "interrupted"].includes(s);
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
async function stream(runId) {
  if (streamAbort) streamAbort.abort();
  const ctl = new AbortController();
  streamAbort = ctl;
  let last = 0;
  for (let tries = 0; tries < 20 && !ctl.signal.aborted; tries++) {
    try {
      const res = await api(`/api/runs/${runId}/stream?after=${last}`, {signal: ctl.signal});
      if (!res.ok) throw new Error(await errorText(res));
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true});
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          let kind = "message", data = "", id = null;
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
            else if (line.startsWith("id: ")) id = parseInt(line.slice(4), 10);
          }
          if (!data) continue;
          if (id !== null) last = id;
          const d = JSON.parse(data);
          if (kind === "end") { await finished(runId); return; }
          showEvent(kind, d);
          if (kind === "status" && d.status === "waiting") await maybeClarify(runId);
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

// ---------------------------------------------------------------- clarifying questions
async function maybeClarify(runId) {
  if (asked.has(runId)) return;
  const res = await api(`/api/runs/${runId}`);
  if (!res.ok) return;
  const run = await res.json();
  if (!run.waiting_for_answers || !run.questions) return;
  asked.add(runId);
  const box = $("clarify-questions");
  box.replaceChildren();
  run.questions.forEach((q, i) => {
    const label = el("label", "", q);
    const input = el("input");
    input.id = "clarify-" + i; input.name = "a" + i;
    label.htmlFor = input.id;
    box.append(label, input);
  });
  const send = async (answers) => {
    $("clarify").close();
    await api(`/api/runs/${runId}/answers`, {method: "POST", body: {answers}});
  };
  $("clarify-form").onsubmit = (ev) => { ev.preventDefault(); send(run.questions.map((_, i) => $("clarify-" + i).value)); };
  $("clarify-skip").onclick = () => send([]);
  $("clarify").showModal();
}

// ---------------------------------------------------------------- results
async function finished(runId) {
  const res = await api(`/api/runs/${runId}`);
  if (!res.ok) return;
  const run = await res.json();
  setStatus(run.status);
  const r = run.result || {};
  if (run.kind === "report" || (r.artifacts || []).includes("report.html")) {
    const html = await api(`/api/runs/${runId}/report.html`);
    if (html.ok) { $("report-frame").srcdoc = await html.text(); $("report").hidden = false; }
  }
  if (r.answer !== undefined && run.kind !== "report") {
    $("answer").hidden = false;
    $("answer-text").textContent = r.answer === null ? `No answer (${r.finish_reason || run.status})` : r.answer;
    const list = $("citations");
    list.replaceChildren();
    for (const c of r.citations || []) {
      const li = el("li");
      li.append(el("span", "url", c.url), document.createTextNode(" — "), el("q", "", c.quote));
      li.append(el("span", "muted", c.source === "model" ? " (cited by the model; verified)" : " (where the agent read it; verified)"));
      list.append(li);
    }
    const s = r.stats || {};
    $("answer-note").textContent = (r.citations || []).length ? `${s.steps} step${s.steps === 1 ? "" : "s"}, ${s.search_queries} search quer${s.search_queries === 1 ? "y" : "ies"}, ${s.urls_opened} page${s.urls_opened === 1 ? "" : "s"} opened`
      : "No citation: the answer occurs in nothing the agent was shown.";
  } else if (run.error) {
    $("answer").hidden = false;
    $("answer-text").textContent = run.error;
  }
  loadHistory();
}

async function open(runId) {
  const res = await api(`/api/runs/${runId}`);
  if (!res.ok) return;
  const run = await res.json();
  current = runId;
  $("run").hidden = false;
  $("run-title").textContent = run.title;
  $("events").replaceChildren(); $("sections").replaceChildren(); $("citations").replaceChildren();
  $("answer").hidden = true; $("report").hidden = true;
  setStatus(run.status);
  stream(runId);
}

// ---------------------------------------------------------------- history
async function loadHistory() {
  const q = $("search").value.trim();
  const res = await api("/api/runs?limit=50" + (q ? "&q=" + encodeURIComponent(q) : ""));
  if (!res.ok) return;
  const {runs} = await res.json();
  const list = $("runs");
  list.replaceChildren();
  for (const r of runs) {
    const li = el("li");
    li.dataset.id = r.id;
    li.append(el("span", "status " + r.status, r.status), el("span", "title", r.title),
              el("span", "ans", r.answer ? "→ " + r.answer.slice(0, 60) : ""));
    li.onclick = () => open(r.id);
    list.append(li);
  }
}

// ---------------------------------------------------------------- start
async function init() {
  token();
  const res = await api("/api/kinds");
  if (res.ok) {
    const {kinds} = await res.json();
    for (const k of kinds) { const o = el("option", "", k.name); o.value = k.name; o.title = k.description; $("kind").append(o); }
  }
  $("ask-form").onsubmit = async (ev) => {
    ev.preventDefault();
    $("form-error").textContent = "";
    const text = $("question").value.trim();
    if (!text) return;
    const kind = $("kind").value || "ask";
    const params = kind === "report" ? {request: text} : {question: text};
    $("submit").disabled = true;
    try {
      const r = await api("/api/runs", {method: "POST", body: {kind, params}});
      if (!r.ok) { $("form-error").textContent = await errorText(r); return; }
      const run = await r.json();
      await open(run.id);
      loadHistory();
    } finally { $("submit").disabled = false; }
  };
  $("cancel").onclick = () => current && api(`/api/runs/${current}/cancel`, {method: "POST"});
  let t = null;
  $("search").oninput = () => { clearTimeout(t); t = setTimeout(loadHistory, 250); };
  loadHistory();
}

document.addEventListener("DOMContentLoaded", init);
