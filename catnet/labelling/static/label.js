// catnet label: keyboard-first tagging. Talks only to this app; puts every piece of text in with
// textContent (never as markup), so a file name like <script>.jpg stays text.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
const state = { view: "label", heat: false, heatmaps: false, running: false, ranked: undefined };
const queues = {
  label: { items: [], history: [], total: 0, order: "" },
  review: { items: [], history: [], total: 0, order: "" },
};

async function api(path, options = {}) {
  const headers = Object.assign({ "X-Catnet-Token": TOKEN }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await response.json(); } catch (e) { body = { error: response.statusText }; }
  if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
  return body;
}

const post = (path, value) => api(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(value),
});

function pictureUrl(kind, item) {
  const q = new URLSearchParams({ root: item.root, path: item.path, token: TOKEN });
  return `/api/${kind}?${q}`;
}

function say(view, text, isError = false) {
  const el = $(`${view}-status`);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function showP(prefix, p) {
  $(`${prefix}-pcat`).textContent = p == null ? "p(cat): no model yet" : `p(cat) = ${p.toFixed(3)}`;
  $(`${prefix}-bar`).style.width = p == null ? "0" : `${Math.round(p * 100)}%`;
}

// The open-set check: a picture unlike every training picture is never tagged cat by the model.
function showUnfamiliar(prefix, odd, score) {
  const el = $(`${prefix}-unfamiliar`);
  el.hidden = odd !== true;
  el.textContent = odd === true
    ? `unfamiliar: unlike every training picture, so never tagged cat automatically` +
      (score == null ? "" : ` (score ${score.toFixed(2)})`)
    : "";
}

function render(view) {
  const q = queues[view];
  const item = q.items[0];
  const img = $(`${view}-img`), heat = $(`${view}-heat`);
  $(`${view}-count`).textContent = `${q.items.length} shown of ${q.total} · ${q.order}`;
  if (!item) {
    img.removeAttribute("src"); heat.removeAttribute("src");
    $(`${view}-name`).textContent = view === "label" ? "no untagged pictures left" : "nothing to review";
    showP(view, null);
    showUnfamiliar(view, null);
    if (view === "review") $("review-tag").textContent = "";
    return;
  }
  img.src = pictureUrl("picture", item);
  img.alt = item.name;
  $(`${view}-name`).textContent = item.path;
  if (view === "review") $("review-tag").textContent = item.tag === "cat" ? "cat" : "not cat";
  showP(view, item.p_cat);
  showUnfamiliar(view, item.unfamiliar, item.unfamiliar_score);
  if (state.heat && state.heatmaps) heat.src = pictureUrl("heatmap", item);
  else heat.removeAttribute("src");
}

async function loadQueue(view) {
  try {
    const data = await api(`/api/queue?kind=${view}`);
    Object.assign(queues[view], { items: data.items, total: data.total, order: data.order });
    render(view);
  } catch (e) { say(view, e.message, true); }
}

async function answer(view, value) {
  const q = queues[view];
  const item = q.items[0];
  if (!item) return;
  try {
    const result = view === "label"
      ? await post("/api/label", { path: item.path, label: value })
      : await post("/api/review", { path: item.path, verdict: value });
    q.items.shift();
    q.total -= 1;
    q.history.push({ item, action: result.action });
    say(view, `${item.name}: ${describe(view, value, item)}`);
  } catch (e) {
    say(view, `${item.name}: ${e.message}`, true);
    q.items.shift();  // gone (another tab?) or refused: move on
  }
  render(view);
}

function describe(view, value, item) {
  if (view === "label") return value === "cat" ? "tagged cat" : "tagged not cat";
  if (value === "right") return "tag confirmed (reviewed.csv)";
  return item.tag === "cat" ? "moved to not cat" : "moved to cat";
}

function skip(view) {
  const q = queues[view];
  if (!q.items.length) return;
  const item = q.items.shift();
  q.items.push(item);
  q.history.push({ item, skip: true });
  say(view, `skipped ${item.name}`);
  render(view);
}

async function undo(view) {
  const q = queues[view];
  const last = q.history.pop();
  if (!last) { say(view, "nothing to undo"); return; }
  if (last.skip) {
    const at = q.items.lastIndexOf(last.item);
    if (at >= 0) q.items.splice(at, 1);
  } else {
    try {
      await post("/api/undo", { action: last.action });
      q.total += 1;
    } catch (e) { say(view, e.message, true); q.history.push(last); return; }
  }
  q.items.unshift(last.item);
  say(view, `undone: ${last.item.name}`);
  render(view);
}

function showView(view) {
  state.view = view;
  for (const name of ["label", "review", "teach", "try"]) {
    $(`view-${name}`).hidden = name !== view;
    $(`tab-${name}`).classList.toggle("active", name === view);
  }
  if (view === "label" || view === "review") loadQueue(view);
}

function percent(x) { return x == null ? "–" : `${(x * 100).toFixed(1)} %`; }

function showJob(s) {
  const job = s.job || {};
  $("model-name").textContent = s.model;
  state.heatmaps = !!s.heatmaps;
  for (const b of document.querySelectorAll(".heat-toggle")) b.hidden = !state.heatmaps;
  $("teach-model-now").textContent = s.model;
  const total = job.running ? job.total || 0 : 0;  // the bar moves only while a job runs
  $("teach-bar").style.width = total ? `${Math.round(100 * (job.done || 0) / total)}%` : "0";
  let text = job.running ? `${job.phase}` : (job.phase === "failed" ? `failed: ${job.error}` : "");
  if (!job.running && job.phase === "done") text = `${job.job} finished`;
  if (job.running && job.epoch) text += ` · epoch ${job.epoch}/${job.epochs}`;
  if (job.running && total) text += ` · ${job.done}/${total}`;
  $("teach-phase").textContent = text;
  $("btn-teach").disabled = !!job.running;
  const t = s.last_teach;
  $("teach-result").hidden = !t;
  if (t) {
    $("teach-before").textContent = percent(t.before_acc);
    $("teach-after").textContent = percent(t.after_acc);
    $("teach-val").textContent = String(t.val_pictures);
    $("teach-model").textContent = t.model;
    $("teach-from").textContent = t.started_from || "no model (first training)";
  }
}

async function poll() {
  try {
    const s = await api("/api/state");
    showJob(s);
    const running = !!(s.job && s.job.running);
    if ((state.running && !running) || s.ranked !== state.ranked) {  // new model or ranking
      if (state.ranked !== undefined) { loadQueue("label"); loadQueue("review"); }
    }
    state.running = running;
    state.ranked = s.ranked;
  } catch (e) { $("teach-phase").textContent = e.message; }
  setTimeout(poll, state.running ? 700 : 2500);
}

async function teach() {
  try {
    await post("/api/teach", {});
    state.running = true;
    $("teach-phase").textContent = "starting";
  } catch (e) { $("teach-phase").textContent = e.message; }
}

async function tryPicture(file) {
  if (!file) return;
  $("try-img").src = URL.createObjectURL(file);
  $("try-heat").removeAttribute("src");
  say("try", "asking the model…");
  try {
    const r = await api("/api/try", { method: "POST", body: file,
      headers: { "Content-Type": file.type || "application/octet-stream" } });
    showP("try", r.p_cat);
    showUnfamiliar("try", r.unfamiliar, r.unfamiliar_score);
    say("try", r.label === "cat" ? "the model says: cat" : "the model says: not cat");
    if (r.heatmap) $("try-heat").src = r.heatmap;
  } catch (e) { say("try", e.message, true); showP("try", null); showUnfamiliar("try", null); }
}

function toggleHeat() {
  state.heat = !state.heat;
  if (state.view === "label" || state.view === "review") render(state.view);
}

const KEYS = {
  label: { c: () => answer("label", "cat"), n: () => answer("label", "not_cat"),
    s: () => skip("label"), u: () => undo("label"), h: toggleHeat },
  review: { w: () => answer("review", "wrong"), r: () => answer("review", "right"),
    s: () => skip("review"), u: () => undo("review"), h: toggleHeat },
  teach: { t: teach },
  try: {},
};

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.target.tagName === "INPUT") return;
  const views = { 1: "label", 2: "review", 3: "teach", 4: "try" };
  if (views[event.key]) { showView(views[event.key]); event.preventDefault(); return; }
  const action = KEYS[state.view][event.key.toLowerCase()];
  if (action && !event.repeat) { event.preventDefault(); action(); }
});

function wire() {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
  const clicks = {
    "btn-cat": KEYS.label.c, "btn-notcat": KEYS.label.n, "btn-skip": KEYS.label.s,
    "btn-undo": KEYS.label.u, "btn-wrong": KEYS.review.w, "btn-right": KEYS.review.r,
    "btn-rskip": KEYS.review.s, "btn-rundo": KEYS.review.u, "btn-teach": teach,
    "btn-heat-label": toggleHeat, "btn-heat-review": toggleHeat,
  };
  for (const [id, fn] of Object.entries(clicks)) $(id).addEventListener("click", fn);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over"); tryPicture(e.dataTransfer.files[0]);
  });
  $("try-file").addEventListener("change", (e) => tryPicture(e.target.files[0]));
  document.addEventListener("paste", (e) => {
    const file = [...e.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) { showView("try"); tryPicture(file); }
  });
}

wire();
showView("label");
poll();
