// The map: waits for the projection (progress, failure + retry), embeds the Bokeh document,
// keeps the tile URL in step with filter and colour, and turns Bokeh events into state.

import { apiUrl, debounce, el, filterParam, fmt, getJSON, postJSON } from "./api.js";
import { filterConditions, on, state, update } from "./state.js";
import { hoverAt, hoverEnd } from "./preview.js";
import { showOverview } from "./overview.js";

let models = null;        // {plot, tiles, samples, selection, xRange, yRange}
let tileToken = "";       // names the projection in tile URLs
let pollTimer = null;
let bounds = null;        // [x0, y0, x1, y1] of the episodes on the map (the projection's)
let frameInset = null;    // the Bokeh frame's offsets inside #map-root (its toolbar's room)
let lastFit = null;       // the ranges fitView set last: Bokeh echoes them back
let lastFrame = null;     // {width, height} of the frame the ranges were set for
const FIT_PAD = 14;       // pixels kept clear around the episodes
const $ = (id) => document.getElementById(id);

/** Show the map of the open dataset, or why there is none yet. */
export function openMap() {
  clearTimeout(pollTimer);
  models = null;
  $("map-root").replaceChildren();
  $("map-controls").hidden = true;
  $("map-hint").hidden = true;
  update({ mapReady: false });
  if (state.dataset.mode === "metadata-only") {
    $("map-status").hidden = true;
    showOverview(); // the distributions, in place of the map
    return;
  }
  $("overview").hidden = true;
  poll();
}

async function poll() {
  const id = state.dataset.id;
  let status;
  try {
    status = await getJSON(apiUrl(id, "/projection"));
  } catch (err) {
    showStatus(`Could not read the projection status: ${escapeHtml(err.message)}`, { error: true });
    pollTimer = setTimeout(poll, 3000);
    return;
  }
  if (!state.dataset || state.dataset.id !== id) return;
  if (status.status === "done") { bounds = status.bounds || null; return embed(); }
  if (status.status === "failed") {
    showStatus(`The projection failed: ${escapeHtml(status.error || "unknown error")}`, { error: true, retry: true });
    return;
  }
  if (status.status === "absent") {
    showStatus("This dataset has not been projected yet.", { retry: true, retryLabel: "Project now" });
    return;
  }
  const device = state.health ? deviceName(state.health.backend) : "";
  const pct = Math.round((status.progress || 0) * 100);
  const stage = status.status === "queued" ? "queued" : `${status.stage || "working"} ${pct}%`;
  showStatus(`Projecting ${fmt(state.dataset.n_episodes)} episodes${device ? " on " + escapeHtml(device) : ""} · ${escapeHtml(stage)}
    <small>${status.elapsed_s ? status.elapsed_s.toFixed(1) + " s" : ""}</small>`, { progress: status.progress || 0 });
  pollTimer = setTimeout(poll, 600);
}

/** "CPU", or "GPU: NVIDIA H100 …" from /api/health's backend. */
export function deviceName(backend) {
  if (!backend) return "";
  if (backend.name === "cpu") return "CPU";
  const device = backend.device && backend.device !== backend.name ? backend.device : backend.name;
  return `GPU: ${device}`;
}

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function showStatus(html, { error = false, progress = null, retry = false, retryLabel = "Retry projection" } = {}) {
  $("map-status").hidden = false;
  const text = $("map-status-text");
  text.innerHTML = html;
  text.classList.toggle("error", error);
  $("map-progress").hidden = progress === null;
  if (progress !== null) $("map-progress").firstElementChild.style.width = `${Math.round(progress * 100)}%`;
  const button = $("map-retry");
  button.hidden = !retry;
  button.textContent = retryLabel;
}

async function retry() {
  $("map-retry").hidden = true;
  try {
    await postJSON(apiUrl(state.dataset.id, "/projection"), {});
  } catch (err) {
    showStatus(`Could not restart the projection: ${escapeHtml(err.message)}`, { error: true, retry: true });
    return;
  }
  poll();
}

