// nst serve: the page. Plain JavaScript over the HTTP API (README, "nst serve"): POST /jobs
// to start, GET /jobs/{id}/events (Server-Sent Events) to follow, DELETE /jobs/{id} to
// cancel, GET /gallery for the results. Every name a user gave is shown with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  content: null,          // File
  styles: [],             // [File]
  defaults: { style_weight: 3e-4 },
  following: null,        // job id shown in the canvas
  source: null,           // its EventSource
  losses: [],             // [{scale, iter, loss}]
  warnings: [],           // what the server changed to fit its memory, one line each
  thumbUrls: [],          // object URLs of the shown thumbnails (revoked on re-render)
};

// ---- inputs ---------------------------------------------------------------------------

function thumb(file, onRemove) {
  const box = document.createElement("div");
  box.className = "thumb";
  const img = document.createElement("img");
  img.src = URL.createObjectURL(file);
  state.thumbUrls.push(img.src);
  img.alt = file.name;
  img.title = file.name;
  // Not a picture the browser can show: name it instead (the server will say why).
  img.addEventListener("error", () => {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.textContent = file.name;
    chip.title = file.name;
    img.replaceWith(chip);
  });
  box.append(img);
  if (onRemove) {
    const x = document.createElement("button");
    x.type = "button";
    x.textContent = "×";
    x.title = "Remove";
    x.addEventListener("click", (e) => { e.stopPropagation(); onRemove(); });
    box.append(x);
  }
  return box;
}

function renderInputs() {
  state.thumbUrls.forEach((u) => URL.revokeObjectURL(u));
  state.thumbUrls = [];
  const c = $("content-thumbs");
  c.replaceChildren();
  if (state.content) c.append(thumb(state.content, () => { state.content = null; renderInputs(); }));
  $("content-drop").classList.toggle("filled", !!state.content);
  const s = $("style-thumbs");
  s.replaceChildren(...state.styles.map((f, i) =>
    thumb(f, () => { state.styles.splice(i, 1); renderInputs(); })));
  $("style-drop").classList.toggle("filled", state.styles.length > 0);
}

function dropZone(zoneId, inputId, take) {
  const zone = $(zoneId), input = $(inputId);
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  input.addEventListener("change", () => { take([...input.files]); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    take([...e.dataTransfer.files]);
  });
}

dropZone("content-drop", "content-input", (files) => {
  if (files.length) { state.content = files[0]; renderInputs(); }
});
dropZone("style-drop", "style-input", (files) => {
  state.styles.push(...files);
  state.styles = state.styles.slice(0, 8);
  renderInputs();
});

function styleWeight() {
  return state.defaults.style_weight * Math.pow(10, Number($("strength").value));
}
$("strength").addEventListener("input", () => {
  const f = Math.pow(10, Number($("strength").value));
  $("strength-value").textContent = "×" + (f >= 10 ? f.toFixed(0) : f < 1 ? f.toFixed(2) : f.toFixed(1));
});

// ---- messages -------------------------------------------------------------------------

function message(text, kind) {
  const m = $("message");
  m.textContent = text || "";
  m.hidden = !text;
  m.className = "message" + (kind === "info" ? " info" : "");
}

async function apiError(response) {
  try { return (await response.json()).error || response.statusText; }
  catch { return `${response.status} ${response.statusText}`; }
}

// ---- starting and cancelling ----------------------------------------------------------

$("start").addEventListener("click", async () => {
  message("");
  if (!state.content) return message("Add a photo first.");
  if (!state.styles.length) return message("Add at least one painting.");
  const form = new FormData();
  form.append("content", state.content, state.content.name);
  for (const s of state.styles) form.append("style", s, s.name);
  for (const id of ["size", "iters", "preserve_colors", "optimizer", "device"]) {
    const v = $(id).value.trim();
    if (v) form.append(id, v);
  }
  form.append("style_weight", styleWeight().toPrecision(3));
  $("start").disabled = true;
  try {
    const r = await fetch("/jobs", { method: "POST", body: form });
    if (!r.ok) return message(await apiError(r));
    const { id } = await r.json();
    follow(id);
    refreshQueue();
  } catch (e) {
    message("The server cannot be reached: " + e.message);
  } finally {
    $("start").disabled = false;
  }
});

