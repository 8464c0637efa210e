// The VAD page's script: plain DOM, no framework, no network but this server.
// Every value from the server or a file is put into the page as text (textContent, attributes), never as HTML.
"use strict";

const CSRF = document.querySelector('meta[name="csrf"]').content;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== "") node.textContent = text;
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function say(text, ok = false) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = ok ? "message ok" : "message";
  box.hidden = !text;
}

async function call(url, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (options.method === "POST") headers["X-VAD-CSRF"] = CSRF;
  const response = await fetch(url, Object.assign({}, options, { headers, credentials: "same-origin" }));
  let body = null;
  try { body = await response.json(); } catch (error) { body = null; }
  if (!response.ok) {
    const line = body && body.error ? body.error : `the server answered ${response.status}`;
    throw new Error(line);
  }
  return body;
}

function postJson(url, value) {
  return call(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(value) });
}

const fixed = (value, digits = 4) => (typeof value === "number" ? value.toFixed(digits) : String(value ?? ""));

// A summary value as text: numbers to 4 places, a map as "key: value, ..." (the summary's probability).
function shown(value) {
  if (typeof value === "number") return fixed(value);
  if (value && typeof value === "object") return Object.entries(value).map(([k, v]) => `${k}: ${shown(v)}`).join(", ");
  return String(value ?? "");
}

// ---------------------------------------------------------------- Inspect

function histogram(box, data) {
  while (box.firstChild) box.removeChild(box.firstChild);
  const width = 720, height = 200, left = 30, bottom = 24, bins = 40;
  const x = (v) => left + Math.min(Math.max(v, 0), 1) * (width - left - 10);
  const count = (values) => {
    const out = new Array(bins).fill(0);
    for (const v of values) out[Math.min(bins - 1, Math.max(0, Math.floor(v * bins)))] += 1;
    return out;
  };
  const ok = count(data.validation.ok), ng = count(data.validation.ng);
  const scored = data.results.map((r) => r.anomaly_score);
  const top = Math.max(1, ...ok, ...ng);
  const y = (n) => height - bottom - (n / top) * (height - bottom - 30);
  const step = (width - left - 10) / bins;
  for (let i = 0; i < bins; i += 1) {
    if (ok[i]) box.appendChild(svg("rect", { x: left + i * step, y: y(ok[i]), width: step / 2, height: height - bottom - y(ok[i]), class: "ok-bar" }));
    if (ng[i]) box.appendChild(svg("rect", { x: left + i * step + step / 2, y: y(ng[i]), width: step / 2, height: height - bottom - y(ng[i]), class: "ng-bar" }));
  }
  data.results.forEach((r, i) => {
    const mark = svg("circle", { cx: x(r.anomaly_score), cy: 14 + (i % 3) * 6, r: 4, class: r.is_anomalous ? "ng-mark" : "ok-mark" });
    const title = svg("title");
    title.textContent = `${r.name}: ${fixed(r.anomaly_score)}`;
    mark.appendChild(title);
    box.appendChild(mark);
  });
  box.appendChild(svg("line", { x1: x(data.threshold), x2: x(data.threshold), y1: 8, y2: height - bottom, class: "threshold" }));
  box.appendChild(svg("line", { x1: left, x2: width - 10, y1: height - bottom, y2: height - bottom, class: "axis" }));
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    const label = svg("text", { x: x(tick), y: height - 6, "text-anchor": "middle" });
    label.textContent = String(tick);
    box.appendChild(label);
  }
  box.dataset.points = String(scored.length);
}