async function embed() {
  const id = state.dataset.id;
  const query = { color_by: state.colorBy === "density" ? "" : state.colorBy,
                  filter: filterParam(filterConditions()), view: state.view ? state.view.join(",") : "" };
  let answer;
  try {
    answer = await getJSON(apiUrl(id, "/map", query));
  } catch (err) {
    if (state.colorBy !== "density" || filterConditions().length || state.view) {
      // A shared link from another dataset: start from a plain map rather than fail.
      update({ colorBy: "density", conditions: [], pinned: [], polygon: null, view: null });
      return embed();
    }
    showStatus(`Could not draw the map: ${escapeHtml(err.message)}`, { error: true, retry: true });
    return;
  }
  if (!state.dataset || state.dataset.id !== id) return;
  tileToken = answer.tile_token;
  $("map-status").hidden = true;
  const root = $("map-root");
  root.replaceChildren();
  await window.Bokeh.embed.embed_item(answer.doc, root);
  const doc = window.Bokeh.documents[window.Bokeh.documents.length - 1];
  const find = (name) => doc.get_model_by_name(name);
  models = { plot: find("map"), tiles: find("tiles"), samples: find("sample"),
             similar: find("similar"), outline: find("outline"), selection: find("selection"),
             hovered: find("hovered"), xRange: find("x_range"), yRange: find("y_range") };
  $("map-controls").hidden = false;
  $("map-hint").hidden = false;
  frameInset = null;
  lastFrame = null;
  drawSelection();
  drawHovered();
  update({ mapReady: true });
  requestAnimationFrame(() => requestAnimationFrame(relayout)); // once Bokeh has laid out
}

/** The frame (where episodes are drawn) in page pixels, from #map-root's box: the frame's
 *  offsets are read from Bokeh once, so a resize can be answered before Bokeh re-lays out. */
function frameBox() {
  const root = $("map-root").getBoundingClientRect();
  if (!frameInset) {
    const view = window.Bokeh.index && window.Bokeh.index.get(models.plot);
    const bbox = view && view.frame && view.frame.bbox;
    if (!bbox || !bbox.width || !bbox.height) return null;
    frameInset = { left: bbox.left, top: bbox.top, right: root.width - bbox.right,
                   bottom: root.height - bbox.bottom };
  }
  const left = root.left + frameInset.left;
  const top = root.top + frameInset.top;
  return { left, top, width: root.width - frameInset.left - frameInset.right,
           height: root.height - frameInset.top - frameInset.bottom };
}

/** Fit the episodes into the part of the frame that the overlays (hint above, colour and
 *  legend below) leave clear, with equal scales on both axes. */
function fitView() {
  const frame = frameBox();
  if (!models || !bounds || !frame) return;
  const clearOf = (id) => ($(id).hidden ? null : $(id).getBoundingClientRect());
  const hint = clearOf("map-hint");
  const controls = clearOf("map-controls");
  const top = (hint ? Math.max(0, hint.bottom - frame.top) : 0) + FIT_PAD;
  const bottom = (controls ? Math.max(0, frame.top + frame.height - controls.top) : 0) + FIT_PAD;
  const width = frame.width - 2 * FIT_PAD;
  const height = frame.height - top - bottom;
  if (width < 40 || height < 40) return;
  const [x0, y0, x1, y1] = bounds;
  const perPixel = Math.max((x1 - x0) / width || 0, (y1 - y0) / height || 0) || 1;
  const xStart = (x0 + x1) / 2 - (frame.width / 2) * perPixel;
  const yStart = (y0 + y1) / 2 - (bottom + height / 2) * perPixel;
  setRanges(xStart, yStart, xStart + frame.width * perPixel, yStart + frame.height * perPixel, frame);
}

/** Keep the user's own view (centre and scale) in a frame of a new size. */
function keepView() {
  const frame = frameBox();
  if (!models || !frame || !lastFrame) return;
  const { xRange: x, yRange: y } = models;
  const perPixel = (x.end - x.start) / lastFrame.width;
  const cx = (x.start + x.end) / 2;
  const cy = (y.start + y.end) / 2;
  const w = frame.width * perPixel;
  const h = frame.height * ((y.end - y.start) / lastFrame.height);
  setRanges(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, frame);
}

function setRanges(x0, y0, x1, y1, frame) {
  lastFit = [x0, y0, x1, y1];
  lastFrame = { width: frame.width, height: frame.height };
  models.xRange.setv({ start: x0, end: x1 });
  models.yRange.setv({ start: y0, end: y1 });
  document.body.dataset.mapFits = String(Number(document.body.dataset.mapFits || 0) + 1);
}

/** The map area changed size (a panel, the drawer, the window) or the legend did: refit
 *  a fitted map, keep a view the user chose. */
function relayout() {
  if (!models) return;
  if (state.view && lastFrame) keepView();
  else if (state.view) lastFrame = frameBox();
  else fitView();
}