$("cancel").addEventListener("click", () => cancel(state.following));

async function cancel(id) {
  if (!id) return;
  const r = await fetch(`/jobs/${id}`, { method: "DELETE" });
  if (!r.ok && r.status !== 409) message(await apiError(r));
  refreshQueue();
}

// ---- following a job ------------------------------------------------------------------

function follow(id) {
  if (state.source) state.source.close();
  state.following = id;
  state.losses = [];
  $("result").hidden = true;
  $("preview").hidden = true;
  $("placeholder").hidden = false;
  $("placeholder").textContent = "Waiting for the first picture…";
  $("progress-bar").style.width = "0";
  $("rate").textContent = "";
  state.warnings = [];
  showWarnings([]);
  drawLoss();
  const source = new EventSource(`/jobs/${id}/events`);
  state.source = source;
  source.onmessage = (e) => handle(JSON.parse(e.data));
  // The browser retries a dropped stream by itself; a refused one (an unknown job after a
  // server restart) is closed for good.
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED && state.source === source) {
      state.source = null;
      setStatus("Lost the connection to this job.");
    }
  };
}

function setStatus(text) { $("status").textContent = text; }

// What the server changed to fit its memory (lean mode, a shorter L-BFGS history).
function showWarnings(list) {
  const ul = $("warnings");
  ul.replaceChildren(...list.map((text) => {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  }));
  ul.hidden = !list.length;
}

function showProgress(scale, scales, iter, iters) {
  if (!scales || !iters) return;
  const done = ((scale - 1) + iter / iters) / scales;
  $("progress-bar").style.width = (100 * Math.min(1, done)).toFixed(1) + "%";
}

function showPreview(url) {
  const img = $("preview");
  img.src = url;
  img.hidden = false;
  img.dataset.updates = String(Number(img.dataset.updates) + 1);
  $("placeholder").hidden = true;
}

let current = {};

function handle(ev) {
  switch (ev.type) {
    case "state":
      current = { scale: ev.scale, scales: ev.scales, iters: ev.iters, width: ev.width, height: ev.height };
      state.losses = ev.losses || [];
      state.warnings = ev.warnings || [];
      showWarnings(state.warnings);
      drawLoss();
      if (ev.preview) showPreview(ev.preview);
      if (ev.state === "queued") setStatus(`Queued: number ${ev.position} in line`);
      else if (ev.state === "running") iterationStatus(ev.iter);
      else return finished(ev.state, ev);
      $("cancel").disabled = false;
      break;
    case "queued":
      setStatus(`Queued: number ${ev.position} in line`);
      break;
    case "started":
      setStatus("Starting: loading the network and the style…");
      break;
    case "device":
      $("device-pill").textContent = ev.device;
      break;
    case "warning":
      state.warnings.push(ev.message);
      showWarnings(state.warnings);
      break;
    case "scale":
      current = ev;
      iterationStatus(0);
      break;
    case "iteration":
      current.scale = ev.scale; current.scales = ev.scales; current.iters = ev.iters;
      state.losses.push({ scale: ev.scale, iter: ev.iter, loss: ev.loss });
      drawLoss();
      iterationStatus(ev.iter, ev.it_per_s);
      break;
    case "preview":
      showPreview(ev.url);
      break;
    case "cancelling":
      setStatus("Cancelling…");
      break;
    case "done": case "cancelled": case "failed":
      finished(ev.type, ev);
      break;
  }
}

function iterationStatus(iter, rate) {
  const c = current;
  if (!c.scale) return;
  setStatus(`Scale ${c.scale}/${c.scales}${c.width ? ` · ${c.width}×${c.height}` : ""} · iteration ${iter}/${c.iters}`);
  if (rate) $("rate").textContent = `${rate.toFixed(2)} it/s`;
  showProgress(c.scale, c.scales, iter, c.iters);
  $("cancel").disabled = false;
}

