// InfoGAN: POST /generate/infogan, a rows x categories grid sweeping one categorical code.

import { blobImage, el, integerOrText, compact, pretty, runJob, seedControl, showResult } from "../ui.js";

export function initInfogan(panel) {
  const form = panel.querySelector("form");
  const { code } = form.elements;
  const seed = seedControl(panel.querySelector("[data-seed]"), "infogan-seed");
  const effect = panel.querySelector("#infogan-code-effect");
  let effects = {};

  function describe() {
    const found = effects[code.value];
    effect.textContent = found && found.length
      ? `In evaluation this code moved ${found.map((item) => `${pretty(item.attribute)} by ${(item.std ?? item.spread).toFixed(2)} (lowest at category ${item.low_category}, highest at ${item.high_category})`).join(", ")}${found[0].std === undefined ? "" : " (the attribute probability's deviation over the categories, per row of noise)"}.`
      : "";
  }
  code.addEventListener("change", describe);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = compact({ seed: seed.value(), rows: integerOrText(form.elements.rows.value), code: integerOrText(code.value) });
    runJob(panel, async (job) => {
      const response = await job.send({ method: "POST", path: "/generate/infogan", json: body, output: "infogan.png" });
      const used = response.headers.get("X-Seed");
      seed.report(used);
      const img = blobImage(await response.blob(), `InfoGAN sweep of code ${body.code}, seed ${used}`);
      img.className = "grid";
      showResult(panel, el("figure", {}, img, el("figcaption", { text: `code ${body.code}: each row one noise vector, columns its categories` })));
    });
  });

  return {
    model(card) {
      if (code.options.length) return;
      const codes = card.config.n_codes ?? 10;
      code.append(...Array.from({ length: codes }, (_, index) => el("option", { value: String(index), text: `code ${index}` })));
      effects = (card.metrics && card.metrics.code_effects) || {};
      // start on the code that moved an attribute most in evaluation: the most telling sweep
      const spread = (index) => Math.max(0, ...(effects[index] || []).map((item) => item.std ?? item.spread));
      code.value = String(Object.keys(effects).reduce((best, index) => (spread(index) > spread(best) ? index : best), "0"));
      describe();
    },
  };
}
