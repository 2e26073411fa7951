// What is drawn over the tiles, each from its share of the store: the map selection, the
// sample's episodes (those the filter matches), the "find similar" answer's rings, a hovered
// group's outline, and the ring around the episode in the card.

import { apiUrl, cancel, debounce, filterParam, getJSON, latest } from "./api.js";
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
async function drawSample() {
  const map = state.map;
  if (!map) return;
  const manifest = state.sample;
  if (!manifest) {
    cancel("sample-points");
    map.samples.data = { x: [], y: [], episode_id: [], stratum: [] };
    return;
  }
  const field = manifest.params && manifest.params.stratify_by;
  const url = apiUrl(state.dataset.id, "/points", {
    sample_id: manifest.sample_id || manifest.id, fields: field || "", filter: filterParam(filterConditions()) });
  const pts = await latest("sample-points", (signal) => getJSON(url, { signal }));
  if (state.map !== map) return; // the map was drawn again meanwhile
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
  if (!a) {
    cancel("similar-rings");
    map.similar.data = { x: [], y: [], episode_id: [] };
    return;
  }
  const ids = [a.episode_id, ...a.neighbors.map((n) => n.episode_id)];
  const filter = JSON.stringify([{ field: "episode_id", op: "in", value: ids }]);
  const pts = await latest("similar-rings", (signal) => getJSON(apiUrl(state.dataset.id, "/points", { filter }), { signal }));
  if (state.map !== map) return;
  map.similar.data = { x: pts.x, y: pts.y, episode_id: pts.episode_id };
}

/** Outline the episodes of a group hovered in the groups table; null clears. */
async function drawOutline() {
  const map = state.map;
  if (!map) return;
  const conditions = state.outline;
  if (!conditions) {
    cancel("outline");
    map.outline.data = { x: [], y: [] };
    return;
  }
  const url = apiUrl(state.dataset.id, "/points", { filter: JSON.stringify(conditions), limit: 5000 });
  const pts = await latest("outline", (signal) => getJSON(url, { signal }));
  if (state.map === map) map.outline.data = { x: pts.x, y: pts.y };
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
