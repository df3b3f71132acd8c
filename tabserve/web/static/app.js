// The prediction page: a form per model, built from the model's schema (GET /v1/models), sent to
// the V1 API. The server is the only validator: its 422 details are shown next to their fields.
// After a prediction, "Explain" asks POST :explain for the same instance and draws each
// feature's contribution as a bar.
"use strict";

// Relative to /ui/, so the page keeps working behind a path prefix.
const API = "../v1/models";
const TOKEN_KEY = "tabserve-api-token";
const FEATURE_ERROR = /^instances\[0\]\.(.+)$/;

const $ = (id) => document.getElementById(id);
let models = [];
let current = null;
let predicted = null; // the instance of the prediction shown, which "Explain" explains

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function humanName(name) {
  const words = name.replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

async function callApi(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && askForToken()) return callApi(path, options);
  return response;
}

function askForToken() {
  const token = window.prompt("This server needs an API token:");
  if (!token) return false;
  sessionStorage.setItem(TOKEN_KEY, token.trim());
  return true;
}

// --- the model list -----------------------------------------------------------------------------
async function loadModels() {
  const response = await callApi(API);
  if (!response.ok) throw new Error(`GET ${API} answered ${response.status}`);
  models = (await response.json()).models;
  const nav = $("models");
  nav.replaceChildren();
  for (const model of models) {
    const button = element("button", { type: "button", "data-model": model.name }, model.title);
    button.addEventListener("click", () => selectModel(model.name));
    nav.append(button);
  }
  const wanted = location.hash.slice(1);
  selectModel(models.some((m) => m.name === wanted) ? wanted : models[0].name);
}

function selectModel(name) {
  current = models.find((m) => m.name === name);
  history.replaceState(null, "", `#${name}`);
  for (const button of $("models").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.model === name));
  }
  $("model-title").textContent = current.title;
  $("model-use-case").textContent = current.use_case;
  $("fields").replaceChildren(...current.features.map(fieldFor));
  $("result").hidden = true;
  $("form-error").hidden = true;
  $("model").hidden = false;
}

// --- one form field per feature ------------------------------------------------------------------
function hintFor(feature) {
  const parts = [feature.description];
  if (feature.minimum !== undefined) parts.push(`${feature.minimum} to ${feature.maximum}.`);
  if (!feature.required) parts.push("Optional.");
  return parts.join(" ");
}

function choice(options) {
  const select = element("select");
  for (const [value, label] of options) select.append(element("option", { value }, label));
  return select;
}

function inputFor(feature) {
  switch (feature.kind) {
    case "boolean":
      return choice([["", "—"], ["true", "yes"], ["false", "no"]]);
    case "category":
      return choice([["", "—"], ...feature.categories.map((c) => [c, c])]);
    case "text":
      return element("textarea", { rows: "3" });
    default: // number, integer: plain text, so whatever is typed reaches the server's checks
      return element("input", { type: "text", inputmode: "decimal", autocomplete: "off" });
  }
}

function fieldFor(feature) {
  const wrapper = element("div", { class: "field" });
  const id = `feature-${feature.name}`;
  const label = element("label", { for: id }, humanName(feature.name));
  if (feature.required) label.append(element("span", { class: "required", title: "required" }, "*"));
  const input = inputFor(feature);
  Object.assign(input, { id, name: feature.name });
  input.setAttribute("aria-describedby", `hint-${feature.name} error-${feature.name}`);
  wrapper.append(
    label,
    input,
    element("small", { id: `hint-${feature.name}`, class: "hint" }, hintFor(feature)),
    element("small", { id: `error-${feature.name}`, class: "error", role: "alert" }),
  );
  return wrapper;
}

function valueOf(feature, raw) {
  if (feature.kind === "boolean") return raw === "true";
  if (feature.kind === "number" || feature.kind === "integer") {
    const number = Number(raw);
    return Number.isFinite(number) ? number : raw; // not a number: the server says why
  }
  return raw;
}

function instanceFromForm() {
  const instance = {};
  for (const feature of current.features) {
    const raw = $(`feature-${feature.name}`).value;
    if (raw.trim() !== "") instance[feature.name] = valueOf(feature, raw.trim());
  }
  return instance;
}

// --- predicting ---------------------------------------------------------------------------------
function clearErrors() {
  for (const node of document.querySelectorAll(".field .error")) node.textContent = "";
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  $("form-error").hidden = true;
}

