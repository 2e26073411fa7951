// Talking to Tessera's HTTP API: JSON in, JSON out, errors as the server words them; only
// the newest answer of a kind used (`latest`), jobs followed (`poll`); words for numbers.

/** An error answered by the API: `message` is the server's own `error` text. */
export class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function answer(response) {
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status, body && body.code);
  }
  return body;
}

/** The CSRF header a logged-in browser session sends with state-changing calls (none without). */
export function csrfHeaders() {
  const m = document.cookie.match(/(?:^|;\s*)tessera_csrf=([^;]+)/);
  return m ? { "X-Tessera-CSRF": decodeURIComponent(m[1]) } : {};
}

export async function getJSON(url, { signal } = {}) {
  return answer(await fetch(url, { signal, headers: { Accept: "application/json" } }));
}

export async function postJSON(url, body, { signal } = {}) {
  return answer(await fetch(url, {
    method: "POST", signal, body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", Accept: "application/json", ...csrfHeaders() },
  }));
}

/** `/api/datasets/{id}{path}` with an optional query object (empty values left out). */
export function apiUrl(datasetId, path = "", query = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, v);
  }
  const qs = q.toString();
  return `/api/datasets/${encodeURIComponent(datasetId)}${path}${qs ? "?" + qs : ""}`;
}

/** The filter as the `filter` query parameter: JSON, or "" when there is none. */
export function filterParam(conditions) {
  return conditions.length ? JSON.stringify(conditions) : "";
}

// ---- only the newest answer; jobs followed ----------------------------------------------------

const newest = new Map(); // kind -> the AbortController of its newest call
let scope = new AbortController(); // aborted when another dataset is opened
const MAX_WAIT_MS = 30_000;

/** Only the newest call of a kind is answered: `await latest("legend", (signal) =>
 *  getJSON(url, { signal }))` resolves (or rejects) only if no newer "legend" call began
 *  meanwhile and no other dataset was opened. An older call is aborted and its promise never
 *  settles, so the code after its `await`, and its `catch`, do not run. */
export function latest(kind, request) {
  if (newest.has(kind)) newest.get(kind).abort();
  const call = new AbortController();
  newest.set(kind, call);
  const current = () => newest.get(kind) === call;
  return new Promise((resolve, reject) => {
    Promise.resolve().then(() => request(call.signal)).then(
      (answer) => { if (current()) resolve(answer); },
      (err) => { if (current()) reject(err); },
    );
  });
}

/** Drop the call of `kind` in flight, if any: its answer is never used. */
export function cancel(kind) {
  if (newest.has(kind)) newest.get(kind).abort();
  newest.delete(kind);
}

/** Another dataset was opened (the store calls this): drop every latest() call and stop every
 *  poll() begun for the last one. */
export function endScope() {
  for (const call of newest.values()) call.abort();
  newest.clear();
  scope.abort();
  scope = new AbortController();
}

/** Asking again will not change a 4xx answer (a timeout or a rate limit aside). */
const lasting = (err) => err instanceof ApiError && err.status >= 400 && err.status < 500 &&
  err.status !== 408 && err.status !== 429;

/** Follow a job: call `fn()` now, then `every` ms after each answer until `until(answer)`
 *  holds, and resolve with that answer. `each(answer)` shows an answer, only while the poll
 *  is still wanted (an answer arriving after it stopped is dropped, not shown). A failed call goes to `onError` and the next waits
 *  twice as long (up to 30 s); an error asking again will not change (a 4xx) rejects. No call
 *  is made while the page is hidden; polling stops for good, its promise never settling,
 *  when `signal` aborts or another dataset is opened. */
export function poll(fn, { every, until, each = () => {}, onError = () => {}, signal = null }) {
  const ended = [scope.signal, signal].filter(Boolean);
  const stopped = () => ended.some((s) => s.aborted);
  return new Promise((resolve, reject) => {
    let wait = every;
    let timer = 0;
    for (const s of ended) s.addEventListener("abort", () => clearTimeout(timer), { once: true });
    const next = () => {
      if (stopped()) return;
      if (document.visibilityState === "hidden") {
        document.addEventListener("visibilitychange", next, { once: true });
        return;
      }
      ask();
    };
    async function ask() {
      let answer;
      try {
        answer = await fn();
      } catch (err) {
        if (stopped()) return;
        if (lasting(err)) { reject(err); return; }
        onError(err);
        wait = Math.min(2 * wait, MAX_WAIT_MS);
        timer = setTimeout(next, wait);
        return;
      }
      if (stopped()) return;
      each(answer);
      if (until(answer)) { resolve(answer); return; }
      wait = every;
      timer = setTimeout(next, wait);
    }
    next();
  });
}

/** Upload a file with XHR so its progress can be shown; resolves to the dataset summary. */
export function uploadFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/datasets");
    xhr.responseType = "text";
    for (const [k, v] of Object.entries(csrfHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.upload.onload = () => onProgress(1, true);
    xhr.onerror = () => reject(new ApiError("The upload failed: the server could not be reached", 0));
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { body = null; }
      if (xhr.status >= 200 && xhr.status < 300 && body) resolve(body);
      else reject(new ApiError(body && body.error ? body.error : `Upload failed (${xhr.status})`,
                               xhr.status, body && body.code));
    };
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** Call `fn` once calls stop for `ms` milliseconds. */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** "CPU", or "GPU: NVIDIA H100 …" from /api/health's backend. */
export function deviceName(backend) {
  if (!backend) return "";
  if (backend.name === "cpu") return "CPU";
  const device = backend.device && backend.device !== backend.name ? backend.device : backend.name;
  return `GPU: ${device}`;
}

const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 });
const full = new Intl.NumberFormat("en");

/** 35,000 */
export const fmt = (n) => full.format(n);
/** 35k (counts beside filter values) */
export const fmtShort = (n) => (n >= 10000 ? compact.format(n) : full.format(n));

/** A new element: el("div", {class: "x"}, child, "text"). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}
