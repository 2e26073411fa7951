// The page's state and the URL that holds it: dataset, filter, colour and view.
// Anything that changes the state calls `update(...)`; listeners redraw what depends on it.

import { apiUrl, debounce, endScope, getJSON } from "./api.js";

export const state = {
  health: null,         // GET /api/health
  datasets: [],         // summaries
  dataset: null,        // the open dataset's summary (its fields apart)
  fields: [],           // the open dataset's fields: jobs add some (uniqueness, cluster)
  conditions: [],       // field conditions from the filter panel
  pinned: [],           // other conditions: a "similar" set, keep one per near-duplicate group
  polygon: null,        // [[x, y], ...] map selection, or null
  colorBy: "density",
  view: null,           // [x0, y0, x1, y1] of the map, or null
  count: null,          // {count, total} of the current filter
  sample: null,         // the last sample manifest
  similar: null,        // the last "find similar" answer
  selections: [],       // GET .../selections
  selectionsLoaded: false,
  similarity: null,     // the similarity job's status (GET .../similarity)
  hovered: null,        // {x, y, episode_id} of the episode the card shows, ringed on the map
  tab: null,            // the drawer's open tab ("similar", "duplicates", "groups"), or null
  outline: null,        // the conditions of a group outlined on the map (a hovered table row)
  map: null,            // the embedded map: its Bokeh models by name and `token`, else null
};

const listeners = new Map();

/** Run `fn(state)` whenever one of `keys` changes. */
export function on(keys, fn) {
  for (const k of [].concat(keys)) {
    if (!listeners.has(k)) listeners.set(k, []);
    listeners.get(k).push(fn);
  }
}

/** Set some keys and notify each listener once. */
export function update(changes) {
  if ("dataset" in changes && changes.dataset !== state.dataset) endScope(); // before anyone starts anew
  const called = new Set();
  Object.assign(state, changes);
  for (const k of Object.keys(changes)) {
    for (const fn of listeners.get(k) || []) {
      if (!called.has(fn)) { called.add(fn); fn(state); }
    }
  }
  if (["conditions", "pinned", "polygon", "colorBy", "view"].some((k) => k in changes)) writeUrl();
}

/** Conditions on pseudo-fields the filter panel shows as chips, not as field controls. */
export const PINNED_FIELDS = ["episode_id", "duplicates", "selection"];

/** Every condition the server should apply: fields, pinned ones, then the map selection. */
export function filterConditions() {
  const out = [...state.conditions, ...state.pinned];
  if (state.polygon) out.push({ field: "map", op: "within", value: state.polygon });
  return out;
}

/** Pin a condition (replacing one on the same pseudo-field), or unpin with `null`. */
export function pin(field, condition) {
  const others = state.pinned.filter((c) => c.field !== field);
  update({ pinned: condition ? [...others, condition] : others });
}

/** Open a dataset (a summary of GET /api/datasets/{id}): the URL's filter, colour and view,
 *  nothing of the last one's. Each module builds itself for it (`on("dataset", ...)`). */
export function openDataset({ fields, ...summary }) {
  update({ dataset: summary, fields, ...readUrl(), sample: null, similar: null, similarity: null,
           selections: [], selectionsLoaded: false, hovered: null, outline: null, map: null });
}

/** The URL's share of the state. */
function readUrl() {
  const q = new URLSearchParams(location.search);
  let conditions = [];
  let pinned = [];
  let polygon = null;
  try {
    const raw = JSON.parse(q.get("filter") || "[]");
    if (Array.isArray(raw)) {
      conditions = raw.filter((c) => c && c.field !== "map" && !PINNED_FIELDS.includes(c.field));
      pinned = raw.filter((c) => c && PINNED_FIELDS.includes(c.field));
      const map = raw.find((c) => c && c.field === "map" && c.op === "within");
      polygon = map ? map.value : null;
    }
  } catch { /* a hand-edited URL: start without a filter */ }
  const view = (q.get("view") || "").split(",").map(Number);
  return {
    conditions,
    pinned,
    polygon,
    colorBy: q.get("color") || "density",
    view: view.length === 4 && view.every(Number.isFinite) ? view : null,
  };
}

const writeUrl = debounce(() => {
  if (!state.dataset) return;
  const q = new URLSearchParams();
  const conditions = filterConditions();
  if (conditions.length) q.set("filter", JSON.stringify(conditions));
  if (state.colorBy && state.colorBy !== "density") q.set("color", state.colorBy);
  if (state.view) q.set("view", state.view.map((v) => +v.toPrecision(6)).join(","));
  const qs = q.toString();
  const url = `/datasets/${encodeURIComponent(state.dataset.id)}${qs ? "?" + qs : ""}`;
  if (url !== location.pathname + location.search) history.replaceState(null, "", url);
}, 250);

/** A job added fields (uniqueness, duplicate_group, cluster): read dataset `id`'s fields again
 *  (whatever lists fields follows `fields`). False when another dataset was opened meanwhile. */
export async function refreshFields(id) {
  const summary = await getJSON(apiUrl(id));
  if (!state.dataset || state.dataset.id !== id) return false;
  update({ fields: summary.fields });
  return true;
}
