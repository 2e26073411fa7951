// What the map is coloured by: the colour-by picker (density, category and number fields,
// saved selections), the tile URL that carries colour and filter, and the legend that
// matches the tiles.

import { apiUrl, debounce, el, filterParam, fmt, getJSON, latest } from "./api.js";
import { filterConditions, on, state, update } from "./state.js";

const $ = (id) => document.getElementById(id);

/** The tile URL carries colour and filter, so a change redraws only what it must. */
function refreshTiles() {
  const map = state.map;
  if (!map) return;
  const query = { color_by: state.colorBy === "density" ? "" : state.colorBy,
                  filter: filterParam(filterConditions()), v: map.token };
  const base = apiUrl(state.dataset.id, "/tiles/{Z}/{X}/{Y}.png", query)
    .replace(/%7B/g, "{").replace(/%7D/g, "}");
  if (map.tiles.url !== base) map.tiles.url = base;
}

/** The picker shows the colouring, however it was chosen (◐ beside a selection, a link). */
function showColorChoice() {
  const select = $("color-by");
  if ([...select.options].some((o) => o.value === state.colorBy)) select.value = state.colorBy;
}

/** Fill the colour-by picker: density, then category/bool fields, then numbers, then the
 *  saved selections. */
function buildColorPicker() {
  if (!state.dataset) return;
  const select = $("color-by");
  select.replaceChildren(el("option", { value: "density" }, "density"));
  const add = (label, kinds) => {
    const group = el("optgroup", { label });
    for (const f of state.fields) if (kinds.includes(f.kind)) group.append(el("option", { value: f.name }, f.name));
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

const refreshLegend = debounce(async () => {
  if (!state.map) return;
  const url = apiUrl(state.dataset.id, "/legend", {
    color_by: state.colorBy === "density" ? "" : state.colorBy, filter: filterParam(filterConditions()) });
  try {
    renderLegend(await latest("legend", (signal) => getJSON(url, { signal })));
  } catch (err) {
    $("legend").replaceChildren(el("span", { class: "more" }, err.message));
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

export function initColors() {
  $("color-by").addEventListener("change", (e) => update({ colorBy: e.target.value }));
  // a new dataset, a job's new field, a selection saved or deleted: list it
  on(["dataset", "fields", "selections"], buildColorPicker);
  on("colorBy", showColorChoice);
  on(["colorBy", "conditions", "pinned", "polygon", "map"], () => { refreshTiles(); refreshLegend(); });
}