function finished(kind, ev) {
  if (state.source) { state.source.close(); state.source = null; }
  $("cancel").disabled = true;
  const id = state.following;
  if (ev.image) {
    showPreview(ev.image);
    $("download").href = ev.image;
    $("download").download = `nst-${id}.png`;
    $("settings").textContent = describe(ev.settings);
    $("result").hidden = false;
  }
  if (kind === "done") {
    $("progress-bar").style.width = "100%";
    setStatus("Done.");
  } else if (kind === "cancelled") {
    setStatus(ev.image ? "Cancelled: the best picture so far was kept." : "Cancelled.");
  } else {
    setStatus("Failed.");
    message(ev.error || "The job failed.");
  }
  loadGallery();
  refreshQueue();
}

function describe(s) {
  if (!s) return "";
  const lines = [];
  if (s.command) lines.push(s.command, "");
  for (const k of ["size", "iters", "scales", "style_weight", "preserve_colors", "optimizer", "device", "output", "seconds", "final_loss"]) {
    if (s[k] !== undefined && s[k] !== null) lines.push(`${k}: ${Array.isArray(s[k]) ? s[k].join("×") : s[k]}`);
  }
  return lines.join("\n");
}

// ---- loss curve -----------------------------------------------------------------------

function drawLoss() {
  const svg = $("loss");
  svg.replaceChildren();
  $("loss-label").textContent = "";
  const pts = state.losses.filter((p) => p.loss > 0 && isFinite(p.loss));
  if (pts.length < 2) return;
  const ys = pts.map((p) => Math.log10(p.loss));
  const lo = Math.min(...ys), hi = Math.max(...ys);
  const W = 400, H = 80, pad = 6;
  const x = (i) => pad + (W - 2 * pad) * i / (pts.length - 1);
  const y = (v) => H - pad - (H - 2 * pad) * (hi > lo ? (v - lo) / (hi - lo) : 0.5);
  const ns = "http://www.w3.org/2000/svg";
  pts.forEach((p, i) => {
    if (i > 0 && p.scale !== pts[i - 1].scale) {
      const l = document.createElementNS(ns, "line");
      l.setAttribute("x1", x(i)); l.setAttribute("x2", x(i));
      l.setAttribute("y1", 0); l.setAttribute("y2", H);
      svg.append(l);
    }
  });
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", ys.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" "));
  svg.append(line);
  $("loss-label").textContent = "loss " + pts[pts.length - 1].loss.toExponential(3);
}

// ---- queue (shared by every open tab) -------------------------------------------------

async function refreshQueue() {
  let jobs;
  try { jobs = await (await fetch("/jobs")).json(); } catch { return; }
  const active = jobs.filter((j) => j.state === "queued" || j.state === "running");
  $("queue-box").hidden = active.length === 0;
  $("queue").replaceChildren(...active.map((j) => {
    const li = document.createElement("li");
    const label = document.createElement("span");
    const names = [j.settings?.uploads?.content, ...(j.settings?.uploads?.styles || [])].filter(Boolean).join(" × ");
    label.textContent = (j.state === "running" ? "▶ " : `#${j.position} `) + (names || j.id);
    label.title = "Show this job";
    label.addEventListener("click", () => follow(j.id));
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = "Cancel";
    b.addEventListener("click", () => cancel(j.id));
    li.append(label, b);
    return li;
  }));
  // A tab that shows nothing yet follows whatever is running (several tabs, one state); one
  // that shows a finished result keeps it (the queue above lists the running job to click).
  const running = active.find((j) => j.state === "running");
  if (running && state.following === null) follow(running.id);
}

// ---- gallery --------------------------------------------------------------------------

