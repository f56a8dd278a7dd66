// The status page: renders each snapshot of /status/events (server-sent events).
// Every value goes in as text (textContent, attributes through the DOM), never as markup:
// reasons are remote servers' replies.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#175cd3", "#b42318", "#067647", "#b54708", "#6941c6", "#0e9384",
                 "#c11574", "#475467", "#4e5ba6", "#93370d", "#3b7c0f", "#026aa2"];

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function utc(ms) {
  if (typeof ms !== "number") return "";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

function num(value) {
  return typeof value === "number" ? value.toLocaleString("en-US") : "";
}

function fill(tbody, rows, cells, empty) {
  if (!rows.length) {
    const td = el("td", empty, "empty");
    td.colSpan = tbody.parentElement.tHead.rows[0].cells.length;
    tbody.replaceChildren(el("tr"));
    tbody.firstChild.append(td);
    return;
  }
  tbody.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    tr.dataset.key = row.key ?? row.delivery_id;
    for (const [text, cls] of cells(row)) tr.append(el("td", text, cls));
    return tr;
  }));
}

function renderThrottle(groups) {
  fill(document.querySelector("#throttle tbody"), groups, (g) => [
    [g.key, "key"],
    [g.mode, `mode mode-${String(g.mode).replace(/[^a-z]/g, "")}`],
    [num(g.rate), "num rate"],
    [typeof g.pct === "number" ? `${g.pct}%` : "", "num"],
    [num(g.connections), "num"],
    [g.mode === "suspended" && g.suspended_until ? `${g.reason} (until ${utc(g.suspended_until)})` : g.reason, "reason"],
    [utc(g.event_time), "time"],
  ], "No provider group.");
}

function renderDeliveries(deliveries) {
  document.getElementById("delivery-total").textContent = num(deliveries.total);
  fill(document.querySelector("#deliveries tbody"), deliveries.rows, (d) => [
    [d.delivery_id, "key"],
    [num(d.to_deliver), "num"],
    [num(d.sent), "num"],
    [num(d.failed), "num"],
    [num(d.pending), "num"],
    [typeof d.success_pct === "number" ? `${d.success_pct.toFixed(1)}%` : "", "num success"],
  ], "No delivery has KPIs yet.");
}

// Step lines of each key's rate as a % of its group's baseline, over the window.
function renderChart(history) {
  const chart = document.getElementById("chart");
  const legend = document.getElementById("legend");
  document.getElementById("history-range").textContent = history.start === null
    ? "" : `(last ${history.hours} h of event time: ${utc(history.start)} – ${utc(history.end)} UTC)`;
  if (!history.series.length) {
    chart.replaceChildren(el("p", "No throttle change recorded yet.", "empty"));
    legend.replaceChildren();
    return;
  }
  const W = 900, H = 260, L = 48, R = 12, T = 12, B = 28;
  // A margin after the newest change, so that its step shows before the right edge.
  const span = Math.max(1, history.end - history.start) * 1.04;
  let top = 100;
  for (const s of history.series) for (const p of s.points) if (typeof p.pct === "number") top = Math.max(top, p.pct);
  top = Math.ceil(top / 25) * 25;
  const x = (t) => L + ((t - history.start) / span) * (W - L - R);
  const y = (pct) => T + (1 - pct / top) * (H - T - B);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "throttle rate as % of baseline over time" });
  for (let pct = 0; pct <= top; pct += 25) {
    root.append(svg("line", { x1: L, x2: W - R, y1: y(pct), y2: y(pct), class: pct === 0 ? "axis" : "grid" }));
    root.append(svg("text", { x: L - 6, y: y(pct) + 4, "text-anchor": "end" }, `${pct}%`));
  }
  for (let i = 0; i <= 3; i++) {
    const t = history.start + ((history.end - history.start) * i) / 3;
    root.append(svg("text", { x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === 3 ? "end" : "middle" }, utc(t).slice(11, 16)));
  }
  const items = [];
  history.series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const pts = s.points.filter((p) => typeof p.pct === "number");
    if (!pts.length) return;
    let d = `M ${x(pts[0].t)} ${y(pts[0].pct)}`;
    for (const p of pts.slice(1)) d += ` H ${x(p.t)} V ${y(p.pct)}`;
    d += ` H ${x(history.start + span)}`;
    const g = svg("g", { "data-key": s.key });
    g.append(svg("path", { d, class: "series", stroke: colour }));
    for (const p of pts) {
      const dot = svg("circle", { cx: x(p.t), cy: y(p.pct), r: 3.5, fill: colour });
      dot.append(svg("title", {}, `${s.key}: ${p.mode}, ${num(p.rate)}/h (${p.pct}%) at ${utc(p.t)} UTC`));
      g.append(dot);
    }
    root.append(g);
    const item = el("li");
    const swatch = el("span", null, "swatch");
    swatch.style.background = colour;
    item.append(swatch, document.createTextNode(`${s.key} (baseline ${num(s.baseline)}/h)`));
    items.push(item);
  });
  chart.replaceChildren(root);
  legend.replaceChildren(...items);
}

function render(snapshot) {
  const error = document.getElementById("error");
  error.hidden = !snapshot.error;
  error.textContent = snapshot.error ? `${snapshot.error} (showing the last data received)` : "";
  const dlq = snapshot.dead_letters || {};
  document.getElementById("dead-letters").textContent = dlq.count === null ? "unknown" : num(dlq.count);
  document.getElementById("dlq-topic").textContent = dlq.topic ? `in ${dlq.topic}` : "";
  document.getElementById("updated").textContent = `updated ${utc(snapshot.generated_at)} UTC`;
  if (snapshot.error) return;
  document.getElementById("quarantined").textContent = num(snapshot.addresses.quarantined);
  document.getElementById("denylisted").textContent = num(snapshot.addresses.denylisted);
  renderThrottle(snapshot.groups);
  renderChart(snapshot.history);
  renderDeliveries(snapshot.deliveries);
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/status/events");
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
  source.onmessage = (event) => render(JSON.parse(event.data));
}

document.addEventListener("DOMContentLoaded", connect);