function showInspected(data) {
  const results = document.getElementById("results");
  while (results.firstChild) results.removeChild(results.firstChild);
  const template = document.getElementById("result-template");
  for (const r of data.results) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.querySelector(".name").textContent = r.name;
    const verdict = card.querySelector(".verdict");
    verdict.textContent = r.rejected ? `${r.label}: verdict withheld` : r.label;
    verdict.className = r.rejected ? "verdict rejected" : r.is_anomalous ? "verdict ng" : "verdict ok";
    card.dataset.verdict = r.rejected ? "rejected" : r.is_anomalous ? "NG" : "OK";
    card.dataset.inDistribution = r.in_distribution === null ? "unknown" : String(r.in_distribution);
    if (r.in_distribution === false) {
      const warning = card.querySelector(".ood-warning");
      const distance = r.ood_score === null ? "not measurable" : fixed(r.ood_score, 2);
      const outcome = r.rejected
        ? "its verdict was withheld: have a person check this part."
        : "its verdict cannot be trusted.";
      warning.querySelector(".ood-text").textContent =
        `not the kind of image this model was trained on (ood_score ${distance}, 1 or more is outside); ${outcome}`;
      warning.hidden = false;
    }
    card.querySelector(".score").textContent = fixed(r.anomaly_score);
    card.querySelector(".raw").textContent = fixed(r.raw_score);
    card.querySelector(".certainty").textContent = fixed(r.certainty, 3);
    card.querySelector(".size").textContent = `${r.width} x ${r.height} px`;
    const original = card.querySelector(".original"), heatmap = card.querySelector(".heatmap");
    original.src = r.original;
    if (r.heatmap) heatmap.src = r.heatmap; else heatmap.alt = "no heatmap";
    const zoom = card.querySelector(".zoom"), shown = card.querySelector(".zoom-value");
    const apply = () => {
      const scale = Number(zoom.value) / 100;
      for (const img of [original, heatmap]) img.style.width = `${Math.round(r.width * scale)}px`;
      shown.textContent = `${zoom.value}%`;
    };
    zoom.addEventListener("input", apply);
    apply();
    const views = card.querySelectorAll(".view");
    views.forEach((view, i) => view.addEventListener("scroll", () => {
      const other = views[1 - i];
      other.scrollLeft = view.scrollLeft;
      other.scrollTop = view.scrollTop;
    }));
    results.appendChild(card);
  }
  const summary = document.getElementById("summary");
  while (summary.firstChild) summary.removeChild(summary.firstChild);
  for (const [key, value] of Object.entries(data.summary)) {
    summary.appendChild(el("dt", {}, key));
    summary.appendChild(el("dd", {}, shown(value)));
  }
  const version = document.getElementById("model-version");
  version.textContent = data.model_version === null ? "scored by a model not kept as a version yet" : `scored by model version ${data.model_version}`;
  version.dataset.version = data.model_version === null ? "" : String(data.model_version);
  document.getElementById("batch").hidden = false;
  histogram(document.getElementById("histogram"), data);
  const outside = data.results.filter((r) => r.in_distribution === false).length;
  if (outside) say(`${outside} of ${data.results.length} image(s) out of distribution: not the kind of image this model was trained on (see the warnings below)`);
}

async function inspectFiles(files) {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  say(`scoring ${files.length} image(s)...`, true);
  try {
    const data = await call("/ui/api/inspect", { method: "POST", body: form });
    say("");
    showInspected(data);
  } catch (error) {
    say(error.message);
  }
}

async function initInspect() {
  const drop = document.getElementById("drop"), input = document.getElementById("files");
  const limit = Number(document.body.dataset.maxImages || 64);
  const take = (list) => {
    const files = Array.from(list);
    if (!files.length) return;
    if (files.length > limit) { say(`${files.length} files: send at most ${limit} at a time`); return; }
    inspectFiles(files);
  };
  input.addEventListener("change", () => take(input.files));
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); take(e.dataTransfer.files); });
  const select = document.getElementById("folder");
  try {
    const listing = await call("/ui/api/folders");
    for (const entry of listing.image_folders) select.appendChild(el("option", { value: entry.folder }, `${entry.folder} (${entry.images})`));
  } catch (error) { say(error.message); }
  document.getElementById("score-folder").addEventListener("click", async () => {
    if (!select.value && select.selectedIndex === 0) { say("choose a folder first"); return; }
    say("scoring the folder...", true);
    try { const data = await postJson("/ui/api/inspect", { folder: select.value }); say(""); showInspected(data); }
    catch (error) { say(error.message); }
  });
}

