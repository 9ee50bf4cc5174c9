// The DIGLM console: plain JavaScript over the service's own JSON routes (no library, no build).
// Reads /v2 (models), /v2/models/M/versions/V (metadata), .../gate (the calibration distributions),
// .../drift, .../stats (rates by differencing two polls) and /v2/models/M/rejections; sends
// "try it" inputs through .../infer. A 401 opens the key dialog; the key lives in sessionStorage.
"use strict";

const POLL_MS = 2000;
const KEY_STORE = "diglm.console.key";
const PAD_PIXELS = 224;        // the drawing pad's side in canvas pixels
const STROKE = 0.15;           // pen width, as a share of the pad's side
const SVG_NS = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
const state = {
  key: sessionStorage.getItem(KEY_STORE),
  versions: new Map(),   // "model/version" -> {model, version, meta, gate}
  previous: new Map(),   // "model/version" -> {time, requests, rejected}: the last poll's totals
  selected: null,        // "model/version" the try-it pad and the rejections follow
  rejectionsShown: "",   // ids of the rejections on screen, so that a poll redraws only on change
  chosenRejection: null,
  indexRefusedFor: undefined,  // the key the repository's index refused (it needs an admin key)
  ready: false,
};
// What the page sent and got last: the browser tests compare it with the API's own answer.
window.diglmConsole = {lastSent: null, lastAnswer: null, errors: []};
window.addEventListener("error", (event) => window.diglmConsole.errors.push(String(event.message)));
window.addEventListener("unhandledrejection", (event) => window.diglmConsole.errors.push(String(event.reason)));

class NeedsKey extends Error {}

