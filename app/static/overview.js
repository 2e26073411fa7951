// Metadata-only datasets have no map: the map area shows how their episodes are distributed
// instead: a bar chart per category field, split by success where a success field exists, and
// a histogram of episode_length. Every chart follows the filters.

import { apiUrl, debounce, el, fmt, latest, postJSON } from "./api.js";
import { filterConditions, on, state } from "./state.js";

const $ = (id) => document.getElementById(id);
const SHOWN = 10;

function fields(kind) {
  return state.fields.filter((f) => kind.includes(f.kind));
}

const showOverview = debounce(async () => {
  const box = $("overview");
  if (!state.dataset || state.dataset.mode !== "metadata-only") { box.hidden = true; return; }
  box.hidden = false;
  const charts = await latest("overview", (signal) => drawCharts(signal));
  const note = el("section", { class: "chart", "data-chart": "note" },
    el("h4", {}, "No map for this dataset"),
    el("p", { class: "note" }, "It is metadata-only: the file has no embeddings, and the map is drawn from " +
      "embeddings. Filters, stratified and random sampling, and export all work; here is how its " +
      `${fmt(state.count ? state.count.count : state.dataset.n_episodes)} matching episodes are spread.`));
  box.replaceChildren(note, ...charts);
}, 150);

/** A bar chart per category field (split by success where there is one), then the
 *  episode_length histogram, all of the filter's matches. */
async function drawCharts(signal) {
  const url = apiUrl(state.dataset.id, "/summary");
  const filter = filterConditions();
  const success = state.fields.some((f) => f.name === "success" && f.kind === "bool");
  const cats = fields(["category", "bool"]).filter((f) => f.name !== "success" || !success);
  const charts = await Promise.all(cats.map(async (f) => {
    const s = await postJSON(url, { group_by: f.name, filter }, { signal });
    return barChart(f.name, s, success);
  }));
  const length = state.fields.find((f) => f.name === "episode_length");
  if (length && (length.kind === "int" || length.kind === "float")) {
    const s = await postJSON(url, { group_by: "episode_length", bins: 20, filter }, { signal });
    charts.push(histogram(s));
  }
  return charts;
}

function barChart(name, summary, success) {
  const top = Math.max(1, ...summary.groups.map((g) => g.count));
  const rows = summary.groups.slice(0, SHOWN).map((g) => {
    const width = (100 * g.count) / top;
    const bar = success && g.success_rate !== undefined
      ? el("div", { class: "bar" },
          el("div", { class: "ok", style: `width:${width * g.success_rate}%` }),
          el("div", { class: "ko", style: `width:${width * (1 - g.success_rate)}%` }))
      : el("div", { class: "bar" }, el("div", { class: "all", style: `width:${width}%` }));
    const title = success && g.success_rate !== undefined ? `${(100 * g.success_rate).toFixed(0)}% success` : "";
    return el("div", { class: "bar-row", title }, el("span", { class: "label", title: g.value }, g.value), bar,
      el("span", { class: "n" }, fmt(g.count)));
  });
  const more = summary.groups.length > SHOWN ? el("p", { class: "note" }, `+${summary.groups.length - SHOWN} more values`) : null;
  const key = success ? el("p", { class: "key" }, "episodes per value:",
    el("span", { style: "background:#2f9e55" }), "success", el("span", { style: "background:#d8504f" }), "failure") : null;
  return el("section", { class: "chart", "data-chart": name }, el("h4", {}, name), key, ...rows, more);
}

function histogram(summary) {
  const order = [...summary.groups].sort((a, b) => parseFloat(a.value.slice(1)) - parseFloat(b.value.slice(1)));
  const top = Math.max(1, ...order.map((g) => g.count));
  const bars = order.map((g) => el("div", { style: `height:${(100 * g.count) / top}%`, title: `${g.value}: ${fmt(g.count)}` }));
  const first = order[0] ? order[0].value.slice(1).split(",")[0] : "";
  const last = order.length ? order[order.length - 1].value.split(", ")[1].slice(0, -1) : "";
  return el("section", { class: "chart", "data-chart": "episode_length" },
    el("h4", {}, `episode_length · ${fmt(summary.matched)} episodes`),
    el("div", { class: "hist" }, ...bars), el("div", { class: "axis" }, el("span", {}, first), el("span", {}, last)));
}

export function initOverview() {
  on(["dataset", "conditions", "pinned"], (s) => {
    if (s.dataset && s.dataset.mode === "metadata-only") showOverview(); // in place of the map
    else $("overview").hidden = true;
  });
}
