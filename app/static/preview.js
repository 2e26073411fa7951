// The episode card: the nearest episode to the cursor (or a preview tile clicked in the
// drawer), its GIF (or thumbnail) and metadata. Look-ups are debounced, and only the newest
// is answered (the older aborted), so a fast sweep never ends on an old episode.

import { apiUrl, cancel, el, filterParam, getJSON, latest } from "./api.js";
import { filterConditions, on, state, update } from "./state.js";

const HOVER_PX = 16;     // an episode farther than this from the cursor is not "under" it
const DELAY_MS = 35;
const CARD = "episode-card"; // the kind of look-up whose newest answer the card shows
let timer = null;
let shownIndex = null;

/** The cursor is at data point (x, y); one pixel spans `pixel` data units. */
export function hoverAt(x, y, pixel) {
  clearTimeout(timer);
  timer = setTimeout(() => lookUp(x, y, pixel), DELAY_MS);
}

export function hoverEnd() {
  clearTimeout(timer);
  cancel(CARD);
}

async function lookUp(x, y, pixel) {
  if (!state.dataset || !state.count || state.count.count === 0) return;
  const url = apiUrl(state.dataset.id, "/points/nearest", { x, y, filter: filterParam(filterConditions()) });
  let ep;
  try {
    ep = await latest(CARD, (signal) => getJSON(url, { signal }));
  } catch (err) {
    return; // the map is changing under us (a filter that matches nothing now)
  }
  if (Math.hypot(ep.x - x, ep.y - y) > HOVER_PX * pixel) return;
  showEpisode(ep);
}

/** Put episode `index` in the card (a preview tile clicked in the drawer). */
export async function openEpisode(index) {
  const base = apiUrl(state.dataset.id, `/episodes/${index}`);
  const ep = await latest(CARD, (signal) => getJSON(base, { signal }));
  showEpisode({ ...ep, thumbnail_url: ep.has_thumbnail ? `${base}/thumbnail` : null,
                gif_url: ep.has_gif ? `${base}/gif` : null });
}

/** Put one episode (an answer of /points/nearest, or of /episodes/{index}) in the card. */
function showEpisode(ep) {
  if (ep.index === shownIndex) return;
  shownIndex = ep.index;
  update({ hovered: { x: ep.x, y: ep.y, episode_id: ep.episode_id } }); // ringed on the map
  const img = document.getElementById("preview-img");
  const empty = document.getElementById("preview-empty");
  const sources = [ep.gif_url, ep.thumbnail_url].filter(Boolean);
  const token = String(ep.index);
  img.dataset.episode = token;
  const next = () => {
    if (img.dataset.episode !== token) return;
    const src = sources.shift();
    if (!src) {
      img.hidden = true;
      img.removeAttribute("src");
      empty.hidden = false;
      empty.textContent = "No preview stored for this episode.";
      return;
    }
    img.src = src;
  };
  img.onerror = next;
  img.onload = () => { if (img.dataset.episode === token) { img.hidden = false; empty.hidden = true; } };
  img.alt = `Preview of episode ${ep.episode_id}`;
  next();
  document.getElementById("episode-id").textContent = ep.episode_id;
  const similar = document.getElementById("find-similar");
  similar.hidden = !state.dataset || state.dataset.mode === "metadata-only";
  similar.dataset.index = String(ep.index);
  const meta = document.getElementById("episode-meta");
  meta.replaceChildren(...Object.entries(ep.metadata).flatMap(([k, v]) => [
    el("dt", {}, k), el("dd", { title: formatValue(v) }, formatValue(v))]));
}

function formatValue(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number" && !Number.isInteger(v)) return String(+v.toPrecision(5));
  if (Array.isArray(v)) return `[${v.length} values]`;
  return String(v);
}

/** Forget the card (a new dataset was opened). */
function clearEpisode() {
  cancel(CARD);
  shownIndex = null;
  update({ hovered: null });
  const img = document.getElementById("preview-img");
  img.hidden = true;
  img.removeAttribute("src");
  img.dataset.episode = "";
  const empty = document.getElementById("preview-empty");
  empty.hidden = false;
  empty.textContent = state.dataset && state.dataset.mode === "metadata-only"
    ? "Previews appear when hovering the map; this dataset has no map."
    : "Hover over the map to preview an episode.";
  document.getElementById("episode-id").textContent = "";
  document.getElementById("find-similar").hidden = true;
  document.getElementById("episode-meta").replaceChildren();
}

export function initPreview() {
  on("dataset", clearEpisode);
}
