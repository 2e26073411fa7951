// The drawer under the map: its tabs (similar, near-duplicates, groups), folded or open. The
// open tab is `state.tab`; a tab's module follows it (and the map refits to the room left).

import { on, state, update } from "./state.js";

const $ = (id) => document.getElementById(id);
const TABS = ["similar", "duplicates", "groups"];

const mapless = () => Boolean(state.dataset) && state.dataset.mode === "metadata-only";

function render(s) {
  for (const b of document.querySelectorAll(".drawer-tabs .tab")) {
    b.setAttribute("aria-selected", String(b.dataset.tab === s.tab));
  }
  for (const tab of TABS) $(`tab-${tab}`).hidden = s.tab !== tab;
  $("drawer-toggle").textContent = s.tab ? "▾" : "▴";
}

/** Similar and near-duplicates need embeddings; groups always work (and are shown at once
 *  where there is no map). */
function buildDrawer() {
  $("drawer").hidden = false;
  $("tab-button-similar").hidden = mapless();
  $("tab-button-duplicates").hidden = mapless();
  update({ tab: mapless() ? "groups" : null });
}

export function initDrawer() {
  for (const b of document.querySelectorAll(".drawer-tabs .tab")) {
    b.addEventListener("click", () => update({ tab: state.tab === b.dataset.tab ? null : b.dataset.tab }));
  }
  $("drawer-toggle").addEventListener("click", () => {
    update({ tab: state.tab ? null : (mapless() ? "groups" : "similar") });
  });
  on("dataset", buildDrawer);
  on("tab", render);
}
