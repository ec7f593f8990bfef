"use strict";
// The page's few moves: pick or drop an image, upscale it (small images with POST /upscale,
// big ones through the jobs API, which reports progress), compare, download.

const $ = (id) => document.getElementById(id);
const BIG_PIXELS = 512 * 512 - 1; // inputs this large or larger go through /v1/jobs
const POLL_MS = 500;
const EXT = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };

let file = null;
let inputSize = null; // [width, height]
let urls = [];

function keepURL(blob) {
  const url = URL.createObjectURL(blob);
  urls.push(url);
  return url;
}

function forgetURLs() {
  urls.forEach((u) => URL.revokeObjectURL(u));
  urls = [];
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setProgress(fraction, text) {
  $("progress").hidden = false;
  const bar = $("bar").parentElement;
  bar.classList.toggle("indeterminate", fraction === null);
  $("bar").style.width = fraction === null ? "" : `${Math.round(fraction * 100)}%`;
  $("status").textContent = text;
}

function pick(chosen) {
  if (!chosen) return;
  forgetURLs();
  showError("");
  file = chosen;
  inputSize = null;
  $("go").disabled = true;
  $("download").hidden = true;
  $("progress").hidden = true;
  const url = keepURL(file);
  const probe = new Image();
  probe.onload = () => {
    inputSize = [probe.naturalWidth, probe.naturalHeight];
    $("picked").textContent = `${file.name} · ${inputSize[0]}×${inputSize[1]}`;
    $("sizes").textContent = `Input ${inputSize[0]}×${inputSize[1]}`;
    $("go").disabled = false;
  };
  probe.onerror = () => {
    // The browser cannot show it (TIFF, say); the service may still read it.
    $("picked").textContent = file.name;
    $("sizes").textContent = "";
    $("go").disabled = false;
  };
  probe.src = url;
  $("before").src = url;
  $("after").removeAttribute("src");
  const compare = $("compare");
  delete compare.dataset.ready;
  compare.classList.remove("empty");
  compare.classList.add("before-only");
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let reason = null;
  try {
    const body = await response.json();
    if (body.error) message = body.error;
    reason = body.reason || null;
  } catch (_) { /* not JSON */ }
  const err = new Error(message);
  err.reason = reason; // machine-readable, where the service gives one (too_slow, ...)
  return err;
}

function post(path, query) {
  return fetch(`${path}?${query}`, {
    method: "POST",
    body: file,
    headers: { "Content-Type": file.type || "application/octet-stream" },
  });
}

async function direct(query) {
  const started = performance.now();
  const tick = setInterval(() => {
    setProgress(null, `Upscaling… ${((performance.now() - started) / 1000).toFixed(0)} s`);
  }, 250);
  setProgress(null, "Upscaling…");
  try {
    const r = await post("/upscale", query);
    if (r.status === 413) {
      const err = await failure(r);
      if (err.reason === "too_slow") return null; // too long to wait for: a job
      throw err;
    }
    if (!r.ok) throw await failure(r);
    return { blob: await r.blob(), model: r.headers.get("X-Model") };
  } finally {
    clearInterval(tick);
  }
}

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

async function viaJob(query) {
  setProgress(0, "Sending…");
  const r = await post("/v1/jobs", query);
  if (r.status !== 202) throw await failure(r);
  let job = await r.json();
  const where = r.headers.get("Location") || `/v1/jobs/${job.id}`;
  while (job.status === "queued" || job.status === "running") {
    const left = job.eta_s > 0 ? ` · about ${Math.ceil(job.eta_s)} s left` : "";
    setProgress(job.progress, job.status === "queued" ? `Queued${left}`
      : `Tile ${job.tiles_done} of ${job.tiles_total}${left}`);
    await sleep(POLL_MS);
    const s = await fetch(where);
    if (!s.ok) throw await failure(s);
    job = await s.json();
  }
  if (job.status !== "done") throw new Error(job.error || `the job was ${job.status}`);
  setProgress(1, "Downloading…");
  const result = await fetch(job.result_url);
  if (!result.ok) throw await failure(result);
  const blob = await result.blob();
  fetch(where, { method: "DELETE" }); // we hold the result now: free the spool
  return { blob, model: job.model };
}

function show(blob, scale, seconds, model) {
  const url = keepURL(blob);
  const after = $("after");
  after.onload = () => {
    const [w, h] = [after.naturalWidth, after.naturalHeight];
    const from = inputSize ? `${inputSize[0]}×${inputSize[1]} → ` : "";
    const by = model ? ` by ${model}` : "";
    $("sizes").textContent = `${from}${w}×${h} (${scale}×)${by} in ${seconds.toFixed(1)} s`;
    $("sizes").dataset.model = model || "";
    $("compare").classList.remove("before-only");
    $("compare").dataset.ready = "true";
  };
  after.src = url;
  const stem = file.name.replace(/\.[^.]*$/, "") || "image";
  const link = $("download");
  link.href = url;
  link.download = `${stem}_x${scale}.${EXT[blob.type] || "png"}`;
  link.hidden = false;
}

async function upscale() {
  if (!file) return;
  showError("");
  $("go").disabled = true;
  $("download").hidden = true;
  delete $("compare").dataset.ready;
  const scale = document.querySelector("input[name=scale]:checked").value;
  const kind = document.querySelector("input[name=kind]:checked").value;
  const query = new URLSearchParams({ scale, kind });
  if ($("format").value) query.set("format", $("format").value);
  const started = performance.now();
  try {
    const big = inputSize && inputSize[0] * inputSize[1] > BIG_PIXELS;
    let done = big ? null : await direct(query);
    if (done === null) done = await viaJob(query);
    $("progress").hidden = true;
    show(done.blob, Number(scale), (performance.now() - started) / 1000, done.model);
  } catch (err) {
    $("progress").hidden = true;
    showError(err.message || String(err));
  } finally {
    $("go").disabled = false;
  }
}

function slide() {
  $("compare").style.setProperty("--pos", `${$("slider").value}%`);
}

$("file").addEventListener("change", (e) => pick(e.target.files[0]));
$("go").addEventListener("click", upscale);
$("slider").addEventListener("input", slide);
const drop = $("drop");
["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
  e.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => {
  drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  pick(e.dataTransfer.files[0]);
});
// Dropping anywhere else on the page must not navigate away to the image.
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => e.preventDefault());