/** The tile URL carries colour and filter, so a change redraws only what it must. */
function refreshTiles() {
  if (!models) return;
  const query = { color_by: state.colorBy === "density" ? "" : state.colorBy,
                  filter: filterParam(filterConditions()), v: tileToken };
  const base = apiUrl(state.dataset.id, "/tiles/{Z}/{X}/{Y}.png", query)
    .replace(/%7B/g, "{").replace(/%7D/g, "}");
  if (models.tiles.url !== base) models.tiles.url = base;
}

function drawSelection() {
  if (!models) return;
  const p = state.polygon;
  models.selection.data = p ? { xs: [p.map((q) => q[0])], ys: [p.map((q) => q[1])] } : { xs: [], ys: [] };
  if (!p) models.samples.selected.indices = [];
}

/** The picker shows the colouring, however it was chosen (◐ beside a selection, a link). */
function showColorChoice() {
  const select = $("color-by");
  if ([...select.options].some((o) => o.value === state.colorBy)) select.value = state.colorBy;
}

/** Fill the colour-by picker: density, then category/bool fields, then numbers. */
export function buildColorPicker() {
  const select = $("color-by");
  select.replaceChildren(el("option", { value: "density" }, "density"));
  const fields = state.fields;
  const add = (label, kinds) => {
    const group = el("optgroup", { label });
    for (const f of fields) if (kinds.includes(f.kind)) group.append(el("option", { value: f.name }, f.name));
    if (group.children.length) select.append(group);
  };
  add("category", ["category", "bool"]);
  add("number (mean)", ["int", "float"]);
  if (state.selections && state.selections.length) {
    const group = el("optgroup", { label: "selection (in / not in)" });
    for (const s of state.selections) group.append(el("option", { value: `selection:${s.name}` }, s.name));
    select.append(group);
  }
  const pending = state.colorBy.startsWith("selection:") && !state.selectionsLoaded;
  if (pending) select.append(el("option", { value: state.colorBy }, state.colorBy.slice(10)));
  const known = [...select.options].some((o) => o.value === state.colorBy);
  if (!known) update({ colorBy: "density" });
  select.value = state.colorBy;
}

let legendSeq = 0;
const refreshLegend = debounce(async () => {
  if (!models) return;
  const seq = ++legendSeq;
  const query = { color_by: state.colorBy === "density" ? "" : state.colorBy,
                  filter: filterParam(filterConditions()) };
  try {
    const legend = await getJSON(apiUrl(state.dataset.id, "/legend", query));
    if (seq === legendSeq) renderLegend(legend);
  } catch (err) {
    if (seq === legendSeq) $("legend").replaceChildren(el("span", { class: "more" }, err.message));
  }
}, 80);

function renderLegend(legend) {
  const box = $("legend");
  const ramp = (stops) => el("span", { class: "ramp", style: `background: linear-gradient(90deg, ${stops.join(",")})` });
  if (legend.kind === "density") {
    box.replaceChildren(el("span", { class: "more" }, "sparse"), ramp(legend.colormap), el("span", { class: "more" }, "dense"));
  } else if (legend.kind === "number") {
    const num = (v) => +Number(v).toPrecision(4);
    box.replaceChildren(el("span", { class: "n" }, num(legend.min)), ramp(legend.colormap), el("span", { class: "n" }, num(legend.max)));
  } else {
    const shown = legend.entries.slice(0, 14);
    box.replaceChildren(...shown.map((e) => el("span", { class: "item", "data-value": e.value },
      el("span", { class: "swatch", style: `background:${e.color}` }), e.value, el("span", { class: "n" }, fmt(e.count)))));
    if (legend.entries.length > shown.length) box.append(el("span", { class: "more" }, `+${legend.entries.length - shown.length} more`));
  }
}

/** Draw a sample's episodes on the map (Bokeh's HoverTool names them): those the current
 *  filter matches, so the markers follow the filter as the tiles do. */
let sampleSeq = 0;
export async function showSamplePoints(manifest) {
  if (!models) return;
  const seq = ++sampleSeq;
  if (!manifest) { models.samples.data = { x: [], y: [], episode_id: [], stratum: [] }; return; }
  const field = manifest.params && manifest.params.stratify_by;
  const pts = await getJSON(apiUrl(state.dataset.id, "/points", {
    sample_id: manifest.sample_id || manifest.id, fields: field || "",
    filter: filterParam(filterConditions()) }));
  if (seq !== sampleSeq || !models) return; // a newer filter or sample is on its way
  const strata = field ? pts.fields[field].map(String) : pts.x.map(() => manifest.method);
  models.samples.data = { x: pts.x, y: pts.y, episode_id: pts.episode_id, stratum: strata };
}

