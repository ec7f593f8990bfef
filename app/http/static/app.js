"use strict";
// The page's few moves: pick or drop an image, choose its size, upscale it (small images
// with POST /upscale, big ones through the jobs API, which reports progress), compare
// (fitted, or actual pixels panned by dragging), download under the upload's name.

const $ = (id) => document.getElementById(id);
const BIG_PIXELS = 512 * 512 - 1; // inputs this large or larger go through /v1/jobs
const POLL_MS = 500;
const EXT = { "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp" };
// Formats a browser cannot preview but the service reads: no preview is not an error.
const NO_PREVIEW = /\.(tiff?)$/i;
const LOSSY = ["jpeg", "webp"];

let file = null;
let inputSize = null; // [width, height]
let urls = [];
let pan = { x: 0, y: 0 }; // the 1:1 view's offset, in output pixels

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
    $("picked").textContent = file.name;
    $("sizes").textContent = "";
    $("compare").classList.add("no-preview");
    if (NO_PREVIEW.test(file.name)) {
      $("go").disabled = false; // the browser cannot show a TIFF; the service reads it
      return;
    }
    showError(`${file.name} is not an image this page can read: choose a PNG, JPEG, WebP, ` +
      "GIF, BMP or TIFF file");
  };
  probe.src = url;
  showQuality();
  $("before").src = url;
  $("after").removeAttribute("src");
  const compare = $("compare");
  delete compare.dataset.ready;
  compare.classList.remove("empty", "no-preview");
  compare.classList.add("before-only");
  $("views").hidden = true;
  view(false);
  suggestSize();
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
    return { blob: await r.blob(), model: r.headers.get("X-Model"), name: fileName(r) };
  } finally {
    clearInterval(tick);
  }
}

// The service names the result after the upload (butterfly_x2.png, photo_1920x1440.jpg).
function fileName(response) {
  const header = response.headers.get("Content-Disposition") || "";
  const exact = /filename\*=UTF-8''([^;]+)/i.exec(header);
  if (exact) return decodeURIComponent(exact[1]);
  const plain = /filename="([^"]+)"/i.exec(header);
  return plain ? plain[1] : null;
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
    let text = `Queued${left}`;
    if (job.status === "running") {
      text = job.tiles_done === 0 ? `Starting · ${job.tiles_total} tiles${left}`
        : `${job.tiles_done} of ${job.tiles_total} tiles done${left}`;
    }
    setProgress(job.progress, text);
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
  return { blob, model: job.model, name: fileName(result) };
}

function show(blob, asked, seconds, model, name) {
  const url = keepURL(blob);
  const after = $("after");
  after.onload = () => {
    const [w, h] = [after.naturalWidth, after.naturalHeight];
    const from = inputSize ? `${inputSize[0]}×${inputSize[1]} → ` : "";
    const by = model ? ` by ${model}` : "";
    $("sizes").textContent = `${from}${w}×${h} (${asked})${by} in ${seconds.toFixed(1)} s`;
    $("sizes").dataset.model = model || "";
    $("compare").classList.remove("before-only");
    $("compare").dataset.ready = "true";
    $("views").hidden = false;
    place();
  };
  after.src = url;
  const stem = file.name.replace(/\.[^.]*$/, "") || "image";
  const link = $("download");
  link.href = url;
  link.download = name || `${stem}_upscaled.${EXT[blob.type] || "png"}`;
  link.hidden = false;
}

// -- size: 2x, 3x, 4x, or custom (width and/or height, or a fractional scale) -----------

function custom() {
  return document.querySelector("input[name=scale]:checked").value === "custom";
}

function suggestSize() {
  if (!inputSize) return;
  $("width").placeholder = String(inputSize[0] * 2);
  $("height").placeholder = String(inputSize[1] * 2);
}

// The query for the size asked for, and how to say it; an Error for an impossible one.
function sizeQuery(query) {
  if (!custom()) {
    const scale = document.querySelector("input[name=scale]:checked").value;
    query.set("scale", scale);
    return `${scale}×`;
  }
  const [w, h, f] = [$("width").value, $("height").value, $("factor").value];
  if (f && (w || h)) throw new Error("give a width and/or height, or a scale, not both");
  if (f) {
    query.set("scale", f);
    return `${Number(f)}×`;
  }
  if (!w && !h) throw new Error("give a width, a height or a scale");
  if (w) query.set("width", w);
  if (h) query.set("height", h);
  return w && h ? `${w}×${h}` : w ? `${w} wide` : `${h} high`;
}

