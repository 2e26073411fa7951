// The sample panel: method, n, seed, stratify-by and allocation; "Generate sample" posts the
// current filter with them; the result shows coverage, per-stratum counts and exports, and
// the sample is drawn on the map.

import { apiUrl, el, fmt, postJSON } from "./api.js";
import { filterConditions, on, state, update } from "./state.js";

const $ = (id) => document.getElementById(id);

/** The fields a sample can be stratified by: categories and bools, then numbers (by their
 * quantile bins). Keeps the current choice when it is still there. */
function listStrataFields() {
  const select = $("sample-stratify");
  const chosen = select.value;
  const fields = state.fields;
  const values = fields.filter((f) => f.kind === "category" || f.kind === "bool");
  const numbers = fields.filter((f) => f.kind === "int" || f.kind === "float");
  select.replaceChildren(...values.map((f) => el("option", { value: f.name }, f.name)),
    ...numbers.map((f) => el("option", { value: f.name }, `${f.name} (quantiles)`)));
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
  return values.length + numbers.length;
}

/** Set up the form for the open dataset. */
function buildSampling() {
  const strata = { length: listStrataFields() };
  const metadataOnly = state.dataset.mode === "metadata-only";
  const kmeans = $("sample-method").querySelector('option[value="kmeans"]');
  kmeans.disabled = metadataOnly;
  if (metadataOnly && $("sample-method").value === "kmeans") $("sample-method").value = strata.length ? "stratified" : "random";
  const stratified = $("sample-method").querySelector('option[value="stratified"]');
  stratified.disabled = !strata.length;
  if (!strata.length && $("sample-method").value === "stratified") $("sample-method").value = "random";
  showNote(metadataOnly ? "K-means needs embeddings; this dataset is metadata-only." : "");
  methodChanged();
  showResult(null);
}

const DEFAULT_N = 100;

/** n never asks for more episodes than the filter matches: the default follows the match
 *  count down (60 episodes: n = 60), and a larger n typed in is refused before it is sent. */
function fitN({ count }) {
  if (!count) return;
  const input = $("sample-n");
  input.max = String(Math.max(1, count.count));
  if (!input.dataset.edited) input.value = String(Math.max(1, Math.min(DEFAULT_N, count.count)));
}

function methodChanged() {
  const method = $("sample-method").value;
  const strata = method === "stratified" || (method === "kmeans" && $("sample-within").checked);
  $("within-row").hidden = method !== "kmeans";
  $("stratify-row").hidden = !strata;
  $("allocation-row").hidden = !strata;
}

function showNote(text) {
  $("sample-note").hidden = !text;
  $("sample-note").textContent = text;
}

function showError(message) {
  $("sample-error").hidden = !message;
  $("sample-error").textContent = message || "";
}

async function generate(event) {
  event.preventDefault();
  const method = $("sample-method").value;
  const body = {
    method,
    n: Number($("sample-n").value),
    seed: Number($("sample-seed").value),
    filter: filterConditions(),
  };
  if (method === "stratified" || (method === "kmeans" && $("sample-within").checked)) {
    body.stratify_by = $("sample-stratify").value;
    body.allocation = $("sample-allocation").value;
  }
  const button = $("sample-generate");
  button.disabled = true;
  button.textContent = method === "kmeans" ? "Clustering…" : "Sampling…";
  showError("");
  try {
    const manifest = await postJSON(apiUrl(state.dataset.id, "/samples"), body);
    update({ sample: manifest });
  } catch (err) {
    showError(err.message);
  } finally {
    button.disabled = false;
    button.textContent = "Generate sample";
  }
}

function showResult(manifest) {
  $("sample-result").hidden = !manifest;
  if (!manifest) return;
  const id = manifest.sample_id || manifest.id;
  const names = { kmeans: "K-means diversity", stratified: "stratified", random: "random" };
  $("sample-summary").replaceChildren(el("b", {}, fmt(manifest.n)), ` episodes · ${names[manifest.method]}`,
    el("br"), el("span", { class: "note" }, `from ${fmt(manifest.matched)} matching · seed ${manifest.seed} · id ${id}`));
  showCoverage(manifest.stats && manifest.stats.coverage, manifest.n >= manifest.matched);
  showStrata(manifest.stats);
  for (const fmtName of ["txt", "csv", "json", "lerobot"]) {
    $(`export-${fmtName}`).href = apiUrl(state.dataset.id, `/samples/${encodeURIComponent(id)}/export`, { format: fmtName });
  }
  $("export-lerobot-drop").href = apiUrl(state.dataset.id, `/samples/${encodeURIComponent(id)}/export`, { format: "lerobot", complement: "true" });
}

function showCoverage(coverage, everyEpisode) {
  const box = $("sample-coverage");
  box.hidden = !coverage;
  if (!coverage) return;
  if (everyEpisode) {  // nothing left out: any sample of this size covers as well
    box.classList.remove("worse");
    box.textContent = "every matching episode: coverage is complete";
    return;
  }
  const gain = coverage.improvement_mean_pct;
  box.classList.toggle("worse", gain < 0);
  box.textContent = `coverage ${gain >= 0 ? "+" : ""}${gain.toFixed(0)}% vs random ` +
    `(mean distance to the sample ${coverage.mean.toPrecision(3)} vs ${coverage.random_mean.toPrecision(3)})`;
}

function showStrata(stats) {
  const table = $("sample-strata");
  const counts = stats && stats.per_stratum;
  if (!counts) { table.replaceChildren(); return; }
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  const top = Math.max(1, ...entries.map(([, n]) => n));
  table.replaceChildren(
    el("caption", { class: "note", style: "text-align:left" }, `per ${stats.per_stratum_field}`),
    ...entries.slice(0, 12).map(([label, n]) => el("tr", {},
      el("td", {}, label), el("td", { class: "n" }, fmt(n)),
      el("td", { class: "barcell" }, el("div", { class: "bar", style: `width:${(100 * n) / top}%` })),
      gainCell(stats.coverage_per_stratum && stats.coverage_per_stratum[label]))));
}

/** A stratum's coverage against random, when a K-means sample was drawn within strata. */
function gainCell(coverage) {
  if (!coverage) return null;
  const gain = coverage.improvement_mean_pct;
  return el("td", { class: "n", title: "coverage vs a random sample of this stratum" },
    `${gain >= 0 ? "+" : ""}${gain.toFixed(0)}%`);
}

export function initSampling() {
  $("sample-form").addEventListener("submit", generate);
  $("sample-method").addEventListener("change", methodChanged);
  $("sample-within").addEventListener("change", methodChanged);
  $("sample-clear").addEventListener("click", () => update({ sample: null }));
  on("dataset", buildSampling);
  on("fields", (s) => { if (s.dataset) listStrataFields(); });
  on("sample", (s) => showResult(s.sample));
  on("count", fitN);
  $("sample-n").addEventListener("input", (e) => { e.target.dataset.edited = "1"; });
}
