// lang1-ops operational views: sign-in, JSON API calls with the bearer token, sortable tables,
// and the three pages. No dependencies. Values are only ever written with textContent (never
// innerHTML), so nothing the API returns can inject markup.
"use strict";

const TOKEN_KEY = "lang1ops.token";
const page = document.body.dataset.page;
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function status(text, isError = false) {
  const s = $("#status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = Object.assign({ Authorization: `Bearer ${token}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) throw new Unauthorized("sign-in needed");
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      const body = await response.json();
      message = (body.issue && body.issue[0] && body.issue[0].diagnostics) || message;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function showSignIn(message = "") {
  $("#content").hidden = true;
  $("#signin").hidden = false;
  $("#signout").hidden = true;
  $("#signin-error").textContent = message;
}

async function run(loader) {
  try {
    await loader();
  } catch (err) {
    if (err instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn("That token was not accepted. Sign in again.");
    } else {
      status(`Could not load: ${err.message}`, true);
    }
  }
}

// ------------------------------------------------------------------------------------ tables

function makeSortable(table) {
  table.querySelectorAll("th[data-key]").forEach((th, index) => {
    th.addEventListener("click", () => {
      const asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      const numeric = th.dataset.type === "num";
      const rows = Array.from(table.tBodies[0].rows);
      const value = (row) => {
        const cell = row.cells[index];
        const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
        return numeric ? (raw === "" ? -Infinity : Number(raw)) : raw.toLowerCase();
      };
      rows.sort((a, b) => {
        const x = value(a), y = value(b);
        return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
      });
      rows.forEach((r) => table.tBodies[0].append(r));
    });
  });
}

function fillTable(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
  table.querySelectorAll("th").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
}

const pct = (p) => (p === null || p === undefined ? "" : `${(100 * p).toFixed(0)}%`);
const day = (iso) => (iso ? iso.slice(0, 10) : "");
const time = (iso) => (iso ? iso.replace("T", " ").slice(0, 16) : "");

async function download(path, filename) {
  const blob = await (await api(path)).blob();
  const link = el("a", { href: URL.createObjectURL(blob), download: filename });
  document.body.append(link);
  link.click();
  link.remove();
}

// ------------------------------------------------------------------------------------ worklist

function worklistQuery() {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData($("#filters")).entries()) if (v) params.append(k, v);
  return params.toString();
}

async function setOutreach(encounter, value, select) {
  select.disabled = true;
  try {
    await api(`/views/api/worklist/${encodeURIComponent(encounter)}/outreach`, {
      method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ status: value }),
    });
    select.dataset.saved = value;
    select.closest("td").dataset.sort = value;
    status(`Outreach for ${encounter} saved: ${value}.`);
  } catch (err) {
    select.value = select.dataset.saved;
    if (err instanceof Unauthorized) throw err;
    status(`Outreach not saved: ${err.message}`, true);
  } finally {
    select.disabled = false;
  }
}

async function loadWorklist() {
  const data = await (await api(`/views/api/worklist?${worklistQuery()}`)).json();
  const unitSelect = $("#f-unit");
  if (unitSelect.options.length === 1) {
    for (const unit of data.units) unitSelect.append(el("option", { value: unit }, unit));
  }
  $("#factors-note").textContent = data.factors_note;
  const rows = data.rows.map((r) => {
    const select = el("select", { "aria-label": `Outreach for ${r.encounter}`, dataset: { saved: r.outreach.status },
      class: "outreach" }, ...data.outreach_statuses.map((s) => el("option", { value: s }, s)));
    select.value = r.outreach.status;
    select.addEventListener("change", () => run(() => setOutreach(r.encounter, select.value, select)));
    const by = r.outreach.actor ? el("div", { class: "note" }, `${r.outreach.actor}, ${time(r.outreach.time)}`) : null;
    return el("tr", { dataset: { encounter: r.encounter, unit: r.unit, tier: r.tier } },
      el("td", { class: "num" }, r.rank),
      el("td", { class: "num", dataset: { sort: r.readmission === null ? "" : r.readmission } }, r.readmission === null ? "not scored" : pct(r.readmission)),
      el("td", {}, el("span", { class: `tier tier-${r.tier}` }, r.tier)),
      el("td", {}, r.patient), el("td", {}, r.encounter), el("td", {}, r.unit), el("td", {}, r.status),
      el("td", {}, day(r.discharged_at)),
      el("td", {}, el("ul", { class: "factors" }, ...r.factors.map((f) => el("li", {}, f.text)))),
      el("td", { dataset: { sort: r.outreach.status } }, select, by));
  });
  fillTable($("#worklist"), rows);
  status(`${data.returned} of ${data.total} patients as of ${time(data.as_of)} UTC, highest risk first.`);
}

