// The curation tabs of the drawer: "find similar" (a strip of previews, ringed on the map,
// one click to a filter) and near-duplicates (a threshold slider with live counts, the groups
// side by side, "keep one per group" as a filter). Both wait for the similarity graph, whose
// job also gives the dataset its `uniqueness` and `duplicate_group` fields.

import { apiUrl, debounce, el, filterParam, fmt, getJSON, latest, poll, postJSON } from "./api.js";
import { filterConditions, on, pin, refreshFields, state, update } from "./state.js";
import { openEpisode } from "./preview.js";

const $ = (id) => document.getElementById(id);
const SIMILAR_K = 12;
const GROUPS_PAGE = 12;
const SHOWN_MEMBERS = 8;
let groupsShown = GROUPS_PAGE;

/** A dataset opened: follow its similarity job. */
function buildCuration() {
  $("similarity-state").textContent = "";
  if (state.dataset.mode !== "metadata-only") followSimilarity();
}

/** Follow the job building the similarity graph (`state.similarity`); once it is built, its
 *  fields (uniqueness, duplicate_group) are listed. */
async function followSimilarity() {
  const id = state.dataset.id;
  const box = $("similarity-state");
  let building = false;
  const show = (status) => {
    building ||= status.status !== "done";
    update({ similarity: status });
    box.textContent = status.status === "done" ? "" : status.status === "failed"
      ? `similarity graph failed: ${status.error}`
      : `building the similarity graph · ${Math.round(100 * status.progress)}%`;
    return status;
  };
  let status;
  try {
    status = await poll(() => getJSON(apiUrl(id, "/similarity")), {
      each: show, every: 800, until: (s) => s.status === "done" || s.status === "failed",
      onError: (err) => { box.textContent = `similarity: ${err.message}`; } });
  } catch (err) {
    box.textContent = `similarity: ${err.message}`;
    return;
  }
  if (status.status === "done" && building) await refreshFields(id);
}

const ready = () => state.similarity && state.similarity.status === "done";

/** A preview tile: the thumbnail (or GIF), the GIF playing on hover; click shows the episode. */
function tile(index, episodeId, detail, { keeper = false } = {}) {
  const base = apiUrl(state.dataset.id, `/episodes/${index}`);
  const still = state.dataset.has_thumbnails ? `${base}/thumbnail` : (state.dataset.has_gifs ? `${base}/gif` : null);
  const moving = state.dataset.has_gifs ? `${base}/gif` : still;
  const img = still ? el("img", { src: still, alt: `Preview of ${episodeId}`, loading: "lazy" })
    : el("div", { class: "noimg" }, "no preview");
  const node = el("button", { type: "button", class: `tile${keeper ? " keeper" : ""}`,
                              "data-index": index, title: episodeId },
    img, el("div", { class: "tid" }, episodeId), detail ? el("div", { class: "dist" }, detail) : null);
  if (still && moving !== still) {
    node.addEventListener("mouseenter", () => { img.src = moving; });
    node.addEventListener("mouseleave", () => { img.src = still; });
  }
  node.addEventListener("click", () => openEpisode(index).catch(() => {}));
  return node;
}

// ---- find similar -------------------------------------------------------------------------

/** "Find similar" for the episode in the card: 202 (the job's status) while the graph is
 *  built, then the answer. Only the newest request is shown. */
async function findSimilar(index) {
  update({ tab: "similar" });
  const title = $("similar-title");
  title.textContent = "Finding similar episodes…";
  const query = { k: SIMILAR_K, filter: filterParam(filterConditions().filter((c) => c.field !== "map")) };
  const url = apiUrl(state.dataset.id, `/episodes/${index}/similar`, query);
  const ask = async (signal) => {
    const body = await getJSON(url, { signal });
    if (!body.neighbors) title.textContent = `Building the similarity graph · ${Math.round(100 * body.progress)}%`;
    return body;
  };
  try {
    const answer = await latest("similar", (signal) => poll(() => ask(signal), {
      every: 700, until: (body) => Boolean(body.neighbors), signal,
      onError: (err) => { title.textContent = err.message; } }));
    update({ similar: answer });
  } catch (err) {
    title.textContent = err.message;
  }
}

function renderSimilar(answer) {
  $("similar-filter").hidden = !answer;
  $("similar-clear").hidden = !answer;
  if (!answer) {
    $("similar-title").textContent = "Hover an episode, then press “Find similar” in its card.";
    $("similar-strip").replaceChildren();
    return;
  }
  $("similar-title").replaceChildren(`${answer.neighbors.length} nearest to `,
    el("b", {}, answer.episode_id), " by cosine distance (full embedding space)");
  $("similar-strip").replaceChildren(tile(answer.index, answer.episode_id, "the episode"),
    ...answer.neighbors.map((n) => tile(n.index, n.episode_id, `d ${n.distance.toFixed(4)}`)));
}

