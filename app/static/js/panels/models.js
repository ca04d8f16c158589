// Models: the cards of GET /models, and the server's state from GET /ready (also shown at the top of the page).

import { el, pretty, runJob, showResult } from "../ui.js";

const isScalar = (value) => value === null || ["string", "number", "boolean"].includes(typeof value);

function formatValue(value) {
  if (typeof value === "number" && !Number.isInteger(value)) return String(Number(value.toPrecision(4)));
  return String(value);
}

/** Scalars as a definition list; nested values (per-attribute tables...) folded away as JSON. */
function facts(title, object) {
  const entries = Object.entries(object || {});
  if (!entries.length) return null;
  const scalars = entries.filter(([, value]) => isScalar(value));
  const nested = entries.filter(([, value]) => !isScalar(value));
  return el("div", { class: "facts" },
    el("h4", { text: title }),
    el("dl", {}, ...scalars.flatMap(([key, value]) => [el("dt", { text: pretty(key) }), el("dd", { text: formatValue(value) })])),
    nested.length ? el("details", {}, el("summary", { text: `more: ${nested.map(([key]) => pretty(key)).join(", ")}` }),
      el("pre", { text: JSON.stringify(Object.fromEntries(nested), null, 1) })) : null);
}

function card(model) {
  const millions = (model.parameters / 1e6).toFixed(model.parameters < 1e6 ? 2 : 1);
  return el("article", { class: "card" },
    el("h3", { text: model.name }),
    el("p", {}, el("strong", { text: model.family }), ` · ${model.capabilities.join(", ") || "no capabilities"} · ${millions} M parameters`),
    el("p", { class: "hint" }, `${model.file} · sha256 ${model.sha256.slice(0, 12)}… · ${model.device}, ${model.precision} · ${model.attributes.length} attributes`),
    facts("Metrics", model.metrics),
    facts("Training", model.training),
    facts("Config", model.config));
}

/** GET /ready's answer in words. */
export function describeReady(status, body) {
  const count = `${body.loaded.length} model${body.loaded.length === 1 ? "" : "s"}`;
  if (status === 200) return `Server ready: ${count} (${body.loaded.join(", ")}).`;
  const missing = body.missing && body.missing.length ? ` Missing: ${body.missing.join(", ")}.` : "";
  const failed = body.failed_files && Object.keys(body.failed_files).length
    ? ` Failed to load: ${Object.keys(body.failed_files).join(", ")}.` : "";
  return `Server not ready (503): ${body.detail || body.status}.${missing}${failed}`;
}

export function initModels(panel, context) {
  panel.querySelector("form").addEventListener("submit", (event) => {
    event.preventDefault();
    context.refresh();
  });

  return {
    /** Fetch the cards and the server's state as this panel's job; resolves with the cards, or undefined. */
    load() {
      return runJob(panel, async (job) => {
        const [models, ready] = await Promise.all([
          job.send({ method: "GET", path: "/models" }),
          job.send({ method: "GET", path: "/ready", expect: [503] }),
        ]);
        const cards = await models.json();
        const state = describeReady(ready.status, await ready.json());
        showResult(panel, el("p", { class: "ready", text: state }), ...cards.map(card));
        context.status(ready.status, state);
        return cards;
      });
    },
  };
}