function initWorklist() {
  makeSortable($("#worklist"));
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); run(loadWorklist); });
  $("#export-csv").addEventListener("click", () => run(() => download(`/views/api/worklist.csv?${worklistQuery()}`, "readmission-worklist.csv")));
  $("#export-fhir").addEventListener("click", () => run(() => download(`/views/api/worklist/fhir?${worklistQuery()}`, "readmission-worklist.json")));
  return loadWorklist;
}

// ------------------------------------------------------------------------------------ bed board

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function occupancyChart(unit) {
  // bars: expected occupied beds per day; whiskers: the band
  const w = 560, h = 150, pad = 28, n = unit.days.length;
  const top = Math.max(1, unit.census, ...unit.days.map((d) => d.occupied.high));
  const x = (i) => pad + (i + 0.5) * ((w - 2 * pad) / n), y = (v) => h - pad - (v / top) * (h - 2 * pad);
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: "img",
    "aria-label": `Expected occupied beds in ${unit.unit}` });
  chart.append(svg("line", { x1: pad, x2: w - pad, y1: y(0), y2: y(0), stroke: "#d0d7de" }));
  unit.days.forEach((d, i) => {
    const bw = (w - 2 * pad) / n * 0.6;
    chart.append(svg("rect", { x: x(i) - bw / 2, y: y(d.occupied.expected), width: bw,
      height: Math.max(0, y(0) - y(d.occupied.expected)), fill: "#9cc3e6" }));
    chart.append(svg("line", { x1: x(i), x2: x(i), y1: y(d.occupied.low), y2: y(d.occupied.high), stroke: "#0b2e4f", "stroke-width": 2 }));
    chart.append(svg("text", { x: x(i), y: h - 8, "text-anchor": "middle" }, d.date.slice(5)));
    chart.append(svg("text", { x: x(i), y: y(d.occupied.expected) - 4, "text-anchor": "middle" }, d.occupied.expected.toFixed(1)));
  });
  return chart;
}

function showPatients(unit, d, kind) {
  const key = kind === "discharges" ? "p_discharge" : "p_occupied";
  $("#patients").hidden = false;
  $("#patients-title").textContent = `${unit.unit}, ${d.date}: ${kind === "discharges" ? "probability of discharge that day" : "probability of still being in a bed at the end of that day"}`;
  const rows = d.patients.slice().sort((a, b) => b[key] - a[key]).map((p) => el("tr", {},
    el("td", {}, p.patient), el("td", {}, p.encounter), el("td", { class: "num" }, p.days_in_hospital),
    el("td", { class: "num", dataset: { sort: p[key] } }, pct(p[key]))));
  fillTable($("#patients-table"), rows);
  $("#patients").scrollIntoView({ block: "nearest" });
}

function countCell(unit, d, kind) {
  const c = d[kind];
  const button = el("button", { type: "button", class: "count", title: "Show the patients behind this number",
    onclick: () => showPatients(unit, d, kind) }, c.expected.toFixed(1));
  return el("td", { class: "num", dataset: { unit: unit.unit, date: d.date, kind, expected: c.expected, low: c.low, high: c.high } },
    button, el("span", { class: "note" }, ` (${c.low}–${c.high})`));
}

async function loadBeds() {
  const days = $("#b-days").value || 7;
  const data = await (await api(`/views/api/beds?days=${encodeURIComponent(days)}`)).json();
  $("#b-coverage").textContent = `${Math.round(data.coverage * 100)}%`;
  const boards = data.units.map((unit) => {
    const table = el("table", { class: "board" },
      el("thead", {}, el("tr", {}, el("th", {}, "Day"), el("th", {}, "Expected discharges"), el("th", {}, "Expected occupied beds (end of day)"))),
      el("tbody", {}, ...unit.days.map((d) => el("tr", {}, el("td", {}, d.date), countCell(unit, d, "discharges"), countCell(unit, d, "occupied")))));
    const unscored = unit.unscored.length ? el("p", { class: "note" }, `${unit.unscored.length} admitted patient(s) without a length-of-stay score are not in these numbers: ${unit.unscored.map((u) => u.encounter).join(", ")}.`) : null;
    return el("section", { class: "unit-board", dataset: { unit: unit.unit } },
      el("h2", {}, `${unit.unit} — ${unit.census} admitted`), occupancyChart(unit), table, unscored);
  });
  $("#boards").replaceChildren(...boards);
  $("#patients").hidden = true;
  status(`As of ${time(data.as_of)} UTC (days in ${data.timezone}).`);
}

function initBeds() {
  makeSortable($("#patients-table"));
  $("#bed-controls").addEventListener("submit", (e) => { e.preventDefault(); run(loadBeds); });
  return loadBeds;
}

// ------------------------------------------------------------------------------------ MLOps

function definitionList(target, pairs) {
  target.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "—")]));
}

