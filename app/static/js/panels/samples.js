// Samples: POST /generate/{family} with n and seed, for every family whose model card says it can sample.
// Families with a panel of their own come last (their panel has their other fields); InfoGAN's request has rows and a
// code instead of n, so it is only in its panel.

import { blobImage, compact, el, integerOrText, runJob, seedControl, showResult } from "../ui.js";

const OWN_PANEL = { acgan: "#acgan", glow: "#glow-samples", infogan: "#infogan" };
const NO_N = new Set(["infogan"]);

export function initSamples(panel) {
  const form = panel.querySelector("form");
  const family = form.elements.family;
  const seed = seedControl(panel.querySelector("[data-seed]"), "samples-seed");

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = family.value;
    const request = {
      method: "POST",
      path: `/generate/${encodeURIComponent(name)}`,
      json: compact({ n: integerOrText(form.elements.n.value), seed: seed.value() }),
      output: `${name}.png`,
    };
    runJob(panel, async (job) => {
      const response = await job.send(request);
      const used = response.headers.get("X-Seed");
      seed.report(used);
      const img = blobImage(await response.blob(), `${name} samples, seed ${used}`);
      img.className = "grid";
      showResult(panel, el("figure", {}, img, el("figcaption", { text: `${name}: a PNG grid, 8 per row (seed ${used})` })));
    });
  });

  return {
    models(cards) {
      const samplers = cards.filter((card) => card.capabilities.includes("sample") && !NO_N.has(card.family));
      samplers.sort((a, b) => Boolean(OWN_PANEL[a.family]) - Boolean(OWN_PANEL[b.family]));
      const current = family.value;
      family.replaceChildren(...samplers.map((card) =>
        el("option", { value: card.name, text: OWN_PANEL[card.family] ? `${card.name} (more in its panel)` : card.name })));
      if ([...family.options].some((option) => option.value === current)) family.value = current;
      const intro = panel.querySelector(".intro");
      intro.querySelector(".own")?.remove();
      if (cards.some((card) => NO_N.has(card.family))) {
        intro.append(el("span", { class: "own" }, " InfoGAN draws sweeps rather than n faces: see ",
          el("a", { href: OWN_PANEL.infogan, text: "its panel" }), "."));
      }
      form.querySelector("button[type=submit]").disabled = !samplers.length;
    },
  };
}
