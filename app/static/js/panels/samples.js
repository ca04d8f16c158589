// Samples: POST /generate/{family} with n and seed, for every family whose model card says it can sample.
// Families with a panel of their own (a `.panel[data-family]` on the page) come last: their panel has their other
// fields. A family whose panel has `data-not-in-samples` (InfoGAN: rows and a code instead of n) is only in its panel.

import { blobImage, compact, el, integerOrText, runJob, seedControl, showResult } from "../ui.js";

/** family -> { href of its first panel, why it is left out of this panel (or undefined) }, read from the page. */
function familyPanels() {
  const found = {};
  for (const panel of document.querySelectorAll(".panel[data-family]")) {
    const entry = (found[panel.dataset.family] ??= { href: `#${panel.id}` });
    entry.notHere ??= panel.dataset.notInSamples;
  }
  return found;
}

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

  const own = familyPanels();
  return {
    models(cards) {
      const sampling = cards.filter((card) => card.capabilities.includes("sample"));
      const samplers = sampling.filter((card) => !own[card.family]?.notHere);
      samplers.sort((a, b) => Boolean(own[a.family]) - Boolean(own[b.family]));
      const current = family.value;
      family.replaceChildren(...samplers.map((card) =>
        el("option", { value: card.name, text: own[card.family] ? `${card.name} (more in its panel)` : card.name })));
      if ([...family.options].some((option) => option.value === current)) family.value = current;
      const intro = panel.querySelector(".intro");
      intro.querySelectorAll(".own").forEach((note) => note.remove());
      for (const card of sampling.filter((card) => own[card.family]?.notHere)) {
        intro.append(el("span", { class: "own" }, ` ${card.name} ${own[card.family].notHere}: see `,
          el("a", { href: own[card.family].href, text: "its panel" }), "."));
      }
      form.querySelector("button[type=submit]").disabled = !samplers.length;
    },
  };
}
