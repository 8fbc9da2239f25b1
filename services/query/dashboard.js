// The dashboard's script: a file, not an inline <script>, so the Content-Security-Policy can say
// script-src 'self'. It builds the page with DOM calls only (no markup strings, no inline handlers
// or style attributes), which the policy allows.
"use strict";
const fmt = n => (n === undefined || n === null) ? "–" : Number(n).toLocaleString("en-US");
const $ = id => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const samples = [];  // [time s, arrived, received]
let lastStats = null;

function text(el, value) { if (el.textContent !== value) el.textContent = value; }

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const [name, value] of Object.entries(attrs || {})) tr.setAttribute(name, value);
  for (const [value, cls] of cells) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = value;
    tr.appendChild(td);
  }
  return tr;
}

function drawChart() {
  const cut = Date.now() / 1000 - 300;
  while (samples.length && samples[0][0] < cut) samples.shift();
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i][0] - samples[i - 1][0];
    if (dt > 0) rates.push([samples[i][0], (samples[i][1] - samples[i - 1][1]) / dt, (samples[i][2] - samples[i - 1][2]) / dt]);
  }
  const max = Math.max(1, ...rates.map(r => Math.max(r[1], r[2])));
  const x = t => 400 * (t - cut) / 300, y = v => 88 - 84 * v / max;
  const line = (k, series) => {
    const el = document.createElementNS(SVG, "polyline");
    el.setAttribute("class", series);
    el.setAttribute("points", rates.map(r => `${x(r[0]).toFixed(1)},${y(r[k]).toFixed(1)}`).join(" "));
    return el;
  };
  $("chart").replaceChildren(line(1, "in"), line(2, "out"));
  const last = rates[rates.length - 1];
  text($("rate-in"), last ? fmt(Math.round(last[1])) : "–");
  text($("rate-out"), last ? fmt(Math.round(last[2])) : "–");
}

async function refreshStats() {
  try {
    const resp = await fetch("stats");
    const s = await resp.json();
    if (!resp.ok) throw new Error(s.error ? s.error.message : resp.status);
    lastStats = s;
    text($("arrived"), fmt(s.arrived));
    text($("received"), fmt(s.received));
    text($("unique"), fmt(s.unique_processed));
    text($("dup-window"), fmt(s.duplicates.window));
    text($("dup-store"), fmt(s.duplicates.store));
    text($("invalid"), fmt(s.invalid));
    text($("pending"), fmt(s.consumer ? s.consumer.pending : null));
    text($("ack-pending"), fmt(s.consumer ? s.consumer.ack_pending : null));
    const status = $("status");
    status.className = s.sink.ready ? "ok" : "bad";
    text(status, s.sink.ready ? "ready" : "sink not ready: " + (s.sink.last_error || ""));
    text($("uptime"), "up " + Math.round(s.uptime_seconds) + " s");
    text($("updated"), "updated " + new Date().toLocaleTimeString());
    const body = $("topics").tBodies[0];
    body.replaceChildren(...s.topics.map(t => row(
      [[t.topic], [fmt(t.count), "n"], [fmt(t.duplicates.window), "n"], [fmt(t.duplicates.store), "n"]],
      {"data-topic": t.topic})));
    const select = $("topic"), known = new Set([...select.options].map(o => o.value));
    for (const t of s.topics) if (!known.has(t.topic)) select.add(new Option(t.topic, t.topic));
    samples.push([Date.now() / 1000, s.arrived, s.received]);
    drawChart();
  } catch (err) {
    $("status").className = "bad";
    text($("status"), "unreachable: " + err.message);
  }
}

async function refreshDeadLetters() {
  try {
    const page = await (await fetch("dead-letters?limit=5")).json();
    $("dead-letters").tBodies[0].replaceChildren(...page.dead_letters.map(d => row([[d.seq], [d.subject], [d.reason, "reason"]])));
  } catch (err) { /* shown by the stats status */ }
}

async function refreshEvents() {
  const topic = $("topic").value, needle = $("search").value.toLowerCase();
  const query = new URLSearchParams({order: "desc", limit: "100"});
  if (topic) query.set("topic", topic);
  try {
    const page = await (await fetch("events?" + query)).json();
    const shown = page.events.filter(e => !needle ||
      (e.event_id + " " + e.source + " " + JSON.stringify(e.payload)).toLowerCase().includes(needle));
    $("events").tBodies[0].replaceChildren(...shown.slice(0, 50).map(e => row(
      [[e.stored_at.replace("T", " ").slice(0, 23)], [e.topic], [e.event_id], [e.source], [JSON.stringify(e.payload)]])));
  } catch (err) { /* shown by the stats status */ }
}

$("topic").addEventListener("change", refreshEvents);
$("search").addEventListener("input", refreshEvents);
refreshStats(); refreshDeadLetters(); refreshEvents();
setInterval(refreshStats, 1000);
setInterval(refreshDeadLetters, 3000);
setInterval(refreshEvents, 2000);

