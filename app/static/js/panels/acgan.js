// ACGAN: POST /generate/acgan with attributes fixed or random, and a toggle attribute shown off/on in pairs.

import { attributeChooser, attributesOn, compact, el, figure, integerOrText, pngData, pretty, runJob, seedControl, showResult } from "../ui.js";

export function initAcgan(panel) {
  const form = panel.querySelector("form");
  const { toggle, strength } = form.elements;
  const seed = seedControl(panel.querySelector("[data-seed]"), "acgan-seed");
  let attributes = () => ({});

  const strengthOutput = panel.querySelector("output[for=acgan-strength]");
  strength.addEventListener("input", () => (strengthOutput.textContent = strength.value));
  toggle.addEventListener("change", () => (strength.disabled = !toggle.value));

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = compact({
      n: integerOrText(form.elements.n.value),
      seed: seed.value(),
      attributes: attributes(),
      toggle: toggle.value || undefined,
      strength: toggle.value ? Number(strength.value) : undefined, // the API takes strength only with a toggle
      format: "json",
    });
    runJob(panel, async (job) => {
      const response = await job.send({ method: "POST", path: "/generate/acgan", json: body, output: "acgan.json" });
      seed.report(response.headers.get("X-Seed"));
      const answer = await response.json();
      // a combination few training faces have: the open attributes came from the nearest ones, and the page says so
      const warning = answer.warning ? el("p", { class: "note", role: "status", text: answer.warning }) : null;
      showResult(panel, ...(warning ? [warning] : []), answer.toggle ? pairs(answer) : singles(answer));
    });
  });

  function singles(answer) {
    return el("div", { class: "faces" }, ...answer.images.map((image, index) => {
      const on = attributesOn(answer.attributes[index]);
      return figure(pngData(image), `ACGAN face ${index + 1}: ${on}`, el("details", {}, el("summary", { text: `face ${index + 1}` }), on));
    }));
  }

  function pairs(answer) {
    const n = answer.images.length / 2; // the first n have the attribute off, the next n the same faces with it on
    const name = pretty(answer.toggle);
    return el("div", {},
      el("p", { class: "hint", text: `Each pair: ${name} off (top) and on (bottom), strength ${answer.strength}.` }),
      el("div", { class: "faces pairs" }, ...Array.from({ length: n }, (_, index) =>
        el("figure", { class: "pair" },
          el("img", { src: pngData(answer.images[index]), alt: `pair ${index + 1}, ${name} off`, width: "64", height: "64" }),
          el("img", { src: pngData(answer.images[n + index]), alt: `pair ${index + 1}, ${name} on`, width: "64", height: "64" }),
          el("figcaption", { text: `${index + 1}: off / on` })))));
  }

  return {
    model(card) {
      const fieldset = panel.querySelector("[data-attributes]");
      if (fieldset.querySelector(".attribute-grid")) return;
      attributes = attributeChooser(fieldset, card.attributes, "acgan-attribute");
      toggle.append(...card.attributes.map((name) => el("option", { value: name, text: pretty(name) })));
    },
  };
}
