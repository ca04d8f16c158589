// The page's start-up: build every panel, read the model cards, and keep the server's state at the top.

import { apiKey, setApiKey } from "./api.js";
import { initAcgan } from "./panels/acgan.js";
import { initGlowSamples, initInterpolate, initManipulate } from "./panels/glow.js";
import { initInfogan } from "./panels/infogan.js";
import { initModels } from "./panels/models.js";
import { initSamples } from "./panels/samples.js";
import { initUploads } from "./panels/uploads.js";
import { addRequestBox, el, linkFieldErrors } from "./ui.js";

const $ = (selector) => document.querySelector(selector);
let retryTimer = null;

const context = {
  cards: [],
  /** The card of the loaded model of this family (or name), if any. */
  card(family) {
    return this.cards.find((card) => card.family === family || card.name === family);
  },
  has(family) {
    return Boolean(this.card(family));
  },
  refresh,
  /** The server's state in words at the top of the page; while not ready, look again every 2 s. */
  status(code, text) {
    $("#server-status").textContent = text;
    $("#server-status").dataset.state = code === 200 ? "ready" : "waiting";
    clearTimeout(retryTimer);
    if (code === 503) retryTimer = setTimeout(refresh, 2000);
  },
};

for (const panel of document.querySelectorAll(".panel")) addRequestBox(panel);
// Each panel's code, by the id of its section. A panel with `data-family` is fitted to that family's model card
// whenever the cards are read: which panel belongs to which family is said once, in the page.
const inits = {
  samples: initSamples,
  acgan: initAcgan,
  infogan: initInfogan,
  "glow-samples": initGlowSamples,
  interpolate: initInterpolate,
  manipulate: initManipulate,
  uploads: initUploads,
  models: initModels,
};
const panels = Object.fromEntries(Object.entries(inits).map(([id, init]) => [id, init($(`#${id}`), context)]));

/** Read the model cards, then fit every panel to what this server serves. */
async function refresh() {
  const cards = await panels.models.load();
  if (!cards) {
    $("#server-status").textContent = "Server: could not read the models (see the Models panel).";
    $("#server-status").dataset.state = "error";
    return;
  }
  context.cards = cards;
  panels.samples.models(cards);
  for (const section of document.querySelectorAll(".panel[data-family]")) {
    const card = context.card(section.dataset.family);
    if (card) panels[section.id]?.model?.(card);
  }
  // A panel (or button) whose model is not loaded says so, and does not send requests that can only fail.
  for (const holder of document.querySelectorAll("[data-family]")) {
    const missing = !context.has(holder.dataset.family);
    const buttons = holder.matches("button") ? [holder] : holder.querySelectorAll("button[type=submit]");
    buttons.forEach((button) => (button.disabled = missing));
    holder.querySelector?.(":scope > .unavailable")?.remove();
    if (missing && holder.matches(".panel")) {
      holder.querySelector("h2").after(el("p", { class: "unavailable", text: `The ${holder.dataset.family} model is not loaded on this server.` }));
    }
  }
  linkFieldErrors(document);
}

function initKeyForm() {
  const form = $("#key-form");
  const input = $("#api-key");
  input.value = apiKey();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    refresh();
  });
  $("#forget-key").addEventListener("click", () => {
    input.value = "";
    setApiKey("");
    refresh();
  });
}

initKeyForm();
linkFieldErrors(document);
refresh();
// For tests and the curious: resolves once the bundled example faces are in their pickers.
window.facegenReady = Promise.all([panels.interpolate.ready, panels.manipulate.ready, panels.uploads.ready]);
