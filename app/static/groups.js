// The "Groups" tab: the matching episodes split by a field (or by K-means clusters) in a
// sortable table: count, success rate, episode length, top values. A row filters the map to
// its group on click and is outlined on the map on hover. K-means over the embeddings makes a
// `cluster` field.

import { apiUrl, debounce, el, fmt, getJSON, latest, poll, postJSON } from "./api.js";
import { filterConditions, on, refreshFields, state, update } from "./state.js";

const $ = (id) => document.getElementById(id);
let sortKey = "count";
let ascending = false;
let last = null; // the last summary shown
let builtFor = null; // the dataset the tab was built for: a rebuild for new fields keeps its state

/** Fields a table can be split by: categories and bools, then numbers (quantile bins). */
function groupable() {
  const f = state.fields;
  return [...f.filter((x) => x.kind === "category" || x.kind === "bool"),
          ...f.filter((x) => x.kind === "int" || x.kind === "float")];
}

function buildGroups() {
  const select = $("group-by");
  const chosen = select.value;
  select.replaceChildren(...groupable().map((f) => el("option", { value: f.name },
    f.kind === "int" || f.kind === "float" ? `${f.name} (quantiles)` : f.name)));
  const names = [...select.options].map((o) => o.value);
  select.value = names.includes(chosen) ? chosen : (names.includes("task") ? "task" : names[0] || "");
  const mapless = state.dataset.mode === "metadata-only";
  $("clusters-box").hidden = mapless;
  $("groups-note").textContent = mapless ? "click a row to filter to it"
    : "click a row to filter to it · hover to outline it on the map";
  if (builtFor !== state.dataset.id) $("clusters-state").textContent = ""; // another dataset
  builtFor = state.dataset.id;
  refreshGroups();
}

const refreshGroups = debounce(async () => {
  if (!state.dataset || state.tab !== "groups" || !$("group-by").value) return;
  const url = apiUrl(state.dataset.id, "/summary");
  const body = { group_by: $("group-by").value, filter: filterConditions() };
  try {
    last = await latest("group-summary", (signal) => postJSON(url, body, { signal }));
  } catch (err) {
    $("group-table").replaceChildren(el("caption", { class: "error" }, err.message));
    return;
  }
  render();
}, 120);

const COLUMNS = [
  ["value", "group", (g) => g.value],
  ["count", "episodes", (g) => g.count],
  ["success_rate", "success", (g) => g.success_rate],
  ["length", "length (median)", (g) => g.episode_length ? g.episode_length.median : null],
  ["top", "top values", () => null],
];

function render() {
  const table = $("group-table");
  if (!last) return;
  const has = { success_rate: last.groups.some((g) => g.success_rate !== undefined),
                length: last.groups.some((g) => g.episode_length) };
  const columns = COLUMNS.filter(([key]) => has[key] !== false);
  const getter = (columns.find(([key]) => key === sortKey) || COLUMNS[1])[2];
  const rows = [...last.groups].sort((a, b) => {
    const x = getter(a);
    const y = getter(b);
    const cmp = typeof x === "string" ? x.localeCompare(y) : (x ?? -1) - (y ?? -1);
    return ascending ? cmp : -cmp;
  });
  const head = el("tr", {}, ...columns.map(([key, label]) => el("th", {
    class: key === sortKey ? `sorted${ascending ? " asc" : ""}` : null,
    onclick: () => { if (key === "top") return; ascending = key === sortKey ? !ascending : key === "value"; sortKey = key; render(); },
  }, label)));
  table.replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows.map((g) => row(g, columns))));
}

function row(g, columns) {
  const cells = columns.map(([key]) => {
    if (key === "value") return el("td", {}, el("b", {}, g.value));
    if (key === "count") return el("td", {}, fmt(g.count), el("span", { class: "note" }, ` ${(100 * g.count / last.matched).toFixed(1)}%`));
    if (key === "success_rate") {
      return el("td", {}, el("span", { class: "rate", style: `width:${Math.round(50 * g.success_rate)}px` }),
        `${(100 * g.success_rate).toFixed(0)}%`);
    }
    if (key === "length") return el("td", {}, g.episode_length && g.episode_length.median !== null ? String(+g.episode_length.median.toFixed(1)) : "–");
    const tops = Object.entries(g.top).slice(0, 2).map(([field, values]) =>
      `${field}: ${values.slice(0, 3).map(([v, n]) => `${v} ${fmt(n)}`).join(", ")}`);
    return el("td", { class: "top", title: tops.join(" · ") }, tops.join(" · "));
  });
  return el("tr", {
    class: "row", "data-value": g.value,
    onclick: () => filterTo(g.value),
    onmouseenter: () => update({ outline: [...filterConditions(), condition(g.value)] }),
    onmouseleave: () => update({ outline: null }),
  }, ...cells);
}

/** The filter condition that matches one group of the table. */
function condition(value) {
  const field = state.fields.find((f) => f.name === $("group-by").value);
  if (field.kind === "bool") return { field: field.name, op: "eq", value: value === "true" };
  if (field.kind === "int" || field.kind === "float") {
    const m = value.match(/^\[([^,]+), ([^)\]]+)([)\]])$/);
    if (m) {
      const lo = Number(m[1]);
      const hi = Number(m[2]);
      if (m[3] === "]") return { field: field.name, op: "between", value: [lo, hi] };
      return { field: field.name, op: "between", value: [lo, field.kind === "int" ? hi - 1 : hi - 1e-9 * Math.abs(hi || 1)] };
    }
  }
  return { field: field.name, op: "in", value: [value] };
}

function filterTo(value) {
  const cond = condition(value);
  const conditions = state.conditions.filter((c) => c.field !== cond.field);
  update({ conditions: [...conditions, cond], outline: null });
}

const finished = (status) => status.status === "done" || status.status === "failed";

/** K-means over the embeddings: the job's progress, then its `cluster` field, grouped below.
 *  Only the newest run is followed. */
async function runClusters() {
  const id = state.dataset.id;
  const k = Number($("clusters-k").value);
  const box = $("clusters-state");
  const show = (status) => {
    if (!finished(status)) box.textContent = `clustering… ${Math.round(100 * status.progress)}%`;
    return status;
  };
  let status;
  try {
    status = await latest("clusters", async (signal) => {
      const started = show(await postJSON(apiUrl(id, "/clusters"), { k }, { signal }));
      if (finished(started)) return started;
      return poll(() => getJSON(apiUrl(id, "/clusters"), { signal }), {
        each: show, every: 600, until: finished, signal, onError: (err) => { box.textContent = err.message; } });
    });
  } catch (err) {
    box.textContent = err.message;
    return;
  }
  if (status.status === "failed") { box.textContent = status.error; return; }
  box.textContent = `${status.params.k} clusters: the “cluster” field, grouped below`;
  if (!(await refreshFields(id))) return;
  $("group-by").value = "cluster";
  refreshGroups();
}

export function initGroups() {
  $("group-by").addEventListener("change", refreshGroups);
  $("clusters-run").addEventListener("click", runClusters);
  on(["conditions", "pinned", "polygon"], () => refreshGroups());
  on("tab", (s) => { if (s.tab === "groups") refreshGroups(); });
  on(["dataset", "fields"], buildGroups);
}
