// The dashboard's script: a file, not an inline <script>, so the Content-Security-Policy can say
// script-src 'self'. It builds the page with DOM calls only (no markup strings, no inline handlers
// or style attributes), which the policy allows.
//
// Every time on the page is ISO 8601 in UTC, and relative times ("3 s ago") use the server's clock
// on both sides, so a browser with a wrong clock or another time zone shows the same page.
"use strict";
const $ = id => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const RATES = ["appended", "arrived", "committed", "duplicates_window", "duplicates_store", "invalid"];
const LAG = ["pending", "ack_pending"];

const fmt = n => (n === undefined || n === null) ? "–" : Number(n).toLocaleString("en-US");
const fmtRate = v => (v === undefined || v === null) ? "–"
  : v < 10 ? (Math.round(v * 10) / 10).toLocaleString("en-US") : fmt(Math.round(v));
const compact = v => new Intl.NumberFormat("en-US", {notation: "compact", maximumFractionDigits: 1}).format(v);
const bytes = n => n === null || n === undefined ? "–" : n < 1e6 ? `${fmt(Math.round(n / 1e3))} kB` : `${(n / 1e6).toFixed(1)} MB`;
// "2026-11-22T20:12:50Z", or with milliseconds; from Unix seconds or an ISO string from the sink.
const iso = (at, ms) => {
  const date = typeof at === "number" ? new Date(at * 1000) : new Date(at.replace(/(\.\d{3})\d+/, "$1"));
  if (isNaN(date)) return String(at);
  const s = date.toISOString();
  return ms ? s : s.slice(0, 19) + "Z";
};
const duration = s => s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;

function text(el, value) { if (el.textContent !== value) el.textContent = value; }

function el(tag, cls, content) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (content !== undefined) node.textContent = content;
  return node;
}

function svg(tag, attrs, content) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (content !== undefined) node.textContent = content;
  return node;
}

// A read answered 401: the session ended (signed out elsewhere, or the read token was rotated).
// The login page brings the person back here once signed in again.
async function api(path) {
  const resp = await fetch(path);
  if (resp.status === 401) {
    location.assign("login");
    throw new Error("signed out");
  }
  return resp;
}

// ---- charts --------------------------------------------------------------------------------------

const rates = {interval: 2, window: 900, points: []};

function niceStep(span, count) {
  const raw = span / Math.max(1, count), mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw);
}

// Draws series (keys of rates.points) into an SVG sized by the stylesheet, one SVG unit per pixel,
// with a time axis (UTC) and a value axis. A gap in the history (the counters could not be read)
// breaks the lines.
function drawChart(node, keys, unit) {
  const width = node.clientWidth, height = node.clientHeight;
  if (!width || !height) return;
  node.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const pts = rates.points, m = {left: 46, right: 10, top: 22, bottom: 22};
  const plotW = width - m.left - m.right, plotH = height - m.top - m.bottom;
  const end = pts.length ? pts[pts.length - 1].t : Date.now() / 1000;
  // The axis spans the data it has: a page opened a minute after a start shows that minute across
  // the whole width, a day after, the last quarter of an hour.
  const start = Math.min(pts.length ? pts[0].t : end, end - rates.interval);
  const max = Math.max(1, ...pts.flatMap(p => keys.map(k => p[k] || 0)));
  const yStep = niceStep(max, Math.max(2, Math.floor(plotH / 40)));
  const top = Math.ceil(max / yStep) * yStep;
  const x = t => m.left + plotW * (t - start) / (end - start), y = v => m.top + plotH * (1 - v / top);
  const parts = [];
  for (let v = 0; v <= top + yStep / 2; v += yStep) {
    parts.push(svg("line", {class: "grid", x1: m.left, x2: width - m.right, y1: y(v), y2: y(v)}));
    parts.push(svg("text", {class: "tick y", x: m.left - 6, y: y(v) + 4}, compact(v)));
  }
  const xStep = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600].find(s => plotW / ((end - start) / s) >= 70) || 900;
  for (let t = Math.ceil(start / xStep) * xStep; t <= end; t += xStep) {
    parts.push(svg("line", {class: "grid", x1: x(t), x2: x(t), y1: m.top, y2: m.top + plotH}));
    const label = xStep < 60 ? iso(t).slice(11) : iso(t).slice(11, 16) + "Z";
    const half = label.length * 3.3;  // about half its width at 11 px: keep it off the corner titles
    if (x(t) - half >= m.left - 8 && x(t) + half <= width) {
      parts.push(svg("text", {class: "tick x", x: x(t), y: height - 6}, label));
    }
  }
  parts.push(svg("text", {class: "axis-title", x: 2, y: 11}, unit));
  parts.push(svg("text", {class: "axis-title", x: 2, y: height - 6}, "UTC"));
  parts.push(svg("line", {class: "axis", x1: m.left, x2: width - m.right, y1: m.top + plotH, y2: m.top + plotH}));
  for (const key of keys) {
    let run = [];
    const flush = () => {
      if (run.length) parts.push(svg("polyline", {class: key, points: run.join(" ")}));
      run = [];
    };
    pts.forEach((p, i) => {
      if (p[key] === null || p[key] === undefined) return flush();
      if (i > 0 && p.t - p.seconds - pts[i - 1].t > rates.interval / 2) flush();
      run.push(`${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`);
    });
    flush();
  }
  node.replaceChildren(...parts);
  // For the browser test: what the chart holds, in Unix seconds.
  node.dataset.points = String(pts.length);
  node.dataset.oldest = pts.length ? String(pts[0].t) : "";
}