// ---------------------------------------------------------------- Runs

async function initRuns() {
  const body = document.querySelector("#runs tbody");
  try {
    const data = await call("/ui/api/runs");
    for (const run of data.runs) {
      const row = el("tr", { "data-status": run.status });
      row.appendChild(el("td", {}, run.pipeline + (run.current ? " (current)" : "")));
      const cell = el("td");
      cell.appendChild(el("a", { href: `/ui/runs/${encodeURIComponent(run.pipeline)}/${encodeURIComponent(run.id)}` }, run.id));
      row.appendChild(cell);
      for (const value of [run.start_time.replace("T", " ").slice(0, 19), run.model, run.backbone, run.data]) row.appendChild(el("td", {}, value));
      row.appendChild(el("td", { class: run.status === "success" ? "ok" : "ng" }, run.status));
      const metrics = Object.entries(run.metrics).map(([k, v]) => `${k} ${typeof v === "number" ? fixed(v, 3) : v}`).join(", ");
      row.appendChild(el("td", {}, run.error || metrics));
      body.appendChild(row);
    }
    if (!data.runs.length) say("no runs yet: train a model", true);
  } catch (error) { say(error.message); }
}

function sortRows(rows, column, numeric, descending) {
  rows.sort((a, b) => {
    const p = a[column] ?? "", q = b[column] ?? "";
    const order = numeric ? Number(p) - Number(q) : String(p).localeCompare(String(q));
    return descending ? -order : order;
  });
}

async function initRun() {
  const { pipeline, run } = document.body.dataset;
  const base = `/ui/api/runs/${encodeURIComponent(pipeline)}/${encodeURIComponent(run)}`;
  let data;
  try { data = await call(base); } catch (error) { say(error.message); return; }
  document.getElementById("log").textContent = data.log || "(no log)";
  const rows = data.rows;
  const columns = rows.length ? Object.keys(rows[0]).filter((c) => c !== "heatmap") : [];
  const head = document.querySelector("#rows thead tr"), body = document.querySelector("#rows tbody");
  const numeric = new Set(columns.filter((c) => rows.every((r) => r[c] === "" || !Number.isNaN(Number(r[c])))));
  let sorted = { column: null, descending: false };
  const filter = document.getElementById("filter");
  const draw = () => {
    while (body.firstChild) body.removeChild(body.firstChild);
    const needle = filter.value.toLowerCase();
    const shown = rows.filter((r) => !needle || columns.some((c) => String(r[c]).toLowerCase().includes(needle)));
    for (const r of shown) {
      const line = el("tr");
      for (const c of columns) line.appendChild(el("td", {}, r[c]));
      body.appendChild(line);
    }
    document.getElementById("count").textContent = `${shown.length} of ${rows.length} rows`;
  };
  for (const c of columns) {
    const th = el("th", { "data-column": c, tabindex: "0", role: "button" }, c);
    const sort = () => {
      sorted = { column: c, descending: sorted.column === c ? !sorted.descending : numeric.has(c) };
      sortRows(rows, c, numeric.has(c), sorted.descending);
      head.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
      th.setAttribute("aria-sort", sorted.descending ? "descending" : "ascending");
      draw();
    };
    th.addEventListener("click", sort);
    th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
    head.appendChild(th);
  }
  filter.addEventListener("input", draw);
  draw();
  const gallery = document.getElementById("gallery");
  const wrong = (r) => r.label && r.pred_label && r.label !== "unknown" && r.label !== r.pred_label;
  const pictures = rows.filter((r) => r.heatmap).sort((a, b) => (wrong(b) - wrong(a)) || (Number(b.anomaly_score) - Number(a.anomaly_score)));
  for (const r of pictures) {
    const figure = el("figure", { class: wrong(r) ? "miss" : "", "data-image": r.image_path });
    const link = el("a", { href: `${base}/file/${r.heatmap.split("/").map(encodeURIComponent).join("/")}`, target: "_blank", rel: "noopener" });
    link.appendChild(el("img", { src: `${base}/file/${r.heatmap.split("/").map(encodeURIComponent).join("/")}`, alt: r.image_path, loading: "lazy" }));
    figure.appendChild(link);
    figure.appendChild(el("figcaption", {}, `${r.image_path} · ${r.label || "?"} → ${r.pred_label} · ${fixed(Number(r.anomaly_score))}${wrong(r) ? " · misclassified" : ""}`));
    gallery.appendChild(figure);
  }
  if (!pictures.length) gallery.appendChild(el("p", { class: "small" }, "no heatmap pictures in this run (save_anomaly_maps / save_validation_heatmap)"));
}

