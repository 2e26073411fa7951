// What is drawn over the tiles, each from its share of the store: the map selection, the
// sample's episodes (those the filter matches), the "find similar" answer's rings, a hovered
// group's outline, and the ring around the episode in the card.

import { apiUrl, debounce, filterParam, getJSON } from "./api.js";
import { filterConditions, on, state } from "./state.js";

function drawSelection() {
  const map = state.map;
  if (!map) return;
  const p = state.polygon;
  map.selection.data = p ? { xs: [p.map((q) => q[0])], ys: [p.map((q) => q[1])] } : { xs: [], ys: [] };
  if (!p) map.samples.selected.indices = [];
}

/** The sample's episodes (Bokeh's HoverTool names them): those the current filter matches,
 *  so the markers follow the filter as the tiles do. */
let sampleSeq = 0;
async function drawSample() {
  const map = state.map;
  if (!map) return;
  const seq = ++sampleSeq;
  const manifest = state.sample;
  if (!manifest) { map.samples.data = { x: [], y: [], episode_id: [], stratum: [] }; return; }
  const field = manifest.params && manifest.params.stratify_by;
  const pts = await getJSON(apiUrl(state.dataset.id, "/points", {
    sample_id: manifest.sample_id || manifest.id, fields: field || "",
    filter: filterParam(filterConditions()) }));
  if (seq !== sampleSeq || state.map !== map) return; // a newer filter or sample is on its way
  const strata = field ? pts.fields[field].map(String) : pts.x.map(() => manifest.method);
  map.samples.data = { x: pts.x, y: pts.y, episode_id: pts.episode_id, stratum: strata };
}

/** Ring the episode the card shows (the one under the cursor, or a clicked tile's). */
function drawHovered() {
  const map = state.map;
  if (!map) return;
  const ep = state.hovered;
  map.hovered.data = ep && Number.isFinite(ep.x)
    ? { x: [ep.x], y: [ep.y], episode_id: [ep.episode_id] } : { x: [], y: [], episode_id: [] };
}

/** Ring the "find similar" answer: the episode and its neighbours. */
async function drawSimilar() {
  const map = state.map;
  if (!map) return;
  const a = state.similar;
  if (!a) { map.similar.data = { x: [], y: [], episode_id: [] }; return; }
  const ids = [a.episode_id, ...a.neighbors.map((n) => n.episode_id)];
  const filter = JSON.stringify([{ field: "episode_id", op: "in", value: ids }]);
  const pts = await getJSON(apiUrl(state.dataset.id, "/points", { filter }));
  map.similar.data = { x: pts.x, y: pts.y, episode_id: pts.episode_id };
}

/** Outline the episodes of a group hovered in the groups table; null clears. */
let outlineSeq = 0;
async function drawOutline() {
  const map = state.map;
  if (!map) return;
  const seq = ++outlineSeq;
  const conditions = state.outline;
  if (!conditions) { map.outline.data = { x: [], y: [] }; return; }
  const pts = await getJSON(apiUrl(state.dataset.id, "/points", { filter: JSON.stringify(conditions), limit: 5000 }));
  if (seq === outlineSeq) map.outline.data = { x: pts.x, y: pts.y };
}

const quietly = (draw) => () => draw().catch(() => {});

export function initOverlays() {
  on(["polygon", "map"], drawSelection);
  on(["hovered", "map"], drawHovered);
  on(["sample", "map"], quietly(drawSample));
  const follow = debounce(quietly(drawSample), 150);
  on(["conditions", "pinned", "polygon"], () => { if (state.sample) follow(); });
  on(["similar", "map"], quietly(drawSimilar));
  on("outline", quietly(drawOutline));
}
