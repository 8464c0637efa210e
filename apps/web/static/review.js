// The Review page: mark the review queue's images OK or NG (buttons or keys), then submit the batch.
// Uses ui.js's helpers (loaded first); every value from the server is put into the page as text.
"use strict";

async function initReview() {
  const grid = document.getElementById("review-grid"), status = document.getElementById("review-status");
  const submit = document.getElementById("review-submit"), skipBatch = document.getElementById("review-next");
  const template = document.getElementById("review-template");
  let cards = [], current = 0, batch = null, skipped = new Set();

  const marked = () => cards.filter((card) => card.dataset.verdict === "OK" || card.dataset.verdict === "NG");
  const showStatus = () => {
    status.textContent = `${batch.queued} image(s) to review · ${batch.waiting} verdict(s) waiting for the next update (main.py --mode update)`;
    status.dataset.queued = String(batch.queued);
    status.dataset.waiting = String(batch.waiting);
    submit.textContent = `Submit verdicts (${marked().length})`;
    submit.disabled = marked().length === 0;
  };
  const focus = (index) => {
    if (!cards.length) return;
    current = Math.max(0, Math.min(cards.length - 1, index));
    cards.forEach((card, i) => card.classList.toggle("current", i === current));
    cards[current].focus({ preventScroll: false });
  };
  const mark = (index, verdict) => {
    const card = cards[index];
    if (!card) return;
    card.dataset.verdict = verdict;
    card.querySelector(".chosen").textContent = verdict === "skip" ? "skipped" : verdict;
    card.className = `review-card marked-${verdict.toLowerCase()}` + (index === current ? " current" : "");
    showStatus();
  };

  const load = async () => {
    batch = await call(`/ui/api/review?limit=${12 + skipped.size}`);
    while (grid.firstChild) grid.removeChild(grid.firstChild);
    cards = [];
    for (const item of batch.items.filter((i) => !skipped.has(i.id)).slice(0, 12)) {
      const card = template.content.firstElementChild.cloneNode(true);
      card.dataset.id = item.id;
      card.dataset.verdict = "";
      card.dataset.tier = String(item.tier);
      card.querySelector(".review-image").src = `/ui/api/review/image/${encodeURIComponent(item.id)}`;
      card.querySelector(".review-image").alt = item.source;
      card.querySelector(".name").textContent = item.source;
      const verdict = card.querySelector(".verdict");
      const rejected = item.pred_label === "rejected";
      verdict.textContent = rejected ? "rejected: verdict withheld" : `predicted ${item.pred_label}`;
      verdict.className = rejected ? "verdict rejected" : item.anomaly_score >= batch.threshold ? "verdict ng" : "verdict ok";
      card.querySelector(".score").textContent = fixed(item.anomaly_score);
      card.querySelector(".certainty").textContent = item.certainty === null ? "?" : fixed(item.certainty, 3);
      card.querySelector(".reason").textContent = `in the queue: ${item.reason}` + (item.label ? ` · labelled ${item.label}` : "");
      if (item.in_distribution === false) {
        const distance = item.ood_score === null ? "not measurable" : fixed(item.ood_score, 2);
        card.querySelector(".ood-text").textContent = `not the kind of image this model was trained on (ood_score ${distance})`;
        card.querySelector(".ood-warning").hidden = false;
      }
      const index = cards.length;
      card.querySelector(".mark-ok").addEventListener("click", () => { focus(index); mark(index, "OK"); });
      card.querySelector(".mark-ng").addEventListener("click", () => { focus(index); mark(index, "NG"); });
      card.querySelector(".mark-skip").addEventListener("click", () => { focus(index); mark(index, "skip"); });
      card.addEventListener("click", () => focus(index));
      grid.appendChild(card);
      cards.push(card);
    }
    if (!cards.length) grid.appendChild(el("p", { class: "small" }, "nothing to review: images scored by inference runs, the edge loop and the HTTP API appear here"));
    showStatus();
    focus(0);
  };

  const send = async () => {
    const verdicts = marked().map((card) => ({ id: card.dataset.id, verdict: card.dataset.verdict }));
    if (!verdicts.length) { say("mark at least one image OK (O) or NG (N) first"); return; }
    submit.disabled = true;
    try {
      const done = await postJson("/ui/api/review", { verdicts });
      for (const card of cards) if (card.dataset.verdict === "skip") skipped.add(card.dataset.id);
      say(`wrote ${done.written} verdict(s); ${done.waiting} waiting for the next update`, true);
      document.body.dataset.written = String(done.written);
      await load();
    } catch (error) { say(error.message); showStatus(); }
  };

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLElement && event.target.closest("input, select, textarea")) return;
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const key = event.key.toLowerCase();
    const step = { o: "OK", n: "NG", s: "skip" }[key];
    if (step) { mark(current, step); focus(current + 1); event.preventDefault(); return; }
    if (key === "arrowright" || key === "arrowdown") { focus(current + 1); event.preventDefault(); }
    else if (key === "arrowleft" || key === "arrowup") { focus(current - 1); event.preventDefault(); }
    else if (key === "enter") { event.preventDefault(); send(); }
  });
  submit.addEventListener("click", send);
  skipBatch.addEventListener("click", async () => {
    for (const card of cards) skipped.add(card.dataset.id);
    try { await load(); } catch (error) { say(error.message); }
  });
  await load();
}

PAGES.review = initReview;