// ---------------------------------------------------------------- Threshold explorer

function sweepPlot(box, rows, index) {
  while (box.firstChild) box.removeChild(box.firstChild);
  const width = 720, height = 240, left = 36, bottom = 24;
  const lows = rows.map((r) => r.threshold);
  const min = Math.min(...lows), max = Math.max(...lows), span = max - min || 1;
  const x = (t) => left + ((t - min) / span) * (width - left - 10);
  const y = (v) => height - bottom - v * (height - bottom - 10);
  for (const [key, name] of [["precision", "precision-line"], ["recall", "recall-line"], ["f1", "f1-line"]]) {
    const points = rows.map((r) => `${x(r.threshold).toFixed(1)},${y(r[key]).toFixed(1)}`).join(" ");
    box.appendChild(svg("polyline", { points, class: name }));
  }
  box.appendChild(svg("line", { x1: left, x2: width - 10, y1: height - bottom, y2: height - bottom, class: "axis" }));
  const at = rows[index];
  box.appendChild(svg("line", { x1: x(at.threshold), x2: x(at.threshold), y1: 6, y2: height - bottom, class: "threshold" }));
  for (const [value, anchor] of [[min, "start"], [(min + max) / 2, "middle"], [max, "end"]]) {
    const tick = svg("text", { x: x(value), y: height - 6, "text-anchor": anchor });
    tick.textContent = value.toPrecision(4);
    box.appendChild(tick);
  }
  for (const value of [0, 0.5, 1]) {
    const tick = svg("text", { x: left - 4, y: y(value) + 4, "text-anchor": "end" });
    tick.textContent = String(value);
    box.appendChild(tick);
  }
  const legend = [["precision", "precision-line"], ["recall", "recall-line"], ["F1", "f1-line"]];
  legend.forEach(([text, name], i) => {
    const label = svg("text", { x: width - 250 + i * 80, y: height - bottom - 10, class: name + "-text" });
    label.textContent = text;
    box.appendChild(label);
  });
}

