// Boot: read the URL, load the dataset list, open one dataset, and wire the keyboard.

import { apiUrl, deviceName, el, fmt, getJSON } from "./api.js";
import { on, openDataset, update } from "./state.js";
import { initFilters } from "./filters.js";
import { initMap, zoom } from "./map.js";
import { initColors } from "./colors.js";
import { initOverlays } from "./overlays.js";
import { initPreview } from "./preview.js";
import { initSampling } from "./sampling.js";
import { initDrawer } from "./drawer.js";
import { initCuration } from "./curation.js";
import { initSelections } from "./selections.js";
import { initGroups } from "./groups.js";
import { initOverview } from "./overview.js";
import { initUpload } from "./upload.js";

const $ = (id) => document.getElementById(id);

async function boot() {
  // Each module builds itself when a dataset opens (`on("dataset", ...)`), in this order.
  initFilters();
  initMap();
  initColors();
  initOverlays();
  initPreview();
  initSampling();
  initDrawer();
  initCuration();
  initSelections();
  initGroups();
  initOverview();
  initUpload();
  initKeyboard();
  initPanels();
  on("dataset", showFacts);
  $("dataset-picker").addEventListener("change", (e) => {
    if (e.target.value) location.assign(`/datasets/${encodeURIComponent(e.target.value)}`);
  });
  const [health, datasets] = await Promise.all([getJSON("/api/health"), getJSON("/api/datasets")]);
  update({ health, datasets });
  const wanted = document.body.dataset.datasetId || (datasets.length ? datasets[datasets.length - 1].id : "");
  fillPicker(datasets, wanted);
  if (!wanted) return showNoDataset();
  let summary;
  try {
    summary = await getJSON(apiUrl(wanted));
  } catch (err) {
    return showNoDataset(err.message);
  }
  if (!document.body.dataset.datasetId) {
    history.replaceState(null, "", `/datasets/${encodeURIComponent(summary.id)}${location.search}`);
  }
  openDataset(summary);
}

function fillPicker(datasets, selected) {
  const picker = $("dataset-picker");
  picker.replaceChildren(...datasets.map((d) => el("option", { value: d.id }, d.name)));
  if (!datasets.length) picker.append(el("option", { value: "" }, "no datasets yet"));
  picker.value = selected;
}

function showNoDataset(problem) {
  $("filter-fields").replaceChildren(el("p", { class: "note" }, "Open or upload a dataset to filter it."));
  $("map-status").hidden = false;
  $("map-status-text").innerHTML = "";
  $("map-status-text").append(problem ? problem : "No dataset yet.",
    el("small", {}, "Upload an HDF5 episode file (or start the server with tessera serve --demo)."));
  $("map-retry").hidden = true;
  $("sample-generate").disabled = true;
}

function showFacts({ dataset, health }) {
  const dim = dataset.dim ? `${dataset.dim}-d` : "metadata-only";
  $("dataset-facts").textContent = `${fmt(dataset.n_episodes)} episodes · ${dim} · ${deviceName(health.backend)}`;
  document.title = `${dataset.name} · Tessera`;
  const picker = $("dataset-picker");  // whichever way a dataset opened, it shows as picked
  if ([...picker.options].some((o) => o.value === dataset.id)) picker.value = dataset.id;
}

const NOT_TYPING = new Set(["checkbox", "radio", "button", "submit", "reset", "file", "range"]);

/** Is the user typing into this element (so keys are text, not shortcuts)? */
function typing(target) {
  if (target instanceof HTMLInputElement) return !NOT_TYPING.has(target.type);
  return target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement ||
    Boolean(target && target.isContentEditable);
}

function initKeyboard() {
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "Escape") {
      if (typing(e.target)) e.target.blur();
      update({ polygon: null }); // clear the map selection
      return;
    }
    if (typing(e.target)) return;
    if (e.key === "/") { e.preventDefault(); $("field-search").focus(); }
    else if (e.key === "+" || e.key === "=") { e.preventDefault(); zoom(1 / 1.5); }
    else if (e.key === "-" || e.key === "_") { e.preventDefault(); zoom(1.5); }
  });
}

function initPanels() {
  const layout = $("layout");
  for (const button of document.querySelectorAll("[data-collapse]")) {
    const side = button.dataset.collapse;
    const tab = el("button", { type: "button", class: "expand-tab", hidden: true,
      style: side === "left" ? "left:10px" : "right:10px", title: "Show panel",
      onclick: () => toggle(false) }, side === "left" ? "›" : "‹");
    $("map-area").append(tab);
    const toggle = (hide) => {
      layout.classList.toggle(`hide-${side}`, hide);
      tab.hidden = !hide; // the map (and Bokeh, observing its own element) follows the resize
    };
    button.addEventListener("click", () => toggle(true));
  }
}

boot().catch((err) => showNoDataset(`Could not load the page: ${err.message}`));
