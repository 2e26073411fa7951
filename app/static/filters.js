// The filter panel: one section per field (checkboxes with counts, a number range, or a
// text match), the map selection chip, and the live "N of M episodes match" line. A value's
// count follows the other filters (cross-filter): it is the count among the episodes that
// every condition on the other fields matches (POST .../facets).

import { apiUrl, debounce, el, fmt, fmtShort, latest, postJSON } from "./api.js";
import { filterConditions, on, pin, state, update } from "./state.js";

const SHOWN_VALUES = 8;   // values listed before "show all"
const OPEN_FIELDS = 6;    // fields shown open; the rest start folded (the search finds them)
const fieldsBox = () => document.getElementById("filter-fields");
const controls = new Map(); // field name -> {read(): condition|null, reset(), section}
const built = { fields: null, conditions: null }; // what the panel shows

/** Build the panel for the open dataset, restoring `state.conditions`. */
function buildFilters() {
  const box = fieldsBox();
  box.replaceChildren();
  controls.clear();
  built.fields = state.fields;
  built.conditions = state.conditions;
  for (const field of state.fields) {
    if (field.kind === "array") continue;
    const given = state.conditions.find((c) => c.field === field.name) || null;
    const control = makeControl(field, given);
    control.section.open = controls.size < OPEN_FIELDS || given !== null;
    controls.set(field.name, control);
    box.append(control.section);
  }
  if (!controls.size) box.append(el("p", { class: "note" }, "This dataset has no metadata fields."));
  markActive();
}

function makeControl(field, given) {
  const section = el("details", { class: "field", "data-field": field.name, open: true },
    el("summary", {}, el("span", { class: "field-name", title: field.name }, field.name),
       el("span", { class: "field-kind" }, field.kind)));
  const maker = field.values ? valuesControl : (field.kind === "int" || field.kind === "float")
    ? rangeControl : textControl;
  return { section, ...maker(field, given, section) };
}

function valuesControl(field, given, section) {
  const entries = Object.entries(field.values);
  const chosen = given ? chosenValues(given, entries.map(([v]) => v)) : null;
  const list = el("div", { class: "values" });
  const counts = new Map(); // value -> its count's <span>
  const boxes = entries.map(([value, n], i) => {
    const input = el("input", { type: "checkbox", value, onchange: changed });
    input.checked = chosen ? chosen.has(value) : true;
    const count = el("span", { class: "count" }, fmtShort(n));
    counts.set(value, count);
    const row = el("label", { class: "value", hidden: i >= SHOWN_VALUES && !input.checked ? true : null },
      input, el("span", { class: "label", title: value }, value), count);
    list.append(row);
    return input;
  });
  section.append(list);
  const actions = el("div", { class: "field-actions" },
    el("button", { type: "button", class: "link", onclick: () => setAll(true) }, "all"),
    el("button", { type: "button", class: "link", onclick: () => setAll(false) }, "none"));
  if (entries.length > SHOWN_VALUES) {
    actions.append(el("button", { type: "button", class: "link", onclick: (e) => {
      list.querySelectorAll(".value[hidden]").forEach((r) => { r.hidden = false; });
      e.target.remove();
    } }, `show all ${fmt(entries.length)}`));
  }
  section.append(actions);
  function setAll(on) { boxes.forEach((b) => { b.checked = on; }); changed(); }
  return {
    read() {
      const picked = boxes.filter((b) => b.checked).map((b) => b.value);
      if (picked.length === boxes.length) return null;
      return { field: field.name, op: "in", value: picked };
    },
    reset() { boxes.forEach((b) => { b.checked = true; }); },
    showCounts(facet) {
      for (const [value, span] of counts) {
        const n = facet[value] ?? 0;
        span.textContent = fmtShort(n);
        span.title = `${fmt(n)} among the episodes the other filters match`;
        span.parentElement.classList.toggle("zero", n === 0);
      }
    },
  };
}

function chosenValues(cond, all) {
  const values = [].concat(cond.value).map(String);
  if (cond.op === "in" || cond.op === "eq") return new Set(values);
  if (cond.op === "not_in" || cond.op === "ne") return new Set(all.filter((v) => !values.includes(v)));
  return null;
}

function rangeControl(field, given, section) {
  const step = field.kind === "int" ? "1" : "any";
  const lo = el("input", { type: "number", step, placeholder: fmtNum(field.min), "aria-label": `${field.name} from` });
  const hi = el("input", { type: "number", step, placeholder: fmtNum(field.max), "aria-label": `${field.name} to` });
  if (given && given.op === "between") { lo.value = given.value[0]; hi.value = given.value[1]; }
  if (given && (given.op === "ge" || given.op === "gt")) lo.value = given.value;
  if (given && (given.op === "le" || given.op === "lt")) hi.value = given.value;
  const slow = debounce(changed, 250);
  lo.addEventListener("input", slow);
  hi.addEventListener("input", slow);
  section.append(el("div", { class: "range" }, lo, el("span", { class: "dash" }, "–"), hi));
  return {
    read() {
      const a = lo.value === "" ? null : Number(lo.value);
      const b = hi.value === "" ? null : Number(hi.value);
      const bad = a !== null && b !== null && a > b;
      lo.classList.toggle("invalid", bad);
      hi.classList.toggle("invalid", bad);
      if (bad || (a === null && b === null)) return null;
      if (a === null) return { field: field.name, op: "le", value: b };
      if (b === null) return { field: field.name, op: "ge", value: a };
      return { field: field.name, op: "between", value: [a, b] };
    },
    reset() { lo.value = ""; hi.value = ""; },
  };
}

