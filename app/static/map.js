// The map: waits for the projection (progress, failure + retry), embeds the Bokeh document
// (then `state.map` holds its models), fits the episodes into the room the overlays leave,
// and turns Bokeh's events into state. What is drawn on it follows the store (colors.js,
// overlays.js).

import { apiUrl, deviceName, filterParam, fmt, getJSON, poll, postJSON } from "./api.js";
import { filterConditions, on, state, update } from "./state.js";
import { hoverAt, hoverEnd } from "./preview.js";

let bounds = null;        // [x0, y0, x1, y1] of the episodes on the map (the projection's)
let frameInset = null;    // the Bokeh frame's offsets inside #map-root (its toolbar's room)
let lastFit = null;       // the ranges fitView set last: Bokeh echoes them back
let lastFrame = null;     // {width, height} of the frame the ranges were set for
const FIT_PAD = 14;       // pixels kept clear around the episodes
const $ = (id) => document.getElementById(id);

/** Show the map of the open dataset, or why there is none yet (overview.js shows a
 *  metadata-only dataset's distributions in its place). */
function openMap() {
  $("map-root").replaceChildren();
  $("map-controls").hidden = true;
  $("map-hint").hidden = true;
  update({ map: null });
  if (state.dataset.mode === "metadata-only") {
    $("map-status").hidden = true;
    return;
  }
  waitForProjection();
}

const FINAL = new Set(["done", "failed", "absent"]);

async function waitForProjection() {
  const url = apiUrl(state.dataset.id, "/projection");
  const problem = (err) => showStatus(`Could not read the projection status: ${escapeHtml(err.message)}`, { error: true });
  let status;
  try {
    status = await poll(() => getJSON(url), {
      each: showProgress, every: 600, until: (s) => FINAL.has(s.status), onError: problem });
  } catch (err) {
    problem(err);
    return;
  }
  if (status.status === "done") { bounds = status.bounds || null; return embed(); }
  if (status.status === "failed") {
    showStatus(`The projection failed: ${escapeHtml(status.error || "unknown error")}`, { error: true, retry: true });
    return;
  }
  if (status.status === "absent") {
    showStatus("This dataset has not been projected yet.", { retry: true, retryLabel: "Project now" });
  }
}

/** "Projecting 50,000 episodes on GPU: H100 · knn 60%", and a progress bar. */
function showProgress(status) {
  if (FINAL.has(status.status)) return status;
  const device = state.health ? deviceName(state.health.backend) : "";
  const pct = Math.round((status.progress || 0) * 100);
  const stage = status.status === "queued" ? "queued" : `${status.stage || "working"} ${pct}%`;
  showStatus(`Projecting ${fmt(state.dataset.n_episodes)} episodes${device ? " on " + escapeHtml(device) : ""} · ${escapeHtml(stage)}
    <small>${status.elapsed_s ? status.elapsed_s.toFixed(1) + " s" : ""}</small>`, { progress: status.progress || 0 });
  return status;
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
  waitForProjection();
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
  $("map-status").hidden = true;
  const root = $("map-root");
  root.replaceChildren();
  await window.Bokeh.embed.embed_item(answer.doc, root);
  if (!state.dataset || state.dataset.id !== id) return;
  const doc = window.Bokeh.documents[window.Bokeh.documents.length - 1];
  const find = (name) => doc.get_model_by_name(name);
  $("map-controls").hidden = false;
  $("map-hint").hidden = false;
  frameInset = null;
  lastFrame = null;
  update({ map: { plot: find("map"), tiles: find("tiles"), samples: find("sample"),
                  similar: find("similar"), outline: find("outline"), selection: find("selection"),
                  hovered: find("hovered"), xRange: find("x_range"), yRange: find("y_range"),
                  token: answer.tile_token } });
  requestAnimationFrame(() => requestAnimationFrame(relayout)); // once Bokeh has laid out
}

/** The frame (where episodes are drawn) in page pixels, from #map-root's box: the frame's
 *  offsets are read from Bokeh once, so a resize can be answered before Bokeh re-lays out. */
function frameBox() {
  const root = $("map-root").getBoundingClientRect();
  if (!frameInset) {
    const view = window.Bokeh.index && window.Bokeh.index.get(state.map.plot);
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
  if (!state.map || !bounds || !frame) return;
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
  if (!state.map || !frame || !lastFrame) return;
  const { xRange: x, yRange: y } = state.map;
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
  state.map.xRange.setv({ start: x0, end: x1 });
  state.map.yRange.setv({ start: y0, end: y1 });
  document.body.dataset.mapFits = String(Number(document.body.dataset.mapFits || 0) + 1);
}

/** The map area changed size (a panel, the drawer, the window) or the legend did: refit
 *  a fitted map, keep a view the user chose. */
function relayout() {
  if (!state.map) return;
  if (state.view && lastFrame) keepView();
  else if (state.view) lastFrame = frameBox();
  else fitView();
}

/** Zoom around the centre by `factor` (< 1 zooms in). */
export function zoom(factor) {
  if (!state.map) return;
  for (const r of [state.map.xRange, state.map.yRange]) {
    const mid = (r.start + r.end) / 2;
    const half = ((r.end - r.start) / 2) * factor;
    r.setv({ start: mid - half, end: mid + half });
  }
  const { xRange: x, yRange: y } = state.map; // Bokeh reports only tool-made range changes
  update({ view: [x.start, y.start, x.end, y.end] });
}

function pixelSize() {
  const view = window.Bokeh.index && window.Bokeh.index.get(state.map.plot);
  const width = (view && view.frame && view.frame.bbox.width) || $("map-root").clientWidth || 1;
  return (state.map.xRange.end - state.map.xRange.start) / width;
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
  onHover(x, y) { if (state.map) hoverAt(x, y, pixelSize()); },
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
  on("dataset", openMap);
  let frame = 0;
  const observer = new ResizeObserver(() => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(relayout);
  });
  observer.observe($("map-root"));
  observer.observe($("map-controls"));
  on("count", (s) => { $("no-match").hidden = !(s.count && s.count.count === 0); });
}