async function api(path, options = {}) {
  const headers = {...(options.headers || {})};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const response = await fetch(path, {...options, headers});
  const body = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`}));
  if (response.status === 401) {
    askForKey(body.error);
    throw new NeedsKey(body.error);
  }
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// ---- the API key ----
// `reason`: the service's refusal (null: the operator asked to change the key).
function askForKey(reason) {
  const dialog = $("key-dialog");
  $("key-reason").textContent = reason === null ? "Enter another API key." : state.key ? `The key was refused: ${reason}` : "This service needs an API key.";
  if (!dialog.open) dialog.showModal();
}

$("key-form").addEventListener("submit", () => {
  state.key = $("key-input").value.trim();
  sessionStorage.setItem(KEY_STORE, state.key);
  $("key-input").value = "";
  $("change-key").hidden = false;
  refresh();
});
$("change-key").addEventListener("click", () => askForKey(null));

// ---- helpers ----
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value; else node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = (value, digits = 3) => (value === null || value === undefined ? "—" : Number(value).toPrecision(digits));
const pValue = (value) => (value === null || value === undefined ? "—" : value < 1e-3 ? Number(value).toExponential(1) : Number(value).toFixed(3));
const versionPath = (model, version) => `/v2/models/${encodeURIComponent(model)}/versions/${encodeURIComponent(version)}`;
const setStatus = (text, error = false) => { $("status").textContent = text; $("status").classList.toggle("error", error); };

// The model's input as an image: [..., H, W] with the leading dimensions as channels (1 or 3).
function imageShape(meta) {
  const shape = meta.inputs[0].shape.slice(1);
  if (shape.length < 2) return null;
  const [height, width] = shape.slice(-2);
  const channels = shape.slice(0, -2).reduce((a, b) => a * b, 1);
  return channels === 1 || channels === 3 ? {height, width, channels, shape} : null;
}

const inputSize = (meta) => meta.inputs[0].shape.slice(1).reduce((a, b) => a * b, 1);
const inputRange = (meta) => meta.input_range || [0, 1];

// A value in the input range moved to the nearest of the model's discrete levels, if it has them.
function onLevels(meta, value) {
  if (!meta.input_levels) return value;
  const [low, high] = inputRange(meta);
  const step = (high - low) / (meta.input_levels - 1);
  return low + Math.round((value - low) / step) * step;
}

// Values in the model's input range drawn on a canvas: ink (high values) dark on white.
function paint(canvas, values, meta) {
  const image = imageShape(meta);
  if (!image) return paintVector(canvas, values, meta);
  const [low, high] = inputRange(meta);
  const {height, width, channels} = image;
  canvas.width = width; canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  const plane = width * height;
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      const value = values[(channels === 3 ? c * plane : 0) + i];
      const share = Math.min(1, Math.max(0, (value - low) / (high - low)));
      pixels.data[4 * i + c] = Math.round(255 * (channels === 3 ? share : 1 - share));
    }
    pixels.data[4 * i + 3] = 255;
  }
  context.putImageData(pixels, 0, 0);
}

// A vector input (no image shape): one bar per feature, scaled to the largest magnitude.
function paintVector(canvas, values) {
  canvas.width = 64; canvas.height = 64;
  const context = canvas.getContext("2d");
  const largest = Math.max(1e-12, ...Array.from(values, Math.abs));
  const step = 64 / values.length;
  context.fillStyle = "#5470c6";
  values.forEach((value, i) => {
    const height = 30 * value / largest;
    context.fillRect(i * step, 32 - Math.max(height, 0), Math.max(step - 1, 1), Math.abs(height));
  });
}

function decodeInput(input) {
  const bytes = Uint8Array.from(atob(input.base64), (c) => c.charCodeAt(0));
  return new Float32Array(bytes.buffer);
}

// ---- charts ----
// A histogram of a score's calibration values with `value` marked (off-scale values at the edge).
function histogram(score, value, pvalue) {
  const {edges, counts} = score.calibration.histogram;
  const width = 320, height = 96, top = 14, bottom = 16, plot = height - top - bottom;
  const low = edges[0], high = edges[edges.length - 1], span = high - low || 1;
  const x = (v) => 4 + (width - 8) * (v - low) / span;
  const most = Math.max(1, ...counts);
  const chart = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img", class: "histogram", "data-score": score.name,
    "aria-label": `${score.name}: calibration histogram with the input marked`});
  counts.forEach((count, i) => {
    const barHeight = plot * count / most;
    chart.append(svg("rect", {class: "bar", x: x(edges[i]), y: top + plot - barHeight, width: Math.max(x(edges[i + 1]) - x(edges[i]) - 0.5, 0.5), height: barHeight}));
  });
  chart.append(svg("line", {class: "axis", x1: 0, x2: width, y1: top + plot, y2: top + plot}));
  chart.append(svg("text", {x: 4, y: height - 3}, fmt(low, 4)));
  chart.append(svg("text", {x: width - 4, y: height - 3, "text-anchor": "end"}, fmt(high, 4)));
  const title = `${score.name} (${score.tail} tail) = ${fmt(value, 4)}, p = ${pValue(pvalue)}`;
  chart.append(svg("text", {x: 4, y: 10}, title));
  if (value !== null && value !== undefined && Number.isFinite(value)) {
    const off = value < low ? "◀ off scale" : value > high ? "off scale ▶" : null;
    const at = Math.min(width - 2, Math.max(2, x(value)));
    chart.append(svg("line", {class: "marker", x1: at, x2: at, y1: top, y2: top + plot}));
    if (off) chart.append(svg("text", {x: width / 2, y: top + 12, "text-anchor": "middle", class: "bad"}, off));
  }
  return chart;
}

// One bar per class, the predicted one highlighted.
function probabilityBars(probabilities, classes, label) {
  const width = 320, row = 14, height = row * probabilities.length + 4;
  const chart = svg("svg", {viewBox: `0 0 ${width} ${height}`, role: "img", id: "probabilities", "aria-label": "class probabilities"});
  probabilities.forEach((p, i) => {
    const y = 2 + i * row;
    chart.append(svg("text", {x: 0, y: y + 10}, String(classes ? classes[i] : i)));
    chart.append(svg("rect", {class: i === label ? "top" : "bar", x: 40, y, width: Math.max(0.5, (width - 90) * p), height: row - 3}));
    chart.append(svg("text", {x: 44 + (width - 90) * p, y: y + 10}, p.toFixed(3)));
  });
  return chart;
}

// Per gate score: its value and p-value against the calibration histogram.
function evidence(gate, scores) {
  return el("div", {class: "evidence"}, ...gate.scores.map((score) => histogram(score, scores[score.name]?.value, scores[score.name]?.p_value)));
}

function decisionLine(accepted, pvalue, reason) {
  return el("p", {class: `decision ${accepted ? "accept" : "reject"}`, id: "decision"},
    accepted ? `accepted (p = ${pValue(pvalue)})` : `rejected (p = ${pValue(pvalue)}), reason: ${reason || "—"}`);
}

// ---- models and rates ----
async function loadVersions() {
  const models = (await api("/v2")).models;
  const found = new Map();
  for (const model of models) {
    const {versions} = await api(`/v2/models/${encodeURIComponent(model)}`);
    for (const version of versions) {
      const id = `${model}/${version}`;
      const known = state.versions.get(id);
      if (known) { found.set(id, known); continue; }
      const [meta, gate] = await Promise.all([api(versionPath(model, version)), api(`${versionPath(model, version)}/gate?bins=30`)]);
      found.set(id, {model, version, meta, gate});
    }
  }
  state.versions = found;
  const select = $("model");
  const options = [...found.keys()];
  if (select.options.length !== options.length || options.some((id, i) => select.options[i].value !== id)) {
    select.replaceChildren(...options.map((id) => el("option", {value: id}, id)));
  }
  if (!found.has(state.selected)) selectVersion(options[0] || null);
  select.value = state.selected || "";
}

// The repository's index (state and reason of versions that do not serve) needs an admin key when
// keys are set: refused once (403), it is not asked for again with the same key.
async function repositoryIndex() {
  if (state.indexRefusedFor === state.key) return null;
  try {
    return await api("/v2/repository/index", {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"});
  } catch (error) {
    if (error instanceof NeedsKey) throw error;
    state.indexRefusedFor = state.key;
    return null;
  }
}

// Each cell named after its column, for the narrow layout that stacks a row's cells (console.css).
function labelled(row) {
  const headings = [...$("models").tHead.rows[0].cells].map((cell) => cell.textContent);
  [...row.cells].forEach((cell, i) => cell.setAttribute("data-label", headings[i]));
  return row;
}

function rateCell(rates) {
  if (!rates) return el("td", {}, "—");
  const chips = Object.entries(rates.rejected).map(([reason, rate]) => el("span", {class: "chip bad"}, `${reason} ${rate.toFixed(2)}`));
  return el("td", {}, ...(chips.length ? chips : ["0"]));
}

async function pollModels() {
  const now = performance.now();
  const rows = [];
  for (const [id, served] of state.versions) {
    const path = versionPath(served.model, served.version);
    const [drift, stats] = await Promise.all([api(`${path}/drift`), api(`${path}/stats`)]);
    const totals = stats.model_stats[0];
    const current = {time: now, requests: totals.inference_stats.success.count, rejected: totals.gate.rejected};
    const before = state.previous.get(id);
    state.previous.set(id, current);
    let rates = null;
    if (before && now > before.time) {
      const seconds = (now - before.time) / 1000;
      rates = {requests: (current.requests - before.requests) / seconds, rejected: {}};
      for (const [reason, count] of Object.entries(current.rejected)) rates.rejected[reason] = (count - (before.rejected[reason] || 0)) / seconds;
    }
    const driftText = drift.p_val === null
      ? `window filling, ${drift.instances} of ${drift.window_size}`
      : `${drift.is_drift ? "drift" : "no drift"}, p = ${pValue(drift.p_val)}`;
    rows.push(labelled(el("tr", {"data-id": id},
      el("td", {}, served.model), el("td", {}, served.version), el("td", {class: "good"}, "READY"),
      el("td", {}, el("code", {title: served.meta.digest}, `${served.meta.digest.slice(0, 12)}…${served.meta.digest.slice(-6)}`)),
      el("td", {}, String(served.gate.alpha)), el("td", {}, String(served.gate.calibration_size)),
      el("td", {class: drift.is_drift ? "bad" : ""}, driftText),
      el("td", {}, rates ? rates.requests.toFixed(2) : "—"), rateCell(rates))));
  }
  const index = await repositoryIndex();
  for (const entry of index || []) {
    if (entry.state === "READY" || state.versions.has(`${entry.name}/${entry.version}`)) continue;
    rows.push(labelled(el("tr", {}, el("td", {}, entry.name), el("td", {}, entry.version || "—"),
      el("td", {class: "bad", title: entry.reason || ""}, `${entry.state}${entry.reason ? `: ${entry.reason}` : ""}`))));
  }
  $("models").tBodies[0].replaceChildren(...rows);
}

// ---- recent rejections ----
async function pollRejections() {
  const served = state.versions.get(state.selected);
  if (!served) return;
  const found = await api(`/v2/models/${encodeURIComponent(served.model)}/rejections?limit=24`);
  $("rejections-hint").textContent = found.kept === 0
    ? "This service keeps no rejections (DIGLM_RECENT_REJECTIONS=0)."
    : `The newest ${found.rejections.length} of the last ${found.kept} rejections kept, newest first; select one to see its evidence.`;
  const shown = found.rejections.map((record) => `${record.request_id}#${record.instance}`).join(",");
  if (shown === state.rejectionsShown) return;
  state.rejectionsShown = shown;
  $("rejections").replaceChildren(...found.rejections.map((record) => {
    const id = `${record.request_id}#${record.instance}`;
    const canvas = el("canvas", {class: "pixels"});
    const version = state.versions.get(`${record.model}/${record.version}`) || served;
    if (record.input) paint(canvas, decodeInput(record.input), version.meta);
    const button = el("button", {type: "button", "data-id": id, "aria-pressed": String(state.chosenRejection === id),
      title: `${record.time} ${record.request_id}`}, canvas, el("span", {}, record.reason || "—"), el("span", {}, `p ${pValue(record.p_value)}`));
    button.addEventListener("click", () => showRejection(record, id));
    return el("li", {}, button);
  }));
}