function drawCharts() {
  drawChart($("chart"), RATES, "events/s");
  drawChart($("lag-chart"), LAG, "messages");
  const last = rates.points[rates.points.length - 1];
  for (const key of RATES) text($(`rate-${key}`), last ? fmtRate(last[key]) : "–");
  const pts = rates.points;
  text($("rates-span"), pts.length ? `since ${iso(pts[0].t)}, a point every ${rates.interval} s` : "no samples yet");
}

async function refreshHistory() {
  const last = rates.points[rates.points.length - 1];
  try {
    const resp = await api("stats/history" + (last ? `?since=${last.t}` : ""));
    if (!resp.ok) return;
    const answer = await resp.json();
    rates.interval = answer.interval_seconds;
    rates.window = answer.window_seconds;
    rates.points.push(...answer.points);
    const newest = rates.points.length ? rates.points[rates.points.length - 1].t : 0;
    while (rates.points.length && rates.points[0].t < newest - rates.window) rates.points.shift();
    drawCharts();
  } catch (err) { /* shown by the stats status */ }
}

// ---- stats ---------------------------------------------------------------------------------------

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const [name, value] of Object.entries(attrs || {})) tr.setAttribute(name, value);
  for (const [value, cls, title] of cells) {
    const td = el("td", cls, value);
    if (title) td.title = title;
    tr.appendChild(td);
  }
  return tr;
}

function showStats(s) {
  text($("arrived"), fmt(s.arrived));
  text($("received"), fmt(s.received));
  text($("unique"), fmt(s.unique_processed));
  text($("dup-window"), fmt(s.duplicates.window));
  text($("dup-store"), fmt(s.duplicates.store));
  text($("invalid"), fmt(s.invalid));
  text($("invariant"), s.invariant_holds ? "= unique + store dup. + invalid" : "≠ unique + store dup. + invalid");
  text($("appended"), fmt(s.stream ? s.stream.last_seq : null));
  $("invariant").classList.toggle("bad", !s.invariant_holds);
  const consumer = s.consumer || {}, sink = s.sink;
  text($("pending"), fmt(consumer.pending));
  text($("ack-pending"), fmt(consumer.ack_pending));
  text($("redelivered"), fmt(consumer.redelivered));
  $("pending").classList.toggle("busy", consumer.pending > 0);
  text($("sink-state"), sink.ready ? "ready" : "not ready");
  $("sink-state").className = sink.ready ? "ok" : "bad";
  text($("last-commit"), sink.last_commit_at ? iso(sink.last_commit_at) : "none yet");
  text($("last-commit-ago"), sink.last_commit_at ? `(${duration(Math.max(0, s.as_of - sink.last_commit_at))} ago)` : "");
  text($("last-error"), sink.last_error || "none");
  $("last-error").className = sink.last_error ? "bad" : "";
  text($("batches"), fmt(sink.batches_committed));
  text($("stream-size"), s.stream ? `${fmt(s.stream.messages)} messages, ${bytes(s.stream.bytes)}` : "–");
  text($("store-size"), bytes(sink.store_bytes));
  const status = $("status");
  status.className = "chip " + (sink.ready ? "ok" : "bad");
  text(status, sink.ready ? "ready" : "sink not ready");
  text($("as-of"), iso(s.as_of));
  text($("uptime"), `up ${duration(s.uptime_seconds)}`);
  // One line per partition (one with a single partition); those that did not answer are named.
  const missing = s.missing_partitions || [];
  text($("missing-partitions"), missing.length ? `not answering: ${missing.join(", ")}` : "");
  $("missing-partitions").className = missing.length ? "meta bad" : "meta";
  $("partitions").tBodies[0].replaceChildren(...(s.partitions || []).map(p => row(
    [[fmt(p.partition), "n"], [p.owner ? `${p.owner}${p.pid ? ` (pid ${p.pid})` : ""}` : "–"],
      [missing.includes(p.partition) ? "missing" : p.ready ? "ready" : "not ready",
        missing.includes(p.partition) || !p.ready ? "bad" : "ok"],
      [fmt(p.received), "n"], [fmt(p.unique_processed), "n"], [fmt(p.duplicates.window), "n"],
      [fmt(p.duplicates.store), "n"], [fmt(p.invalid), "n"], [fmt(p.consumer.pending), "n"],
      [fmt(p.consumer.ack_pending), "n"]],
    {"data-partition": String(p.partition)})));
  $("topics").tBodies[0].replaceChildren(...s.topics.map(t => row(
    [[t.topic], [fmt(t.count), "n"], [fmt(t.duplicates.window), "n"], [fmt(t.duplicates.store), "n"]],
    {"data-topic": t.topic})));
  const select = $("topic"), known = new Set([...select.options].map(o => o.value));
  for (const t of s.topics) if (!known.has(t.topic)) select.add(new Option(t.topic, t.topic));
}