async function initThreshold() {
  const run = document.body.dataset.run;
  let data;
  try { data = await call(`/ui/api/threshold/${encodeURIComponent(run)}`); } catch (error) { say(error.message); return; }
  const slider = document.getElementById("slider");
  slider.max = String(data.rows.length - 1);
  slider.value = String(data.trained);
  const trained = data.rows[data.trained];
  const use = document.getElementById("use"), note = document.getElementById("use-note");
  const show = () => {
    const i = Number(slider.value), r = data.rows[i];
    document.getElementById("t-raw").textContent = fixed(r.threshold, 5);
    document.getElementById("t-norm").textContent = r.inference_threshold === null ? "outside [0, 1]" : fixed(r.inference_threshold, 5);
    for (const key of ["precision", "recall", "f1"]) document.getElementById(key).textContent = fixed(r[key]);
    for (const key of ["tp", "fp", "tn", "fn"]) document.getElementById(key).textContent = String(r[key]);
    sweepPlot(document.getElementById("sweep"), data.rows, i);
    const changed = document.getElementById("changed");
    while (changed.firstChild) changed.removeChild(changed.firstChild);
    for (const image of data.images) {
      const before = image.raw_score >= trained.threshold, after = image.raw_score >= r.threshold;
      if (before === after) continue;
      const item = el("li", {}, `${image.image} (${image.label || "?"}, raw ${fixed(image.raw_score, 5)}): ${before ? data.ng_name : data.ok_name} → ${after ? data.ng_name : data.ok_name}`);
      changed.appendChild(item);
    }
    if (!changed.firstChild) changed.appendChild(el("li", { class: "small" }, "none: the same split as the trained threshold"));
    use.disabled = !data.served || r.inference_threshold === null;
    note.textContent = !data.served ? "this run's model is not the one the plan serves" : `writes a copy of ${data.plan}; the plan itself is not edited`;
  };
  slider.addEventListener("input", show);
  show();
  use.addEventListener("click", async () => {
    try {
      const done = await postJson(`/ui/api/threshold/${encodeURIComponent(run)}`, { row: Number(slider.value) });
      const diff = document.getElementById("diff");
      diff.textContent = done.diff;
      diff.hidden = false;
      say(`wrote ${done.plan} (inference_threshold ${done.inference_threshold})`, true);
      document.body.dataset.written = done.plan;
    } catch (error) { say(error.message); }
  });
}

// ---------------------------------------------------------------- Train

async function initTrain() {
  const folder = document.getElementById("train-folder"), state = document.getElementById("train-state");
  const log = document.getElementById("train-log"), cancel = document.getElementById("train-cancel");
  const start = document.getElementById("train-start");
  let next = 0, job = null, timer = null;
  try {
    const listing = await call("/ui/api/folders");
    for (const name of listing.train_folders) folder.appendChild(el("option", { value: name }, name));
    if (!listing.train_folders.length) say("no folder with a ground-truth CSV in the data root");
  } catch (error) { say(error.message); }
  const poll = async () => {
    try {
      const data = await call(`/ui/api/train?since=${next}`);
      if (data.state === "idle") { state.textContent = "idle"; return; }
      if (data.job !== job) { job = data.job; next = 0; log.textContent = ""; if (data.lines === undefined) return; }
      for (const line of data.lines) log.textContent += line + "\n";
      log.scrollTop = log.scrollHeight;
      next = data.next;
      state.textContent = data.state;
      document.getElementById("train-plan").textContent = data.kind === "update" ? `(model update on ${data.plan}: see Versions)` : `(plan copy ${data.plan})`;
      const running = data.state === "running";
      cancel.disabled = !running;
      start.disabled = running;
      if (running) timer = setTimeout(poll, 500);
    } catch (error) { say(error.message); }
  };
  document.getElementById("train-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const data = await postJson("/ui/api/train", {
        folder: folder.value, model: document.getElementById("train-model").value,
        max_epochs: Number(document.getElementById("train-epochs").value), batch_size: Number(document.getElementById("train-batch").value),
      });
      job = data.job; next = 0; log.textContent = "";
      say("");
      clearTimeout(timer);
      poll();
    } catch (error) { say(error.message); }
  });
  cancel.addEventListener("click", async () => {
    try { await postJson("/ui/api/train/cancel", {}); say("cancelling: the previous model stays", true); } catch (error) { say(error.message); }
  });
  poll();
}

const PAGES = { inspect: initInspect, runs: initRuns, run: initRun, threshold: initThreshold, train: initTrain };
document.addEventListener("DOMContentLoaded", () => {
  const init = PAGES[document.body.dataset.page];
  if (init) init().catch((error) => say(error.message));
});
