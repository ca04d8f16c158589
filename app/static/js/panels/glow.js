// Glow: conditional samples (POST /generate/glow), interpolation between two faces (POST /glow/interpolate, as a GIF
// and as frames) and one attribute moved on a face (POST /glow/manipulate, each frame read by POST /classify).

import {
  alignControl, alignField, attributeChooser, attributesOn, base64File, blobImage, compact, el, facePicker, figure, integerOrText, pngData,
  pretty, runJob, seedControl, showResult,
} from "../ui.js";

function liveOutput(panel, input) {
  const output = panel.querySelector(`output[for=${input.id}]`);
  input.addEventListener("input", () => (output.textContent = input.value));
}

export function initGlowSamples(panel) {
  const form = panel.querySelector("form");
  const { temperature } = form.elements;
  const seed = seedControl(panel.querySelector("[data-seed]"), "glow-seed");
  let attributes = () => ({});
  liveOutput(panel, temperature);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = compact({
      n: integerOrText(form.elements.n.value),
      seed: seed.value(),
      temperature: Number(temperature.value),
      attributes: attributes(),
      format: "json",
    });
    runJob(panel, async (job) => {
      const response = await job.send({ method: "POST", path: "/generate/glow", json: body, output: "glow.json" });
      seed.report(response.headers.get("X-Seed"));
      const answer = await response.json();
      showResult(panel, el("div", { class: "faces" }, ...answer.images.map((image, index) => {
        const on = attributesOn(answer.attributes[index]);
        return figure(pngData(image), `Glow face ${index + 1}`, el("details", {}, el("summary", { text: `face ${index + 1}` }), on));
      })));
    });
  });

  return {
    model(card) {
      const fieldset = panel.querySelector("[data-attributes]");
      if (!fieldset.querySelector(".attribute-grid")) attributes = attributeChooser(fieldset, card.attributes, "glow-attribute");
    },
  };
}

export function initInterpolate(panel) {
  const form = panel.querySelector("form");
  const faceA = facePicker(panel.querySelector("[data-picker=face_a]"));
  const faceB = facePicker(panel.querySelector("[data-picker=face_b]"));
  alignControl(panel.querySelector("[data-align]"));

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const [a] = faceA.files();
    const [b] = faceB.files();
    const fields = [["steps", form.elements.steps.value], ["method", form.elements.method.value], ...alignField(form)];
    const form_ = (format) => [...(a ? [["face_a", a]] : []), ...(b ? [["face_b", b]] : []), ...fields, ["format", format]];
    runJob(panel, async (job) => {
      // Two requests for the same path: the animation, and the frames one by one for the strip.
      const [gif, json] = await Promise.all([
        job.send({ method: "POST", path: "/glow/interpolate", form: form_("gif"), output: "interpolation.gif" }),
        job.send({ method: "POST", path: "/glow/interpolate", form: form_("json"), output: "interpolation.json" }),
      ]);
      const animation = blobImage(await gif.blob(), "the interpolation, animated");
      animation.className = "animation";
      const { frames, method } = await json.json();
      showResult(panel,
        el("div", { class: "interpolation" },
          el("figure", {}, animation, el("figcaption", { text: `GIF, ${frames.length} frames (${method})` })),
          el("div", { class: "faces strip" }, ...frames.map((frame, index) =>
            figure(pngData(frame), `frame ${index + 1} of ${frames.length}`,
              index === 0 ? "A" : index === frames.length - 1 ? "B" : String(index + 1))))));
      return `${frames.length} frames.`;
    });
  });
  return { ready: Promise.all([faceA.ready, faceB.ready]) };
}

export function initManipulate(panel, context) {
  const form = panel.querySelector("form");
  const { attribute, max_strength: strength } = form.elements;
  const face = facePicker(panel.querySelector("[data-picker=face]"));
  alignControl(panel.querySelector("[data-align]"));
  liveOutput(panel, strength);
  // The slider re-runs the request when released (keyboard: each step), once a face is chosen.
  strength.addEventListener("change", () => face.files().length && form.requestSubmit());

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const [file] = face.files();
    const fields = [
      ...(file ? [["face", file]] : []),
      ["attribute", attribute.value],
      ["steps", form.elements.steps.value],
      ["max_strength", strength.value],
      ...alignField(form),
      ["format", "json"],
    ];
    runJob(panel, async (job) => {
      const response = await job.send({ method: "POST", path: "/glow/manipulate", form: fields, output: "manipulation.json" });
      const answer = await response.json();
      const name = pretty(answer.attribute);
      const frames = answer.images.map((image, index) => ({ image, strength: answer.strengths[index] }));
      const readings = el("p", { class: "hint" });
      const figures = frames.map((frame, index) => {
        const reading = el("span", { class: "reading" });
        frame.reading = reading;
        return figure(pngData(frame.image), `${name} at strength ${frame.strength.toFixed(2)}`,
          `strength ${frame.strength >= 0 ? "+" : ""}${frame.strength.toFixed(2)}`, el("br"), reading);
      });
      showResult(panel, el("div", {},
        el("div", { class: "faces strip" },
          figure(pngData(answer.original), "the uploaded face, preprocessed", "upload"), ...figures),
        readings));
      if (!context.has("classifier")) {
        readings.textContent = "The classifier is not loaded on this server: no readings.";
        return;
      }
      // The frames go back to the API as uploads: what /classify reads of the chosen attribute, frame by frame.
      const classified = await job.send({
        method: "POST",
        path: "/classify",
        // the frames are the model's own 64x64 face crops, already aligned: no face detection (align=none)
        form: [...frames.map((frame, index) => ["images", base64File(frame.image, `frame-${index + 1}.png`)]), ["align", "none"]],
        output: "readings.json",
      });
      const { images } = await classified.json();
      images.forEach((image, index) => {
        const probability = image.attributes[answer.attribute];
        frames[index].reading.textContent = probability === undefined ? "" : `P(${name}) ${probability.toFixed(2)}`;
      });
      readings.textContent = `Under each frame: the classifier's probability that ${name} is present (the frames uploaded to /classify).`;
    });
  });

  return {
    model(card) {
      if (attribute.options.length) return;
      attribute.append(...card.attributes.map((name) => el("option", { value: name, text: pretty(name) })));
      if (card.attributes.includes("Smiling")) attribute.value = "Smiling";
    },
    ready: face.ready,
  };
}