function showRejection(record, id) {
  state.chosenRejection = id;
  for (const button of $("rejections").querySelectorAll("button")) button.setAttribute("aria-pressed", String(button.dataset.id === id));
  const served = state.versions.get(`${record.model}/${record.version}`);
  const detail = $("rejection-detail");
  if (!served) {
    detail.replaceChildren(el("p", {class: "hint"}, `version ${record.version} of ${record.model} no longer serves; its calibration is not available`));
    return;
  }
  const answer = record.label !== undefined ? `label ${record.label} (probability ${fmt(record.probability)})` : `mean ${fmt(record.mean)}`;
  detail.replaceChildren(
    el("h3", {}, `${record.model} version ${record.version}, ${record.time}`),
    el("p", {class: "hint"}, `request ${record.request_id}, instance ${record.instance}, ${record.protocol}; ${answer}; log p(x) ${fmt(record.log_px, 5)} nats`),
    decisionLine(false, record.p_value, record.reason),
    evidence(served.gate, record.scores));
}

// ---- try it ----
const pad = $("pad");
const padContext = pad.getContext("2d");
pad.width = pad.height = PAD_PIXELS;
let drawing = null;
let padValues = null;  // an input that came from a file instead of the pad: Float32Array of one instance

function clearPad() {
  padContext.fillStyle = "#fff";
  padContext.fillRect(0, 0, PAD_PIXELS, PAD_PIXELS);
  padValues = null;
  showSeen();
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * PAD_PIXELS / box.width, (event.clientY - box.top) * PAD_PIXELS / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  if (padValues) clearPad();
  drawing = padPoint(event);
  pad.setPointerCapture(event.pointerId);
  stroke(drawing, drawing);
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const point = padPoint(event);
  stroke(drawing, point);
  drawing = point;
});
for (const type of ["pointerup", "pointercancel"]) pad.addEventListener(type, () => { drawing = null; showSeen(); });