async function refreshStats() {
  try {
    const resp = await api("stats");
    const s = await resp.json();
    if (!resp.ok) throw new Error(s.error ? s.error.message : resp.status);
    showStats(s);
  } catch (err) {
    $("status").className = "chip bad";
    text($("status"), "unreachable: " + err.message);
    $("sink-state").className = "bad";
    text($("sink-state"), "unknown: no answer from /stats");
  }
}

// ---- dead letters and events ---------------------------------------------------------------------

const letters = new Map();  // partition:id -> <details>, kept so that an opened one stays open

function deadLetter(d) {
  const item = el("details", "letter");
  const summary = el("summary");
  summary.append(el("span", "seq", `#${d.seq}`), el("time", "time", iso(d.stored_at, true)),
    el("span", "subject", d.subject), el("span", "reason", d.reason));
  const facts = el("dl", "kv");
  const fact = (name, value, cls) => facts.append(el("dt", "", name), el("dd", cls, value));
  fact("reason", d.reason, "reason");
  fact("subject", d.subject);
  fact("stream seq.", fmt(d.seq));
  fact("stored", iso(d.stored_at, true));
  for (const [name, value] of Object.entries(d.headers || {})) fact(`header ${name}`, value);
  fact("body", `${fmt(d.body_bytes)} bytes${d.body_truncated ? ", start shown" : ""}`);
  item.append(summary, facts, el("pre", "body", d.body));
  return item;
}

async function refreshDeadLetters() {
  try {
    const page = await (await api("dead-letters?limit=8")).json();
    // Ids are unique within a partition: the key names both.
    const key = d => `${d.partition === undefined ? 0 : d.partition}:${d.id}`;
    const shown = page.dead_letters.map(d => letters.get(key(d)) || deadLetter(d));
    letters.clear();
    page.dead_letters.forEach((d, i) => letters.set(key(d), shown[i]));
    $("dead-letters").replaceChildren(...(shown.length ? shown : [el("p", "meta", "none")]));
  } catch (err) { /* shown by the stats status */ }
}

async function refreshEvents() {
  const topic = $("topic").value, needle = $("search").value.toLowerCase();
  const query = new URLSearchParams({order: "desc", limit: "100"});
  if (topic) query.set("topic", topic);
  try {
    const page = await (await api("events?" + query)).json();
    const shown = page.events.filter(e => !needle ||
      (e.event_id + " " + e.source + " " + JSON.stringify(e.payload)).toLowerCase().includes(needle));
    $("events").tBodies[0].replaceChildren(...shown.slice(0, 50).map(e => {
      const payload = JSON.stringify(e.payload);
      return row([[iso(e.stored_at, true), "time"], [e.topic, "topic"], [e.event_id, "id"], [e.source, "source"],
        [payload, "payload", payload]]);
    }));
  } catch (err) { /* shown by the stats status */ }
}

$("topic").addEventListener("change", refreshEvents);
$("search").addEventListener("input", refreshEvents);
const resized = new ResizeObserver(drawCharts);
resized.observe($("chart")); resized.observe($("lag-chart"));
// One history request at a time, each asking only for points newer than those it has.
async function followHistory() { await refreshHistory(); setTimeout(followHistory, rates.interval * 1000); }
refreshStats(); followHistory(); refreshDeadLetters(); refreshEvents();
setInterval(refreshStats, 1000);
setInterval(refreshDeadLetters, 3000);
setInterval(refreshEvents, 2000);