function similarAsFilter() {
  const a = state.similar;
  if (!a) return;
  pin("episode_id", { field: "episode_id", op: "in", value: [a.episode_id, ...a.neighbors.map((n) => n.episode_id)] });
}

// ---- near-duplicates ----------------------------------------------------------------------

const threshold = () => Number($("dup-threshold").value);

const refreshDuplicates = debounce(async () => {
  if (!state.dataset || state.tab !== "duplicates") return;
  if (!ready()) {
    $("dup-summary").textContent = "Waiting for the similarity graph…";
    return;
  }
  const kept = state.pinned.filter((c) => c.field !== "duplicates");
  const conditions = [...state.conditions, ...kept];
  if (state.polygon) conditions.push({ field: "map", op: "within", value: state.polygon });
  const body = { threshold: threshold(), filter: conditions, limit: groupsShown, offset: 0 };
  let answer;
  const url = apiUrl(state.dataset.id, "/duplicates");
  try {
    answer = await latest("duplicates", (signal) => postJSON(url, body, { signal })); // the slider moves on
  } catch (err) {
    $("dup-summary").textContent = err.message;
    return;
  }
  $("dup-summary").replaceChildren(el("b", {}, fmt(answer.n_groups)), ` groups · `,
    el("b", {}, fmt(answer.removed)), " episodes would be removed by keeping one per group");
  $("dup-groups").replaceChildren(...answer.groups.map((g) => groupRow(g)));
  $("dup-more").hidden = answer.n_groups <= answer.groups.length;
}, 150);

// Episode ids of rows already shown: every slider step redraws the groups, mostly the same
// members, so each id is fetched once per dataset.
const episodeIds = new Map(); // "dataset:index" -> Promise of the episode id

function episodeId(index) {
  const key = `${state.dataset.id}:${index}`;
  if (!episodeIds.has(key)) {
    if (episodeIds.size > 5000) episodeIds.clear();
    const id = getJSON(apiUrl(state.dataset.id, `/episodes/${index}`)).then((ep) => ep.episode_id);
    id.catch(() => episodeIds.delete(key)); // a failed fetch is tried again next time
    episodeIds.set(key, id);
  }
  return episodeIds.get(key);
}

function groupRow(group) {
  const members = group.slice(0, SHOWN_MEMBERS);
  const row = el("div", { class: "group" }, el("div", { class: "size" }, `${group.length} episodes`));
  for (const [i, index] of members.entries()) {
    const t = tile(index, `#${index}`, null, { keeper: i === 0 });
    row.append(t);
    episodeId(index).then((id) => {
      t.querySelector(".tid").textContent = id;
      t.title = id;
    }).catch(() => {});
  }
  if (group.length > members.length) row.append(el("div", { class: "size" }, `+${group.length - members.length}`));
  return row;
}

function renderKeepButton() {
  const on_ = state.pinned.some((c) => c.field === "duplicates");
  $("dup-keep").classList.toggle("on", on_);
  $("dup-keep").textContent = on_ ? "Keeping one per group ✓" : "Keep one per group";
}

function toggleKeep() {
  const active = state.pinned.find((c) => c.field === "duplicates");
  pin("duplicates", active ? null : { field: "duplicates", op: "keep_one", value: threshold() });
}

// ---- wiring -------------------------------------------------------------------------------

export function initCuration() {
  $("find-similar").addEventListener("click", () => {
    const index = Number($("find-similar").dataset.index);
    if (Number.isInteger(index)) findSimilar(index);
  });
  $("similar-filter").addEventListener("click", similarAsFilter);
  $("similar-clear").addEventListener("click", () => update({ similar: null }));
  $("dup-threshold").addEventListener("input", () => {
    $("dup-threshold-value").textContent = threshold().toFixed(3);
    groupsShown = GROUPS_PAGE;
    const active = state.pinned.find((c) => c.field === "duplicates");
    if (active) pin("duplicates", { ...active, value: threshold() });
    refreshDuplicates();
  });
  $("dup-keep").addEventListener("click", toggleKeep);
  $("dup-more").addEventListener("click", () => { groupsShown += GROUPS_PAGE; refreshDuplicates(); });
  on("dataset", buildCuration);
  on("similar", (s) => renderSimilar(s.similar));
  on(["conditions", "pinned", "polygon", "similarity"], () => refreshDuplicates());
  on("tab", (s) => { if (s.tab === "duplicates") refreshDuplicates(); });
  on("pinned", renderKeepButton);
}