function stroke(from, to) {
  padContext.strokeStyle = "#000";
  padContext.lineWidth = STROKE * PAD_PIXELS;
  padContext.lineCap = padContext.lineJoin = "round";
  padContext.beginPath();
  padContext.moveTo(...from);
  padContext.lineTo(...to);
  padContext.stroke();
}

// The pad at the model's input size: each input pixel is the mean ink of its block of the pad,
// scaled to the model's input range (on its discrete levels when it was trained on them).
function padInput(meta) {
  const image = imageShape(meta);
  const {height, width, channels} = image;
  const [low, high] = inputRange(meta);
  const pixels = padContext.getImageData(0, 0, PAD_PIXELS, PAD_PIXELS).data;
  const values = new Float32Array(channels * height * width);
  for (let row = 0; row < height; row++) {
    for (let column = 0; column < width; column++) {
      const [y0, y1] = [Math.floor(row * PAD_PIXELS / height), Math.floor((row + 1) * PAD_PIXELS / height)];
      const [x0, x1] = [Math.floor(column * PAD_PIXELS / width), Math.floor((column + 1) * PAD_PIXELS / width)];
      let ink = 0;
      for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) ink += 1 - pixels[4 * (y * PAD_PIXELS + x)] / 255;
      const value = onLevels(meta, low + (high - low) * ink / ((y1 - y0) * (x1 - x0)));
      for (let c = 0; c < channels; c++) values[c * height * width + row * width + column] = value;
    }
  }
  return values;
}

