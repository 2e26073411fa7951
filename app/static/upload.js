// Upload: a dialog with a drop zone and a file button, or a file dropped anywhere on the
// page. Progress comes from XHR upload events; a refusal is shown word for word.

import { uploadFile } from "./api.js";

const $ = (id) => document.getElementById(id);

function setProgress(fraction) {
  $("upload-progress").hidden = fraction === null;
  if (fraction !== null) $("upload-progress").firstElementChild.style.width = `${Math.round(fraction * 100)}%`;
}

async function send(file) {
  const dialog = $("upload-dialog");
  if (!dialog.open) dialog.showModal();
  $("upload-error").hidden = true;
  $("upload-status").textContent = `Uploading ${file.name}…`;
  setProgress(0);
  try {
    const summary = await uploadFile(file, (fraction, done) => {
      setProgress(fraction);
      $("upload-status").textContent = done
        ? `Checking ${file.name}…`
        : `Uploading ${file.name}… ${Math.round(fraction * 100)}%`;
    });
    $("upload-status").textContent = `${summary.name}: ${summary.n_episodes.toLocaleString("en")} episodes. Opening…`;
    location.assign(`/datasets/${encodeURIComponent(summary.id)}`);
  } catch (err) {
    setProgress(null);
    $("upload-status").textContent = `${file.name} was not added.`;
    $("upload-error").hidden = false;
    $("upload-error").textContent = err.message;
  }
}

export function initUpload() {
  const dialog = $("upload-dialog");
  const zone = $("drop-zone");
  $("upload-button").addEventListener("click", () => {
    $("upload-error").hidden = true;
    $("upload-status").textContent = "";
    setProgress(null);
    dialog.showModal();
  });
  $("upload-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (file) send(file);
  });
  let depth = 0;
  const overlay = $("drop-overlay");
  const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
  window.addEventListener("dragenter", (e) => { if (hasFiles(e)) { depth += 1; overlay.hidden = false; } });
  window.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) overlay.hidden = true; });
  window.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  window.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    zone.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) send(file);
  });
  zone.addEventListener("dragover", () => zone.classList.add("over"));
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
}
