// Named selections in the filter panel: save what the filters (and the map selection) match
// under a name; each saved one toggles between off, "in" and "not in" (a filter condition on
// the `selection` pseudo-field); colour the map by membership; delete.

import { apiUrl, csrfHeaders, el, fmt, getJSON, latest, postJSON } from "./api.js";
import { filterConditions, on, state, update } from "./state.js";

const $ = (id) => document.getElementById(id);
const STATES = [null, "in", "not_in"];

/** The toggles, read back from the pinned selection conditions. */
function toggles() {
  const out = new Map();
  for (const c of state.pinned) {
    if (c.field !== "selection") continue;
    for (const name of [].concat(c.value)) out.set(name, c.op);
  }
  return out;
}

function setToggles(map) {
  const ins = [...map].filter(([, op]) => op === "in").map(([n]) => n);
  const outs = [...map].filter(([, op]) => op === "not_in").map(([n]) => n);
  const others = state.pinned.filter((c) => c.field !== "selection");
  const pinned = [...others];
  if (ins.length) pinned.push({ field: "selection", op: "in", value: ins });
  if (outs.length) pinned.push({ field: "selection", op: "not_in", value: outs });
  update({ pinned });
}

/** Load the open dataset's selections. */
async function loadSelections() {
  if (!state.dataset) return;
  const url = apiUrl(state.dataset.id, "/selections");
  update({ selections: await latest("selections", (signal) => getJSON(url, { signal })), selectionsLoaded: true });
}

function render() {
  const states = toggles();
  const list = $("selection-list");
  if (!state.selections.length) {
    list.replaceChildren(el("p", { class: "note" }, "None yet: filter, or draw a box or lasso on the map, then save."));
    return;
  }
  list.replaceChildren(...state.selections.map((s) => {
    const op = states.get(s.name) || null;
    const button = el("button", {
      type: "button", class: `state ${op === "in" ? "in" : op === "not_in" ? "out" : ""}`,
      title: op === "in" ? "only these (click: exclude them)" : op === "not_in" ? "excluded (click: off)" : "off (click: only these)",
      "aria-label": `${s.name}: ${op || "off"}`,
      onclick: () => {
        const next = STATES[(STATES.indexOf(op) + 1) % STATES.length];
        const map = toggles();
        if (next) map.set(s.name, next); else map.delete(s.name);
        setToggles(map);
      },
    }, op === "in" ? "✓" : op === "not_in" ? "✕" : "");
    return el("div", { class: "sel-row", "data-selection": s.name }, button,
      el("span", { class: "name", title: describe(s) }, s.name),
      el("span", { class: "count" }, fmt(s.count)),
      el("button", { type: "button", class: "icon", title: "Colour the map by membership",
                     onclick: () => update({ colorBy: `selection:${s.name}` }) }, "◐"),
      downloads(s.name),
      el("button", { type: "button", class: "icon", title: "Delete this selection",
                     onclick: () => remove(s.name) }, "×"));
  }));
}

/** A small menu of the selection's exports. */
function downloads(name) {
  const link = (format) => el("a", { href: apiUrl(state.dataset.id, `/selections/${encodeURIComponent(name)}/export`, { format }),
                                     download: "", class: "link" }, format);
  return el("details", { class: "downloads" }, el("summary", { class: "icon", title: "Download" }, "⤓"),
    el("div", { class: "menu" }, link("txt"), link("csv"), link("json"), link("lerobot")));
}

function describe(s) {
  const src = s.source || {};
  if (src.kind === "op") return `${src.op} of ${src.of.join(", ")}`;
  if (src.kind === "filter") return `saved from a filter (${src.filter.length} conditions) on ${s.created_at}`;
  if (src.kind === "sample") return `sample ${src.sample_id}`;
  if (src.kind === "duplicates") return `keepers of near-duplicate groups (≤ ${src.threshold})`;
  return `a list of episode ids, ${s.created_at}`;
}

async function save(event) {
  event.preventDefault();
  const name = $("selection-name").value.trim();
  $("selection-error").hidden = true;
  try {
    await postJSON(apiUrl(state.dataset.id, "/selections"), { name, filter: filterConditions() });
  } catch (err) {
    $("selection-error").hidden = false;
    $("selection-error").textContent = err.message;
    return;
  }
  $("selection-name").value = "";
  $("selection-save").hidden = true;
  await loadSelections();
}

async function remove(name) {
  if (!window.confirm(`Delete the selection “${name}”?`)) return;
  const map = toggles();
  map.delete(name);
  setToggles(map);
  if (state.colorBy === `selection:${name}`) update({ colorBy: "density" });
  await fetch(apiUrl(state.dataset.id, `/selections/${encodeURIComponent(name)}`),
    { method: "DELETE", headers: csrfHeaders() });
  await loadSelections();
}

export function initSelections() {
  $("selection-save-open").addEventListener("click", () => {
    $("selection-save").hidden = !$("selection-save").hidden;
    if (!$("selection-save").hidden) $("selection-name").focus();
    else $("selection-error").hidden = true; // the error was about this form: it goes with it
  });
  $("selection-save").addEventListener("submit", save);
  on(["selections", "pinned"], render);
  on("dataset", () => loadSelections().catch(() => {})); // the colour picker lists them when they arrive
}