function currentInput(meta) {
  return padValues || (imageShape(meta) ? padInput(meta) : null);
}

function showSeen() {
  const served = state.versions.get(state.selected);
  if (!served) return;
  const values = currentInput(served.meta);
  if (values) paint($("seen"), values, served.meta);
}

function selectVersion(id) {
  state.selected = id;
  state.rejectionsShown = "";
  const served = state.versions.get(id);
  if (!served) return;
  const image = imageShape(served.meta);
  const shape = served.meta.inputs[0].shape.slice(1).join("×");
  $("pad-hint").textContent = image
    ? `Draw, or drop an image or an NPZ here. The model sees ${shape}, values ${inputRange(served.meta).join(" to ")}:`
    : `This model's input is a vector of ${shape}: drop an NPZ or NPY file here. The model sees:`;
  pad.hidden = !image;
  clearPad();
}

$("model").addEventListener("change", (event) => { selectVersion(event.target.value); $("try-result").replaceChildren(); pollRejections().catch(report); });
$("clear").addEventListener("click", () => { clearPad(); $("try-result").replaceChildren(); });
$("send").addEventListener("click", () => send().catch(report));

async function send() {
  const served = state.versions.get(state.selected);
  if (!served) return;
  const values = currentInput(served.meta);
  if (!values) { $("try-result").replaceChildren(el("p", {class: "bad"}, "drop an NPZ or NPY file with one input first")); return; }
  const data = Array.from(values);
  const requestId = `console-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  const sent = window.diglmConsole.lastSent = {model: served.model, version: served.version, shape: [1, ...served.meta.inputs[0].shape.slice(1)], data, requestId};
  const body = {id: requestId, inputs: [{name: "input", shape: sent.shape, datatype: "FP32", data}]};
  const answer = await api(`${versionPath(served.model, served.version)}/infer`,
    {method: "POST", headers: {"Content-Type": "application/json", "X-Request-ID": requestId}, body: JSON.stringify(body)});
  window.diglmConsole.lastAnswer = answer;
  const outputs = Object.fromEntries(answer.outputs.map((output) => [output.name, output.data]));
  const scores = Object.fromEntries(served.gate.scores.map((score) => [score.name, {value: outputs[`score_${score.name}`]?.[0], p_value: outputs[`p_value_${score.name}`]?.[0]}]));
  const accepted = outputs.accepted[0];
  const parts = [];
  if (outputs.label) {
    const label = outputs.label[0];
    const classes = served.meta.classes;
    parts.push(el("p", {}, "label ", el("span", {class: "label", id: "label"}, String(classes ? classes[label] : label))),
      probabilityBars(outputs.model_probabilities[0] ? outputs.model_probabilities : outputs.probabilities, classes, label),
      el("p", {class: "hint"}, accepted ? "p(y|x) of the model's head." : "p(y|x) of the model's head; rejected, the answer's probabilities are the label prior (eq. 10)."));
  } else {
    parts.push(el("p", {id: "label"}, `mean ${fmt(outputs.mean?.[0])}, variance ${fmt(outputs.variance?.[0])}`));
  }
  parts.push(decisionLine(accepted, outputs.p_value[0], outputs.rejected_by[0]),
    el("p", {class: "hint"}, `log p(x) ${fmt(outputs.log_px[0], 5)} nats, version ${answer.model_version}`),
    el("h3", {}, "Evidence per gate score"), evidence(served.gate, scores));
  $("try-result").replaceChildren(...parts);
  pollRejections().catch(report);
}

// ---- dropped files: images (fitted to the input size, grey, dark ink on light paper inverted) and NPZ/NPY ----
pad.addEventListener("dragover", (event) => { event.preventDefault(); pad.classList.add("dropping"); });
pad.addEventListener("dragleave", () => pad.classList.remove("dropping"));
pad.addEventListener("drop", (event) => {
  event.preventDefault();
  pad.classList.remove("dropping");
  if (event.dataTransfer.files[0]) useFile(event.dataTransfer.files[0]).catch(report);
});
$("file").addEventListener("change", (event) => { if (event.target.files[0]) useFile(event.target.files[0]).catch(report); event.target.value = ""; });

async function useFile(file) {
  const served = state.versions.get(state.selected);
  if (!served) return;
  const meta = served.meta;
  const values = /\.(npz|npy)$/i.test(file.name) ? await arrayInput(file, meta) : await imageInput(file, meta);
  padValues = values;
  padContext.fillStyle = "#fff";
  padContext.fillRect(0, 0, PAD_PIXELS, PAD_PIXELS);
  showSeen();
  if (imageShape(meta)) {
    padContext.imageSmoothingEnabled = false;
    padContext.drawImage($("seen"), 0, 0, PAD_PIXELS, PAD_PIXELS);
  }
  await send();
}

async function imageInput(file, meta) {
  const image = imageShape(meta);
  if (!image) throw new Error("this model's input is not an image: drop an NPZ or NPY file");
  const bitmap = await createImageBitmap(file);
  const {height, width, channels} = image;
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext("2d");
  context.fillStyle = "#fff";
  context.fillRect(0, 0, width, height);
  const scale = Math.min(width / bitmap.width, height / bitmap.height);
  context.drawImage(bitmap, (width - bitmap.width * scale) / 2, (height - bitmap.height * scale) / 2, bitmap.width * scale, bitmap.height * scale);
  const pixels = context.getImageData(0, 0, width, height).data;
  const plane = width * height;
  const grey = Float32Array.from({length: plane}, (_, i) => (pixels[4 * i] + pixels[4 * i + 1] + pixels[4 * i + 2]) / 765);
  const lightPaper = grey.reduce((a, b) => a + b, 0) / plane > 0.5;
  const [low, high] = inputRange(meta);
  const values = new Float32Array(channels * plane);
  for (let c = 0; c < channels; c++) {
    for (let i = 0; i < plane; i++) {
      const share = channels === 3 ? pixels[4 * i + c] / 255 : lightPaper ? 1 - grey[i] : grey[i];
      values[c * plane + i] = onLevels(meta, low + (high - low) * share);
    }
  }
  return values;
}

// One instance from the first array of an NPZ (a zip of .npy files, stored or deflated) or an NPY.
async function arrayInput(file, meta) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const npy = /\.npz$/i.test(file.name) ? await firstZipEntry(bytes) : bytes;
  const {values, shape} = parseNpy(npy);
  const size = inputSize(meta);
  if (values.length === 0 || values.length % size !== 0) {
    throw new Error(`the array's shape [${shape}] does not hold inputs of shape [${meta.inputs[0].shape.slice(1)}]`);
  }
  return Float32Array.from(values.subarray(0, size));
}

