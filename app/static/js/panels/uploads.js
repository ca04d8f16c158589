// Your faces: POST /vae/reconstruct (per-image MSE), POST /glow/likelihood (bits per dimension) and POST /classify.

import { alignControl, alignField, blobImage, el, faceNote, facePicker, pngData, pretty, runJob, showResult } from "../ui.js";

export function initUploads(panel) {
  const form = panel.querySelector("form");
  const picker = facePicker(panel.querySelector("[data-picker=images]"));
  alignControl(panel.querySelector("[data-align]"));
  const align = () => alignField(panel.querySelector("form"));

  const actions = {
    async reconstruct(job, files) {
      const form = [...files.map((file) => ["images", file]), ...align(), ["format", "json"]];
      const answer = await (await job.send({ method: "POST", path: "/vae/reconstruct", form, output: "reconstructions.json" })).json();
      showResult(panel, el("div", { class: "faces" }, ...answer.images.map((image) =>
        el("figure", { class: "pair" },
          el("img", { src: pngData(image.original), alt: `${image.filename} as the model sees it`, width: "64", height: "64" }),
          el("img", { src: pngData(image.reconstruction), alt: `${image.filename} reconstructed by the VAE`, width: "64", height: "64" }),
          el("figcaption", {}, `${image.filename}`, el("br"), `MSE ${image.mse.toFixed(4)}`, el("br"), faceNote(image.face))))));
      return `Top: the upload as the model sees it; bottom: the VAE's reconstruction. Mean MSE ${answer.mean_mse.toFixed(4)} (per pixel, on the [-1, 1] scale).`;
    },
    async likelihood(job, files) {
      const form = [...files.map((file) => ["images", file]), ...align()];
      const answer = await (await job.send({ method: "POST", path: "/glow/likelihood", form, output: "likelihood.json" })).json();
      showResult(panel, el("div", { class: "faces" }, ...answer.images.map((image, index) =>
        el("figure", { class: "face" }, blobImage(files[index], image.filename),
          el("figcaption", {}, image.filename, el("br"), el("strong", { text: `${image.bits_per_dim.toFixed(3)} bits/dim` }),
            el("br"), faceNote(image.face))))));
      return "Bits per dimension under Glow: lower is more face-like to the model.";
    },
    async classify(job, files) {
      const form = [...files.map((file) => ["images", file]), ...align()];
      const answer = await (await job.send({ method: "POST", path: "/classify", form, output: "attributes.json" })).json();
      showResult(panel, el("div", { class: "readings" }, ...answer.images.map((image, index) => {
        const sorted = Object.entries(image.attributes).sort((a, b) => b[1] - a[1]);
        const present = sorted.filter(([, p]) => p >= 0.5).map(([name, p]) => `${pretty(name)} ${p.toFixed(2)}`);
        return el("figure", { class: "reading-card" }, blobImage(files[index], image.filename),
          el("figcaption", {}, el("strong", { text: image.filename }), el("br"), `Present (p >= 0.5): ${present.join(", ") || "none"}`,
            el("br"), faceNote(image.face),
            el("details", {}, el("summary", { text: "all 40 probabilities" }),
              el("table", {}, ...sorted.map(([name, p]) => el("tr", {}, el("th", { text: pretty(name), scope: "row" }), el("td", { text: p.toFixed(3) })))))));
      })));
      return "The classifier's reading of each face.";
    },
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const action = actions[(event.submitter && event.submitter.value) || "reconstruct"];
    runJob(panel, (job) => action(job, picker.files()));
  });
  return { ready: picker.ready };
}