function performanceChart(rows) {
  const tasks = [...new Set(rows.map((r) => r.task))];
  const months = [...new Set(rows.map((r) => r.month))].sort();
  if (!months.length) return el("p", { class: "note" }, "No outcomes have arrived yet for scored notes.");
  const w = 640, h = 180, pad = 32, colors = ["#0b5cad", "#b54708", "#4f7a28", "#8250df"];
  const x = (m) => pad + (months.length === 1 ? 0.5 : months.indexOf(m) / (months.length - 1)) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - 0.4) / 0.6) * (h - 2 * pad);
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: "img", "aria-label": "AUROC by month" });
  for (const v of [0.5, 0.7, 0.9]) {
    chart.append(svg("line", { x1: pad, x2: w - pad, y1: y(v), y2: y(v), stroke: "#eaeef2" }));
    chart.append(svg("text", { x: 2, y: y(v) + 4 }, v.toFixed(1)));
  }
  months.forEach((m) => chart.append(svg("text", { x: x(m), y: h - 8, "text-anchor": "middle" }, m)));
  tasks.forEach((task, i) => {
    const points = rows.filter((r) => r.task === task && r.auroc !== null).map((r) => `${x(r.month)},${y(r.auroc)}`);
    if (points.length) chart.append(svg("polyline", { points: points.join(" "), fill: "none", stroke: colors[i % 4], "stroke-width": 2 }));
    chart.append(svg("text", { x: w - pad - 90, y: 14 + 14 * i, fill: colors[i % 4] }, `${task} AUROC`));
  });
  return chart;
}

async function openReport(id) {
  const blob = await (await api(`/views/api/drift/${encodeURIComponent(id)}/report`)).blob();
  window.open(URL.createObjectURL(new Blob([blob], { type: "text/html" })), "_blank", "noopener");
}

async function loadMlops() {
  const data = await (await api("/views/api/mlops")).json();
  definitionList($("#model"), [["Name", data.model.name], ["Version", data.model.version], ["Kind", data.model.kind],
    ["Tasks", data.model.tasks.join(", ")], ["Shadow scoring", data.model.shadow ? "on" : "off"]]);
  const aliases = Object.entries(data.registry.aliases);
  definitionList($("#aliases"), aliases.length ? aliases : [["Registry", data.registry.available ? "no aliases set" : "not configured"]]);
  fillTable($("#registry-events"), data.registry.events.map((e) => el("tr", { class: `action-${e.action}` },
    el("td", {}, time(e.time)), el("td", {}, e.action), el("td", {}, e.version), el("td", {}, e.alias),
    el("td", {}, e.previous), el("td", {}, e.actor), el("td", {}, e.reason))));
  $("#loop").replaceChildren(data.loop.length
    ? el("table", {}, el("thead", {}, el("tr", {}, ...Object.keys(data.loop[0]).map((k) => el("th", {}, k)))),
        el("tbody", {}, ...data.loop.map((e) => el("tr", {}, ...Object.values(e).map((v) => el("td", {}, v ?? ""))))))
    : el("p", { class: "note" }, "No retraining-loop runs yet (the registry events above include manual promotions)."));
  $("#drift").replaceChildren(data.drift.length
    ? el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Time"), el("th", {}, "Drift detected"), el("th", {}, "Summary"), el("th", {}, "Report"))),
        el("tbody", {}, ...data.drift.map((r) => el("tr", {}, el("td", {}, time(r.time)), el("td", {}, r.drifted ? "yes" : "no"),
          el("td", {}, r.summary ?? ""), el("td", {}, r.html_path ? el("button", { type: "button", onclick: () => run(() => openReport(r.id)) }, "Evidently report") : "")))))
    : el("p", { class: "note", id: "no-drift" }, "No drift checks yet."));
  $("#performance-chart").replaceChildren(performanceChart(data.performance));
  fillTable($("#performance"), data.performance.map((r) => el("tr", {}, el("td", {}, r.task), el("td", {}, r.month),
    el("td", { class: "num" }, r.n), el("td", { class: "num" }, pct(r.prevalence)),
    el("td", { class: "num", dataset: { sort: r.auroc ?? "" } }, r.auroc === null ? "n/a (one class)" : r.auroc.toFixed(3)))));
  status(`Loaded ${time(data.now)} UTC.`);
}

function initMlops() {
  makeSortable($("#registry-events"));
  makeSortable($("#performance"));
  return loadMlops;
}

// ------------------------------------------------------------------------------------ start

const loaders = { worklist: initWorklist, beds: initBeds, mlops: initMlops };
const load = loaders[page]();
document.querySelectorAll(`[data-nav="${page}"]`).forEach((a) => a.classList.add("active"));

function start() {
  $("#signin").hidden = true;
  $("#content").hidden = false;
  $("#signout").hidden = false;
  run(load);
}

$("#signin").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#token").value = "";
  start();
});
$("#signout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); showSignIn(); });

if (sessionStorage.getItem(TOKEN_KEY)) start(); else showSignIn();