// The first file of a zip, from its local header: its size there, or in the header's zip64 field
// (numpy writes both); a writer that puts the size after the data only is refused.
async function firstZipEntry(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(0, true) !== 0x04034b50) throw new Error("not an NPZ file (no zip header)");
  const flags = view.getUint16(6, true), method = view.getUint16(8, true);
  const nameLength = view.getUint16(26, true), extraLength = view.getUint16(28, true);
  const start = 30 + nameLength + extraLength;
  let compressed = view.getUint32(18, true);
  if (compressed === 0xffffffff) {
    for (let at = 30 + nameLength; at + 4 <= start; at += 4 + view.getUint16(at + 2, true)) {
      if (view.getUint16(at, true) !== 0x0001) continue;
      const skip = view.getUint32(22, true) === 0xffffffff ? 8 : 0;  // the zip64 field: uncompressed size first, when it is there
      compressed = Number(view.getBigUint64(at + 4 + skip, true));
    }
  }
  if ((flags & 0x8) && compressed === 0) throw new Error("this NPZ keeps its sizes after the data; save it with numpy.savez");
  const data = bytes.subarray(start, start + compressed);
  if (method === 0) return data;
  if (method !== 8) throw new Error(`NPZ compression method ${method} is not supported`);
  const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const NPY_TYPES = {f4: Float32Array, f8: Float64Array, u1: Uint8Array, i1: Int8Array, u2: Uint16Array, i2: Int16Array, u4: Uint32Array, i4: Int32Array, b1: Uint8Array};

