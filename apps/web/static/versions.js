// The Versions page: the kept model versions, "update the model from N verdicts" (a page job) and "make active".
// Uses ui.js's helpers (loaded first); every value from the server is put into the page as text.
"use strict";

// "before -> after" of one validation figure (an update), or the figure alone.
function figure(version, key) {
  const after = version.validation[key], before = version.validation_before[key];
  if (typeof before === "number") return `${fixed(before, 3)} \u2192 ${fixed(after, 3)}`;
  return typeof after === "number" ? fixed(after, 3) : "";
}

function added(version) {
  if (version.made_by !== "update") return "";
  return `${version.data_added.ok ?? 0} OK, ${version.data_added.ng ?? 0} NG` + (version.based_on ? ` (from v${version.based_on})` : "");
}

async function initVersions() {
  const body = document.querySelector("#versions tbody"), status = document.getElementById("versions-status");
  const update = document.getElementById("versions-update"), reason = document.getElementById("versions-reason");
  const state = document.getElementById("versions-job-state"), log = document.getElementById("versions-log");
  let next = 0, job = null, timer = null;

  const row = (version, busy) => {
    const tr = el("tr", { "data-version": String(version.number), "data-active": String(version.active) });
    tr.appendChild(el("td", {}, `v${version.number}` + (version.active ? " (active)" : "")));
    tr.appendChild(el("td", {}, version.time));
    tr.appendChild(el("td", {}, version.made_by));
    tr.appendChild(el("td", {}, added(version)));
    tr.appendChild(el("td", {}, figure(version, "auroc")));
    tr.appendChild(el("td", {}, figure(version, "f1")));
    tr.appendChild(el("td", { class: "small" }, version.train_id ?? ""));
    const cell = el("td");
    if (version.active) cell.appendChild(el("b", {}, "active"));
    else {
      const button = el("button", { type: "button", class: "make-active" }, "Make active");
      button.disabled = busy;
      button.addEventListener("click", () => activate(version.number));
      cell.appendChild(button);
    }
    tr.appendChild(cell);
    return tr;
  };

  const show = (data) => {
    const busy = data.job !== null && data.job.state === "running";
    while (body.firstChild) body.removeChild(body.firstChild);
    for (const version of data.versions) body.appendChild(row(version, busy));
    let line = data.active === null ? "the active model is not kept as a version yet (the next update or rollback keeps it)" : `version ${data.active} is active`;
    if (!data.serves_active) line += " · this server scores with another model folder (its plan's load_model_path)";
    status.textContent = `${line} · ${data.waiting} verdict(s) waiting for an update`;
    status.dataset.active = data.active === null ? "" : String(data.active);
    status.dataset.waiting = String(data.waiting);
    update.textContent = `Update the model from ${data.waiting} verdict(s)`;
    update.disabled = data.update_blocked !== null;
    reason.textContent = data.update_blocked ?? "";
    if (data.job === null) return busy;
    if (data.job.job !== job) { job = data.job.job; log.textContent = ""; }
    for (const text of data.job.lines) log.textContent += text + "\n";
    log.scrollTop = log.scrollHeight;
    next = data.job.next;
    state.textContent = data.job.state;
    document.getElementById("versions-job-kind").textContent = `(${data.job.kind} job ${data.job.job}, plan ${data.job.plan})`;
    return busy;
  };

  const poll = async () => {
    clearTimeout(timer);
    try {
      const running = show(await call(`/ui/api/versions?since=${next}`));
      if (running) timer = setTimeout(poll, 500);
    } catch (error) { say(error.message); }
  };

  const activate = async (number) => {
    if (!window.confirm(`Make version ${number} the active model? Scoring switches to it at once; the current model stays kept as a version.`)) return;
    try {
      const done = await postJson(`/ui/api/versions/${number}/activate`, {});
      say(`version ${done.active} is active`, true);
    } catch (error) { say(error.message); }
    await poll();
  };

  update.addEventListener("click", async () => {
    update.disabled = true;
    try {
      const started = await postJson("/ui/api/versions/update", {});
      job = started.job; next = 0; log.textContent = "";
      say("");
    } catch (error) { say(error.message); }
    await poll();
  });
  await poll();
}

PAGES.versions = initVersions;