// -- the viewer: fitted, or actual pixels (1:1) panned by dragging ----------------------

function view(actual) {
  $("compare").classList.toggle("actual", actual);
  $("fit").setAttribute("aria-pressed", String(!actual));
  $("actual").setAttribute("aria-pressed", String(actual));
  pan = { x: 0, y: 0 };
  place();
}

// In the 1:1 view both images are drawn at the output's size and moved by `pan`; the
// divider stays where the slider puts it on the screen.
function place() {
  const compare = $("compare");
  const after = $("after");
  const pos = Number($("slider").value) / 100;
  compare.style.setProperty("--pos", `${pos * 100}%`);
  const imgs = [$("before"), after];
  if (!compare.classList.contains("actual") || !after.naturalWidth) {
    imgs.forEach((img) => { img.style.cssText = ""; });
    return;
  }
  const [w, h] = [after.naturalWidth, after.naturalHeight];
  const [cw, ch] = [compare.clientWidth, compare.clientHeight];
  pan.x = Math.max(0, Math.min(pan.x, w - cw));
  pan.y = Math.max(0, Math.min(pan.y, h - ch));
  const [left, top] = [w < cw ? (cw - w) / 2 : -pan.x, h < ch ? (ch - h) / 2 : -pan.y];
  imgs.forEach((img) => {
    img.style.cssText = `width:${w}px;height:${h}px;left:${left}px;top:${top}px`;
  });
  after.style.clipPath = `inset(0 0 0 ${Math.max(0, pos * cw - left)}px)`;
}

function dragToPan() {
  const compare = $("compare");
  let from = null;
  compare.addEventListener("pointerdown", (e) => {
    if (!compare.classList.contains("actual") || e.target.id === "slider") return;
    from = { x: e.clientX + pan.x, y: e.clientY + pan.y };
    compare.setPointerCapture(e.pointerId);
    compare.classList.add("panning");
  });
  compare.addEventListener("pointermove", (e) => {
    if (!from) return;
    pan = { x: from.x - e.clientX, y: from.y - e.clientY };
    place();
  });
  const stop = () => { from = null; compare.classList.remove("panning"); };
  compare.addEventListener("pointerup", stop);
  compare.addEventListener("pointercancel", stop);
}

function showQuality() {
  const asked = $("format").value;
  const fromInput = !asked && file && /jpe?g|webp/i.test(file.type);
  $("quality-field").hidden = !(LOSSY.includes(asked) || fromInput);
}

async function upscale() {
  if (!file) return;
  showError("");
  $("go").disabled = true;
  $("download").hidden = true;
  delete $("compare").dataset.ready;
  const kind = document.querySelector("input[name=kind]:checked").value;
  const query = new URLSearchParams({ kind, filename: file.name });
  if ($("format").value) query.set("format", $("format").value);
  if (!$("quality-field").hidden) query.set("quality", $("quality").value);
  const started = performance.now();
  try {
    const asked = sizeQuery(query);
    const big = inputSize && inputSize[0] * inputSize[1] > BIG_PIXELS;
    let done = big ? null : await direct(query);
    if (done === null) done = await viaJob(query);
    $("progress").hidden = true;
    show(done.blob, asked, (performance.now() - started) / 1000, done.model, done.name);
  } catch (err) {
    $("progress").hidden = true;
    showError(err.message || String(err));
  } finally {
    $("go").disabled = false;
  }
}


$("file").addEventListener("change", (e) => pick(e.target.files[0]));
$("go").addEventListener("click", upscale);
$("slider").addEventListener("input", place);
$("fit").addEventListener("click", () => view(false));
$("actual").addEventListener("click", () => view(true));
window.addEventListener("resize", place);
document.querySelectorAll("input[name=scale]").forEach((radio) => radio.addEventListener(
  "change", () => { $("custom").hidden = !custom(); }));
$("format").addEventListener("change", showQuality);
$("quality").addEventListener("input", () => {
  $("quality-value").textContent = $("quality").value;
});
dragToPan();
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