function parseNpy(bytes) {
  if (bytes[0] !== 0x93 || String.fromCharCode(...bytes.subarray(1, 6)) !== "NUMPY") throw new Error("not an NPY array");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const offset = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(offset, offset + headerLength));
  const descr = /'descr':\s*'([<>|=])(\w+)'/.exec(header), order = /'fortran_order':\s*(True|False)/.exec(header), shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !order || !shape) throw new Error("the NPY header cannot be read");
  const [, endian, code] = descr;
  if (endian === ">" || !(code in NPY_TYPES)) throw new Error(`NPY dtype ${descr[1]}${code} is not supported: use little-endian numbers`);
  if (order[1] === "True") throw new Error("Fortran-ordered NPY arrays are not supported: save a C-ordered array");
  const dimensions = shape[1].split(",").map((part) => part.trim()).filter(Boolean).map(Number);
  const type = NPY_TYPES[code];
  const start = offset + headerLength;
  const count = dimensions.reduce((a, b) => a * b, 1);
  const copy = bytes.slice(start, start + count * type.BYTES_PER_ELEMENT);  // aligned for the typed array
  if (copy.length !== count * type.BYTES_PER_ELEMENT) throw new Error(`the NPY array is cut short: ${copy.length} of ${count * type.BYTES_PER_ELEMENT} bytes`);
  return {values: new type(copy.buffer, 0, count), shape: dimensions};
}

// ---- the loop ----
function report(error) {
  if (error instanceof NeedsKey) { setStatus("waiting for an API key", true); return; }
  setStatus(String(error.message || error), true);
  $("try-result").prepend(el("p", {class: "bad"}, String(error.message || error)));
}

let polling = false;
async function refresh() {
  if (polling) return;
  polling = true;
  try {
    await loadVersions();
    await Promise.all([pollModels(), pollRejections()]);
    setStatus(`live, ${new Date().toLocaleTimeString()}`);
    if (!state.ready) {
      state.ready = true;
      $("change-key").hidden = !state.key;
      performance.mark("console-ready");
    }
  } catch (error) {
    if (error instanceof NeedsKey) setStatus("waiting for an API key", true);
    else setStatus(`cannot reach the service: ${error.message}`, true);
  } finally {
    polling = false;
  }
}

clearPad();
refresh();
setInterval(refresh, POLL_MS);