async function loadGallery() {
  let entries;
  try { entries = await (await fetch("/gallery")).json(); } catch { return; }
  $("gallery-count").textContent = entries.length ? `(${entries.length})` : "";
  $("gallery-empty").hidden = entries.length > 0;
  $("gallery").replaceChildren(...entries.map((e) => {
    const card = document.createElement("article");
    card.className = "entry";
    const img = document.createElement("img");
    img.loading = "lazy";
    img.src = `/gallery/${e.id}/result.png`;
    img.alt = "result";
    const meta = document.createElement("div");
    meta.className = "meta";
    const names = document.createElement("div");
    names.className = "names";
    const shown = [e.uploads?.content, ...(e.uploads?.styles || [])].filter(Boolean).join(" × ");
    names.textContent = shown || e.id;
    names.title = shown;
    if (e.state === "cancelled") {
      const b = document.createElement("span");
      b.className = "badge";
      b.textContent = "stopped early";
      names.append(b);
    }
    const sub = document.createElement("div");
    sub.className = "sub";
    const when = e.created ? new Date(e.created * 1000).toLocaleString() : "";
    const size = Array.isArray(e.output) ? `${e.output[0]}×${e.output[1]}` : `${e.size}px`;
    sub.textContent = `${size} · ${when}`;
    // The pictures that made it, small.
    const inputs = document.createElement("div");
    inputs.className = "inputs";
    for (const file of [e.content, ...(e.styles || [])].filter(Boolean)) {
      const t = document.createElement("img");
      t.loading = "lazy";
      t.src = `/gallery/${e.id}/${file}`;
      t.alt = file;
      inputs.append(t);
    }
    const actions = document.createElement("div");
    actions.className = "actions";
    const dl = document.createElement("a");
    dl.className = "button";
    dl.href = img.src;
    dl.download = `nst-${e.id}.png`;
    dl.textContent = "Download";
    const del = document.createElement("button");
    del.type = "button";
    del.textContent = "Delete";
    del.addEventListener("click", async () => {
      if (!confirm("Delete this picture from the gallery?")) return;
      await fetch(`/gallery/${e.id}`, { method: "DELETE" });
      loadGallery();
    });
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.textContent = "Reuse";
    reuse.title = "Put this picture's size, iterations, strength, colours and optimizer in the form";
    reuse.addEventListener("click", () => reuseSettings(e));
    actions.append(dl, reuse, del);
    meta.append(names, sub, inputs, actions);
    card.append(img, meta);
    card.title = e.command || "";
    return card;
  }));
}

/// The form set as a gallery entry was made (the pictures stay as they are).
function reuseSettings(e) {
  if (e.size) $("size").value = e.size;
  if (e.iters) $("iters").value = e.iters;
  if (e.style_weight) {
    const s = Math.log10(e.style_weight / state.defaults.style_weight);
    $("strength").value = Math.max(-2, Math.min(2, Math.round(s * 10) / 10));
    $("strength").dispatchEvent(new Event("input"));
  }
  if (e.preserve_colors) $("preserve_colors").value = e.preserve_colors;
  if (e.optimizer) $("optimizer").value = e.optimizer;
  message(`Settings of ${e.uploads?.content || "that picture"} loaded: press Start.`, "info");
  window.scrollTo({ top: 0, behavior: "smooth" });
}

// ---- start-up -------------------------------------------------------------------------

async function init() {
  try {
    const info = await (await fetch("/info")).json();
    state.defaults = info.defaults;
    $("size").placeholder = info.defaults.size;
    $("size").value = info.defaults.size;
    $("iters").placeholder = info.defaults.iters;
    $("iters").value = info.defaults.iters;
    for (const d of info.devices) {
      const opt = [...$("device").options].find((o) => o.value === d.name);
      if (opt && !d.available) {
        opt.disabled = true;
        opt.textContent += " (unavailable)";
        opt.title = d.reason || "";
      }
    }
    const cuda = info.devices.find((d) => d.name === "cuda");
    $("device-pill").textContent = cuda && cuda.available ? "CUDA GPU available" : "CPU";
    $("device-pill").title = cuda && cuda.reason ? cuda.reason : "";
  } catch {
    message("The server cannot be reached.");
  }
  loadGallery();
  refreshQueue();
  setInterval(refreshQueue, 2000);
}

init();