function showErrors(body) {
  const unplaced = [];
  for (const detail of body.details || []) {
    const match = FEATURE_ERROR.exec(detail.field);
    const slot = match && $(`error-${match[1]}`);
    if (slot) {
      slot.textContent = detail.reason;
      $(`feature-${match[1]}`).setAttribute("aria-invalid", "true");
    } else {
      unplaced.push(`${detail.field}: ${detail.reason}`);
    }
  }
  if (unplaced.length || !(body.details || []).length) {
    $("form-error").textContent = unplaced.length ? unplaced.join("; ") : body.error;
    $("form-error").hidden = false;
  }
}

function showResult(prediction, modelTag) {
  $("result-label").textContent = prediction.label;
  const ranked = Object.entries(prediction.probabilities).sort((a, b) => b[1] - a[1]);
  $("result-probabilities").replaceChildren(
    ...ranked.map(([name, probability]) => {
      const percent = `${(probability * 100).toFixed(1)}%`;
      const item = element("li", { "data-class": name });
      const bar = element("span", { class: "bar" });
      bar.style.width = percent;
      item.append(element("span", { class: "class" }, name), bar, element("span", { class: "value" }, percent));
      return item;
    }),
  );
  $("result-model").textContent = modelTag;
  $("explanation").hidden = true;
  $("result").hidden = false;
}

// --- explaining ---------------------------------------------------------------------------------
// One bar per item, from the middle of its track: right for a positive contribution, left for a
// negative one, lengths relative to the largest. Sizes through the CSSOM: the CSP forbids inline
// style attributes, not this.
function contributionBars(items, label = (name) => name) {
  const largest = Math.max(...items.map(([, value]) => Math.abs(value)), 1e-12);
  return items.map(([name, value]) => {
    const item = element("li", { "data-name": name, "data-contribution": String(value) });
    const track = element("span", { class: "track" });
    const bar = element("span", { class: `bar ${value >= 0 ? "up" : "down"}` });
    const half = (Math.abs(value) / largest) * 50;
    bar.style.width = `${half}%`;
    bar.style.left = `${value >= 0 ? 50 : 50 - half}%`;
    track.append(bar);
    const shown = `${value >= 0 ? "+" : ""}${value.toFixed(3)}`;
    item.append(element("span", { class: "name", title: name }, label(name)), track, element("span", { class: "value" }, shown));
    return item;
  });
}

function showExplanation(explanation) {
  // The predicted class's explanation when there is one (multi-class); a binary model explains
  // its second class only.
  const output = explanation.outputs.find((o) => o.class === explanation.label) || explanation.outputs[0];
  const section = $("explanation");
  section.dataset.class = output.class;
  section.dataset.baseValue = String(output.base_value);
  section.dataset.margin = String(output.margin);
  $("explanation-title").textContent = `Why: contributions to the ${explanation.scale} of “${output.class}”`;
  $("explanation-summary").textContent =
    `Base value ${output.base_value.toFixed(3)} + contributions = ${output.margin.toFixed(3)}. ` +
    "Red pushes towards this class, blue away from it.";
  $("contributions").replaceChildren(
    ...contributionBars(output.top.map((t) => [t.feature, t.contribution]), humanName),
  );
  const tokens = explanation.tokens || [];
  $("tokens").replaceChildren(...contributionBars(tokens.map((t) => [t.token, t.contribution])));
  $("tokens-section").hidden = tokens.length === 0;
  section.hidden = false;
}

async function explain() {
  const button = $("explain");
  button.disabled = true;
  $("form-error").hidden = true;
  try {
    const response = await callApi(`${API}/${current.name}:explain`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ instances: [predicted] }),
    });
    const body = await response.json();
    if (response.ok) showExplanation(body.explanations[0]);
    else showErrors(body);
  } catch (error) {
    showErrors({ error: `The server could not be reached: ${error.message}` });
  } finally {
    button.disabled = false;
  }
}

async function predict(event) {
  event.preventDefault();
  clearErrors();
  $("result").hidden = true;
  const button = $("predict");
  button.disabled = true;
  try {
    const instance = instanceFromForm();
    const response = await callApi(`${API}/${current.name}:predict`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ instances: [instance] }),
    });
    const body = await response.json();
    predicted = instance;
    if (response.ok) showResult(body.predictions[0], body.model);
    else showErrors(body);
  } catch (error) {
    showErrors({ error: `The server could not be reached: ${error.message}` });
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("predict-form").addEventListener("submit", predict);
  $("explain").addEventListener("click", explain);
  loadModels().catch((error) => {
    $("models").replaceChildren();
    $("load-error").textContent = `The models could not be loaded: ${error.message}`;
    $("load-error").hidden = false;
  });
});
