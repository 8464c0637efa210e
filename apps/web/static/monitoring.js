// The Monitoring page: the drift statistic of each measure over time (inline SVG), its limit, and a banner while
// a measure is past it. Uses ui.js's helpers (loaded first); every value from the server is put in as text.
"use strict";

const DRIFT_POLL_MS = 5000;
const DRIFT_MEASURES = ["anomaly_score", "ood_score"];

function driftChart(box, data) {
  while (box.firstChild) box.removeChild(box.firstChild);
  const width = 720, height = 240, left = 36, bottom = 24, right = 10, top = 10;
  const points = data.history || [];
  const times = points.map((p) => Date.parse(p.time));
  const first = Math.min(...times), last = Math.max(...times), span = last - first || 1;
  const x = (t) => (points.length < 2 ? left : left + ((t - first) / span) * (width - left - right));
  const y = (v) => height - bottom - v * (height - bottom - top);
  box.appendChild(svg("line", { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: "axis" }));
  box.appendChild(svg("line", { x1: left, x2: left, y1: top, y2: height - bottom, class: "axis" }));
  for (const value of [0, 0.5, 1]) {
    const tick = svg("text", { x: left - 4, y: y(value) + 4, "text-anchor": "end" });
    tick.textContent = String(value);
    box.appendChild(tick);
  }
  if (typeof data.limit === "number") {
    box.appendChild(svg("line", { x1: left, x2: width - right, y1: y(data.limit), y2: y(data.limit), class: "threshold drift-limit" }));
    const label = svg("text", { x: width - right, y: y(data.limit) - 4, "text-anchor": "end" });
    label.textContent = `limit ${data.limit}`;
    box.appendChild(label);
  }
  DRIFT_MEASURES.forEach((name, i) => {
    const drawn = points.map((p, j) => [times[j], p[name]]).filter(([, v]) => typeof v === "number");
    if (drawn.length === 1) box.appendChild(svg("circle", { cx: x(drawn[0][0]), cy: y(drawn[0][1]), r: 3, class: `drift-dot drift-${name}` }));
    if (drawn.length > 1) {
      const line = drawn.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      box.appendChild(svg("polyline", { points: line, class: `drift-line drift-${name}`, "data-measure": name }));
    }
    const legend = svg("text", { x: left + 10 + i * 130, y: top + 12, class: `drift-${name}-text` });
    legend.textContent = name;
    box.appendChild(legend);
  });
  if (points.length) {
    for (const [t, anchor] of [[first, "start"], [last, "end"]]) {
      const tick = svg("text", { x: x(t), y: height - 6, "text-anchor": anchor });
      tick.textContent = new Date(t).toISOString().slice(11, 19) + " UTC";
      box.appendChild(tick);
    }
  }
}

function driftRows(body, data) {
  while (body.firstChild) body.removeChild(body.firstChild);
  for (const [name, m] of Object.entries(data.measures || {})) {
    const tr = el("tr", { "data-measure": name, "data-crossed": String(m.crossed) });
    tr.appendChild(el("td", {}, name));
    tr.appendChild(el("td", {}, m.statistic === null ? "not judged yet" : fixed(m.statistic, 3)));
    tr.appendChild(el("td", {}, m.p_value === null ? "" : m.p_value.toExponential(1)));
    tr.appendChild(el("td", {}, `${m.images} (judged from ${data.min_window})`));
    tr.appendChild(el("td", {}, String(m.reference)));
    tr.appendChild(el("td", { class: m.crossed ? "ng" : "ok" }, m.crossed ? "drifted" : "in line"));
    body.appendChild(tr);
  }
}

async function initMonitoring() {
  const banner = document.getElementById("drift-banner"), bannerText = document.getElementById("drift-banner-text");
  const status = document.getElementById("drift-status"), chart = document.getElementById("drift-chart");
  const body = document.querySelector("#drift-measures tbody");
  const poll = async () => {
    try {
      const data = await call("/ui/api/drift");
      if (!data.available) {
        status.textContent = `Drift is not watched: ${data.reason}.`;
        banner.hidden = true;
      } else {
        const judged = (data.history || []).length;
        status.textContent = `Model ${data.train_id || "(unknown train run)"}: window of ${data.window} images, limit ${data.limit}; ${judged} judgement(s) drawn.`;
        const crossed = Object.entries(data.measures).filter(([, m]) => m.crossed);
        banner.hidden = crossed.length === 0;
        bannerText.textContent = crossed.map(([name, m]) => `${name} has drifted from the validation OK images (KS statistic ${fixed(m.statistic, 3)} over the last ${m.images} images, limit ${data.limit})`).join("; ");
      }
      driftChart(chart, data);
      driftRows(body, data);
      say("");
    } catch (error) { say(error.message); }
    setTimeout(poll, DRIFT_POLL_MS);
  };
  await poll();
}

PAGES.monitoring = initMonitoring;