/** Ring the episode the card shows (the one under the cursor, or a clicked tile's). */
function drawHovered() {
  if (!models || !models.hovered) return;
  const ep = state.hovered;
  models.hovered.data = ep && Number.isFinite(ep.x)
    ? { x: [ep.x], y: [ep.y], episode_id: [ep.episode_id] } : { x: [], y: [], episode_id: [] };
}

/** Ring episodes on the map (a "find similar" answer): `rows` are episode indices. */
export async function ringEpisodes(ids) {
  if (!models || !models.similar) return;
  if (!ids || !ids.length) { models.similar.data = { x: [], y: [], episode_id: [] }; return; }
  const filter = JSON.stringify([{ field: "episode_id", op: "in", value: ids }]);
  const pts = await getJSON(apiUrl(state.dataset.id, "/points", { filter }));
  models.similar.data = { x: pts.x, y: pts.y, episode_id: pts.episode_id };
}

/** Outline the episodes a filter matches (a group hovered in the groups table); null clears. */
let outlineSeq = 0;
export async function outlineGroup(conditions) {
  if (!models || !models.outline) return;
  const seq = ++outlineSeq;
  if (!conditions) { models.outline.data = { x: [], y: [] }; return; }
  const pts = await getJSON(apiUrl(state.dataset.id, "/points", { filter: JSON.stringify(conditions), limit: 5000 }));
  if (seq === outlineSeq) models.outline.data = { x: pts.x, y: pts.y };
}

/** Zoom around the centre by `factor` (< 1 zooms in). */
export function zoom(factor) {
  if (!models) return;
  for (const r of [models.xRange, models.yRange]) {
    const mid = (r.start + r.end) / 2;
    const half = ((r.end - r.start) / 2) * factor;
    r.setv({ start: mid - half, end: mid + half });
  }
  const { xRange: x, yRange: y } = models; // Bokeh reports only tool-made range changes
  update({ view: [x.start, y.start, x.end, y.end] });
}

/** Esc: clear the map selection. */
export function clearSelection() {
  update({ polygon: null });
}

function pixelSize() {
  if (!models) return 0;
  const view = window.Bokeh.index && window.Bokeh.index.get(models.plot);
  const width = (view && view.frame && view.frame.bbox.width) || $("map-root").clientWidth || 1;
  return (models.xRange.end - models.xRange.start) / width;
}

/** Bokeh's events arrive here (CustomJS callbacks in the map document call them). */
window.tessera = {
  onSelection(geometry, final) {
    if (!final) return;
    let polygon = null;
    if (geometry.type === "rect") {
      const { x0, x1, y0, y1 } = geometry;
      polygon = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];
    } else if (geometry.type === "poly") {
      polygon = Array.from(geometry.x, (x, i) => [x, geometry.y[i]]); // x is a typed array
      const step = Math.ceil(polygon.length / 500); // the API takes at most 2,000 vertices
      polygon = polygon.filter((_, i) => i % step === 0);
    }
    if (polygon && polygon.length >= 3) update({ polygon });
  },
  onHover(x, y) { if (models) hoverAt(x, y, pixelSize()); },
  onHoverEnd() { hoverEnd(); },
  onView(x0, y0, x1, y1) {
    if (![x0, y0, x1, y1].every(Number.isFinite)) return;
    const span = lastFit ? Math.abs(lastFit[2] - lastFit[0]) : 0;
    const echo = lastFit && [x0, y0, x1, y1].every((v, i) => Math.abs(v - lastFit[i]) <= 1e-9 * span);
    if (!echo) update({ view: [x0, y0, x1, y1] }); // the user's own pan or zoom
  },
  onReset() { update({ view: null }); fitView(); },
};

export function initMap() {
  $("map-retry").addEventListener("click", retry);
  $("color-by").addEventListener("change", (e) => update({ colorBy: e.target.value }));
  on(["colorBy", "conditions", "pinned", "polygon", "mapReady"], () => { refreshTiles(); refreshLegend(); });
  on(["polygon", "mapReady"], drawSelection);
  on("hovered", drawHovered);
  on("colorBy", showColorChoice);
  const follow = debounce(() => showSamplePoints(state.sample).catch(() => {}), 150);
  on(["conditions", "pinned", "polygon"], () => { if (state.sample) follow(); });
  let frame = 0;
  const observer = new ResizeObserver(() => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(relayout);
  });
  observer.observe($("map-root"));
  observer.observe($("map-controls"));
  on(["selections", "fields"], (s) => { if (s.dataset) buildColorPicker(); }); // a new one: list it
  on("count", (s) => { $("no-match").hidden = !(s.count && s.count.count === 0); });
}