function textControl(field, given, section) {
  const input = el("input", { class: "text-filter", type: "text", placeholder: "equals…",
                              "aria-label": `${field.name} equals` });
  if (given && given.op === "eq") input.value = given.value;
  input.addEventListener("input", debounce(changed, 300));
  section.append(input);
  return {
    read() { return input.value.trim() ? { field: field.name, op: "eq", value: input.value.trim() } : null; },
    reset() { input.value = ""; },
  };
}

const fmtNum = (v) => (v === null || v === undefined ? "" : String(+Number(v).toPrecision(6)));

function changed() {
  const conditions = [];
  for (const c of controls.values()) {
    const cond = c.read();
    if (cond) conditions.push(cond);
  }
  built.conditions = conditions; // the panel shows them already
  update({ conditions });
  markActive();
}

/** New fields, or conditions set elsewhere (a groups-table row, a link): build the panel again. */
function follow(s) {
  if (s.dataset && (s.fields !== built.fields || s.conditions !== built.conditions)) buildFilters();
}

function markActive() {
  const active = new Set(state.conditions.map((c) => c.field));
  for (const [name, c] of controls) c.section.classList.toggle("active", active.has(name));
}

/** Clear every field condition, pinned condition and the map selection. */
function resetFilters() {
  for (const c of controls.values()) c.reset();
  built.conditions = [];
  update({ conditions: built.conditions, pinned: [], polygon: null });
  markActive();
}

/** Words for a pinned condition's chip. */
function describePinned(c) {
  if (c.field === "episode_id") {
    const n = [].concat(c.value).length;
    return `${c.op === "not_in" || c.op === "ne" ? "not " : ""}${fmt(n)} chosen episode${n === 1 ? "" : "s"}`;
  }
  if (c.field === "duplicates") return `one per near-duplicate group (≤ ${Number(c.value).toFixed(3)})`;
  if (c.field === "selection") return `${c.op === "not_in" ? "not in" : "in"} ${[].concat(c.value).join(", ")}`;
  return `${c.field} ${c.op}`;
}

function renderPinned() {
  const box = document.getElementById("pinned-chips");
  const shown = state.pinned.filter((c) => c.field !== "selection"); // the list shows those
  box.replaceChildren(...shown.map((c) => el("div", { class: "chip", "data-field": c.field },
    el("span", {}, describePinned(c)),
    el("button", { type: "button", class: "link", title: "Remove this condition",
                   onclick: () => pin(c.field, null) }, "remove"))));
}

/** Show only the fields whose name contains the search text. */
function searchFields(text) {
  const needle = text.trim().toLowerCase();
  for (const [name, c] of controls) {
    const match = needle === "" || name.toLowerCase().includes(needle);
    c.section.hidden = !match;
    if (match && needle !== "") c.section.open = true;
  }
}

const refreshCount = debounce(async () => {
  if (!state.dataset) return;
  const box = document.getElementById("match-count");
  const url = apiUrl(state.dataset.id, "/facets");
  const body = { filter: filterConditions() };
  try {
    const res = await latest("facets", (signal) => postJSON(url, body, { signal }));
    update({ count: { count: res.matched, total: res.total } });
    box.replaceChildren(el("b", { class: res.matched ? null : "zero" }, fmt(res.matched)),
      ` of ${fmt(res.total)} episodes match`);
    for (const [name, c] of controls) if (c.showCounts && res.fields[name]) c.showCounts(res.fields[name]);
  } catch (err) {
    box.replaceChildren(el("span", { class: "zero" }, err.message));
  }
}, 120);

/** Wire the panel's own controls once. */
export function initFilters() {
  document.getElementById("field-search").addEventListener("input", (e) => searchFields(e.target.value));
  document.getElementById("filters-reset").addEventListener("click", resetFilters);
  document.getElementById("no-match-reset").addEventListener("click", resetFilters);
  document.getElementById("selection-clear").addEventListener("click", () => update({ polygon: null }));
  // Until the new count arrives, hover look-ups wait: the new filter may match nothing.
  on(["fields", "conditions"], follow);
  on(["conditions", "pinned", "polygon", "dataset", "fields"], () => { state.count = null; refreshCount(); });
  on(["pinned", "dataset"], renderPinned);
  on("polygon", (s) => { document.getElementById("selection-chip").hidden = !s.polygon; });
}
