// mess listening page: plain JS, no build step, no CDN. Every text from the server goes
// through textContent (never innerHTML): track ids and labels are data.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  dataset: null,
  query: null,          // the track whose neighbours are shown
  positive: [],         // include: more like these
  negative: [],         // exclude: less like these
  cursor: null,         // next page of neighbours
  tracksCursor: null,
  searchSeq: 0,
  queriesSeq: 0,
};

function status(text) { $("status").textContent = text || ""; }

async function api(path, options = {}) {
  const r = await fetch(path, { credentials: "same-origin", ...options });
  if (r.status === 401) {
    $("token-form").hidden = false;
    $("token").focus();
    throw new Error("this server needs a token");
  }
  const type = r.headers.get("content-type") || "";
  const body = type.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error((body && body.error) || `HTTP ${r.status}`);
  return body;
}

function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => u.append(k, x)); else u.append(k, v);
  }
  return u.toString();
}

const enc = (id) => encodeURIComponent(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function labelText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}: ${v}`).join(" · ");
}

// ------------------------------------------------------------------ datasets
async function loadDatasets() {
  const d = await api("/v1/datasets");
  const sel = $("dataset");
  sel.replaceChildren();
  for (const row of d.datasets) {
    const label = row.error ? `${row.dataset} (unavailable)` : `${row.dataset} · ${row.n_tracks} tracks`;
    sel.append(el("option", { value: row.dataset }, label));
  }
  if (d.datasets.length) await chooseDataset(d.datasets[0].dataset);
  else status("no datasets are served");
}

async function chooseDataset(name) {
  state.dataset = name;
  $("dataset").value = name;
  $("query").hidden = true;
  await Promise.all([loadAspects(), loadProbe(), search()]);
}

async function loadAspects() {
  const sel = $("aspect");
  sel.replaceChildren();
  const d = await api("/v1/aspects?" + qs({ dataset: state.dataset }));
  const names = new Set();
  for (const a of d.aspects) {
    if (a.layer === null || a.layer === undefined) continue;
    names.add(a.aspect);
    const tag = a.validated ? "validated" : "not validated";
    sel.append(el("option", { value: a.aspect }, `${a.aspect} (layer ${a.layer}, ${tag})`));
  }
  for (const s of d.spaces) {
    if (names.has(s.aspect)) continue;
    sel.append(el("option", { value: s.aspect }, `${s.aspect} (fitted space)`));
  }
}

async function loadProbe() {
  const img = $("heatmap");
  try {
    const p = await api("/v1/probe?" + qs({ dataset: state.dataset }));
    const ok = Object.values(p.validation).filter((v) => v.validated).length;
    $("probe-note").textContent =
      `${ok} of ${Object.keys(p.validation).length} targets validated` + (p.stale ? " · stale: the store changed after the probe" : "");
    img.src = "/v1/probe/heatmap.png?" + qs({ dataset: state.dataset });
    img.hidden = false;
  } catch (e) {
    img.hidden = true;
    $("probe-note").textContent = e.message;
  }
}

// ------------------------------------------------------------------ tracks
async function search(more = false) {
  const list = $("tracks");
  const seq = ++state.searchSeq;  // answers arriving out of order never overwrite a later search
  const d = await api("/v1/tracks?" + qs({ dataset: state.dataset, q: $("q").value, cursor: more ? state.tracksCursor : null, limit: 20 }));
  if (seq !== state.searchSeq) return;
  if (!more) list.replaceChildren();
  for (const t of d.tracks) {
    list.append(el("li", {},
      el("button", { type: "button", class: "track", "data-track": t.track_id, onclick: () => openTrack(t.track_id) }, t.track_id),
      el("span", { class: "labels" }, labelText(t.labels))));
  }
  state.tracksCursor = d.next_cursor;
  $("tracks-more").hidden = !d.next_cursor;
  status(`${d.tracks.length ? "" : "no "}tracks matching “${d.q}” in ${d.dataset} (${d.n_tracks} in all)`);
}

// ------------------------------------------------------------------ a track and its neighbours
async function openTrack(id) {
  const t = await api(`/v1/tracks/${enc(id)}?` + qs({ dataset: state.dataset }));
  state.query = t.track_id;
  state.positive = [t.track_id];
  state.negative = [];
  $("query").hidden = false;
  const info = $("query-info");
  info.replaceChildren(
    el("strong", { id: "query-id" }, t.track_id), " ",
    el("span", { class: "labels" }, labelText(t.labels)), " ",
    el("span", {}, `${t.duration_seconds.toFixed(1)} s · ${t.status}`));
  const player = $("player");
  if (t.audio.playable) {
    player.hidden = false;
    player.src = t.audio.url;
  } else {
    player.removeAttribute("src");
    player.hidden = true;
    info.append(el("span", { class: "badge warn" }, t.audio.available ? `not playable in a browser (.${t.audio.format})` : "no audio file"));
  }
  $("neighbours").replaceChildren();
  $("result-head").replaceChildren();
  renderShaping();
  status(`track ${t.track_id}`);
  $("neighbours-btn").focus();
}

function aspectsWanted() {
  const mix = $("mix").value.split(",").map((s) => s.trim()).filter(Boolean);
  return mix.length ? mix : [$("aspect").value || "spectral_brightness"];
}

async function neighbours(more = false) {
  if (!state.query) return;
  const common = {
    dataset: state.dataset,
    aspect: aspectsWanted(),
    space: $("space").value,
    k: parseInt($("k").value || "10", 10),
    where: $("where").value || null,
    explain: $("explain").checked && state.positive.length === 1 && !state.negative.length,
    cursor: more ? state.cursor : null,
  };
  let d;
  const seq = ++state.queriesSeq;
  if (state.positive.length === 1 && !state.negative.length) {
    d = await api(`/v1/tracks/${enc(state.query)}/similar?` + qs(common));
  } else {
    d = await api("/v1/recommend", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...common, positive: state.positive, negative: state.negative }),
    });
  }
  if (seq !== state.queriesSeq) return;  // a later query was sent meanwhile
  renderResult(d, more);
}

function renderResult(d, more) {
  const head = $("result-head");
  const aspects = Array.isArray(d.aspect) ? d.aspect.join(" + ") : d.aspect;
  const layers = Array.isArray(d.layer) ? d.layer.join(",") : d.layer;
  head.replaceChildren(el("span", {}, `${aspects} · layer ${layers} · ${d.normalize}`), " ");
  head.append(d.validated
    ? el("span", { class: "badge ok" }, "validated")
    : el("span", { class: "badge warn", id: "not-validated", title: d.caveat || "" }, "NOT VALIDATED"));
  if (!d.validated && d.caveat) head.append(el("div", { class: "caveat" }, d.caveat));
  const list = $("neighbours");
  if (!more) list.replaceChildren();
  for (const r of d.recommendations) {
    const id = r.track_id;
    const labels = r.labels || {};
    const item = el("li", { class: "neighbour", "data-track": id },
      el("span", { class: "rank" }, `${r.rank}.`),
      el("button", { type: "button", class: "track", onclick: () => openTrack(id) }, id),
      el("span", { class: "score", title: "similarity" }, r.similarity === null ? "–" : r.similarity.toFixed(3)),
      d.validated ? "" : el("span", { class: "badge warn small" }, "not validated"),
      el("span", { class: "labels" }, labelText(labels)),
      el("button", { type: "button", class: "include", "aria-label": `include ${id}`, onclick: () => shape(id, +1) }, "+ like"),
      el("button", { type: "button", class: "exclude", "aria-label": `exclude ${id}`, onclick: () => shape(id, -1) }, "− unlike"),
      el("audio", { controls: "", preload: "none", src: `/v1/tracks/${enc(id)}/audio?` + qs({ dataset: state.dataset }) }));
    if (r.explain) item.append(el("div", { class: "explain" }, explainText(r.explain)));
    list.append(item);
  }
  state.cursor = d.next_cursor;
  $("more").hidden = !d.next_cursor;
  status(`${list.children.length} neighbours of ${state.positive.join(", ")}` + (state.negative.length ? ` unlike ${state.negative.join(", ")}` : ""));
}

function explainText(x) {
  const sims = Object.entries(x.aspect_similarities || {}).map(([k, v]) => `${k} ${Number(v).toFixed(2)}`).join(", ");
  const diffs = (x.target_differences || []).map((d) => `${d.target} ${d.delta > 0 ? "+" : ""}${d.delta}${d.unit ? " " + d.unit : ""} (z ${d.z})`).join(", ");
  return [sims && `aspect similarities: ${sims}`, diffs && `differs most in: ${diffs}`].filter(Boolean).join(" · ");
}

function renderShaping() {
  const chips = (ids, sign) => ids.map((id) => el("button", {
    type: "button", class: "chip", "aria-label": `remove ${id}`,
    onclick: () => unshape(id, sign),
  }, id + " ×"));
  $("positives").replaceChildren(...chips(state.positive.filter((t) => t !== state.query), +1));
  $("negatives").replaceChildren(...chips(state.negative, -1));
  $("shaping").hidden = state.positive.length === 1 && !state.negative.length;
}

async function shape(id, sign) {
  if (sign > 0 && !state.positive.includes(id)) state.positive.push(id);
  if (sign < 0 && !state.negative.includes(id)) state.negative.push(id);
  renderShaping();
  await neighbours();
}

async function unshape(id, sign) {
  if (sign > 0) state.positive = state.positive.filter((t) => t !== id);
  else state.negative = state.negative.filter((t) => t !== id);
  renderShaping();
  await neighbours();
}

// ------------------------------------------------------------------ wiring
function guard(fn) {
  return async (ev) => {
    if (ev && ev.preventDefault) ev.preventDefault();
    try { await fn(ev); } catch (e) { status(e.message); }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("dataset").addEventListener("change", guard(() => chooseDataset($("dataset").value)));
  $("search-form").addEventListener("submit", guard(() => search(false)));
  $("tracks-more").addEventListener("click", guard(() => search(true)));
  $("similar-form").addEventListener("submit", guard(() => neighbours(false)));
  $("more").addEventListener("click", guard(() => neighbours(true)));
  $("reset").addEventListener("click", guard(() => { state.positive = [state.query]; state.negative = []; renderShaping(); return neighbours(); }));
  $("token-form").addEventListener("submit", guard(async () => {
    document.cookie = `mess_token=${encodeURIComponent($("token").value)}; path=/; SameSite=Strict`;
    $("token-form").hidden = true;
    await loadDatasets();
  }));
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "/" && document.activeElement.tagName !== "INPUT") { ev.preventDefault(); $("q").focus(); }
  });
  guard(loadDatasets)();
});
