// What every panel shares: running a request with progress and cancel, showing errors next to their control, the
// request box with its curl command, and the controls several panels use (seed, attributes, face picker).

import { ApiError, apiKey, curlCommand, send } from "./api.js";

export const EXAMPLE_FACES = ["000001.jpg", "000002.jpg", "000003.jpg", "182637.jpg"];
const SPINNER = `<svg class="spinner" viewBox="0 0 24 24" width="20" height="20" aria-hidden="true">
  <circle cx="12" cy="12" r="9" fill="none" stroke="currentColor" stroke-width="3" stroke-dasharray="42 100"/></svg>`;
const DICE = `<svg viewBox="0 0 24 24" width="20" height="20" aria-hidden="true"><rect x="3" y="3" width="18" height="18"
  rx="4" fill="none" stroke="currentColor" stroke-width="2"/><circle cx="8" cy="8" r="1.6"/><circle cx="16" cy="16"
  r="1.6"/><circle cx="12" cy="12" r="1.6"/><circle cx="16" cy="8" r="1.6"/><circle cx="8" cy="16" r="1.6"/></svg>`;

/** Build an element: el("p", {class: "hint"}, "text", child, ...). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "text") node.textContent = value;
    else if (name === "html") node.innerHTML = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export const pretty = (name) => name.replaceAll("_", " ");

// ---------------------------------------------------------------------------------------------------------------
// Form values: the server is the one judge of them (a bad value comes back as its 422, shown by the field).

/** The face-alignment choice of an upload panel, built into its ``[data-align]`` holder (the id from the holder). */
export function alignControl(holder) {
  const id = holder.dataset.align;
  const select = el(
    "select",
    { id, name: "align" },
    el("option", { value: "", text: "server default" }),
    el("option", { value: "auto", text: "auto: find the face, align it like CelebA" }),
    el("option", { value: "none", text: "none: already aligned like CelebA" }),
  );
  holder.append(el("label", { for: id, text: "Face alignment (align)" }), select, el("p", { class: "field-error", "aria-live": "polite" }));
}

/** The `align` field of an upload request, only when the user chose one (else the server's default applies). */
export function alignField(form) {
  return form.elements.align && form.elements.align.value ? [["align", form.elements.align.value]] : [];
}

/** An <input>'s value for a JSON body: an integer when it is one, omitted when empty, else the raw text. */
export function integerOrText(value) {
  const text = value.trim();
  if (text === "") return undefined;
  if (!/^-?\d+$/.test(text)) return text;
  const big = BigInt(text);
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(text) : big;
}

/** Drop undefined members and empty objects, so an empty field means "the server's default". */
export function compact(object) {
  const empty = (value) => value === undefined || (value && value.constructor === Object && !Object.keys(value).length);
  return Object.fromEntries(Object.entries(object).filter(([, value]) => !empty(value)));
}

// ---------------------------------------------------------------------------------------------------------------
// Errors next to their controls.

function errorSlot(control) {
  const holder = control.closest(".field");
  return holder ? holder.querySelector(".field-error") : null;
}

/** Link every field's error line to its control (aria-describedby), once at start-up. */
export function linkFieldErrors(root) {
  for (const slot of root.querySelectorAll(".field-error")) {
    const holder = slot.closest(".field");
    const control = holder && holder.querySelector("input, select, textarea, fieldset");
    if (!control || !control.id) continue;
    slot.id ||= `${control.id}-error`;
    const described = new Set((control.getAttribute("aria-describedby") || "").split(" ").filter(Boolean));
    described.add(slot.id);
    control.setAttribute("aria-describedby", [...described].join(" "));
  }
}

export function clearErrors(panel) {
  for (const slot of panel.querySelectorAll(".field-error")) slot.textContent = "";
  for (const control of panel.querySelectorAll("[aria-invalid]")) control.removeAttribute("aria-invalid");
}

/** Put `text` next to the control named `name` in `panel`; false when the panel has no such control. */
export function showFieldError(panel, name, text) {
  const control = panel.querySelector(`[name="${CSS.escape(name)}"]`);
  const slot = control && errorSlot(control);
  if (!slot) return false;
  slot.textContent = slot.textContent ? `${slot.textContent} ${text}` : text;
  control.setAttribute("aria-invalid", "true");
  const details = control.closest("details");
  if (details) details.open = true;
  return true;
}

function statusWords(status) {
  return { 400: "bad image", 401: "not authorised", 404: "not found", 413: "too large", 415: "not an image",
    422: "invalid input", 500: "server error", 503: "unavailable" }[status] || "error";
}

/**
 * Show an ApiError in words: each 422 item next to the field it names; an upload's 400/413/415 next to the file
 * control; a 401 also by the API key field; the rest (and a summary) under the panel's controls. Returns the text.
 */
export function showError(panel, error) {
  if (!(error instanceof ApiError)) return `Unexpected error in the page: ${error.message}`;
  const { status, detail } = error;
  if (status === 0) return `No answer: ${detail}`;
  const head = `HTTP ${status} (${statusWords(status)})`;
  if (status === 401) {
    document.getElementById("api-key-error").textContent = apiKey()
      ? "The server refused this key (401): check it."
      : "This server needs an API key (401): type it here.";
    return `${head}: ${detail}. This server needs an API key: type it in the API key field at the top of the page.`;
  }
  if (status === 503) {
    if (error.retryAfter) {
      return `${head}: ${detail}. The server is busy (its queue is full or it is shutting down): try again in ` +
        `${error.retryAfter} s, as its Retry-After header asks.`;
    }
    return `${head}: ${detail}. The server cannot serve this now: the model may not be loaded (see Models), ` +
      "or the request took longer than the server allows.";
  }
  if (Array.isArray(detail)) {
    const unplaced = [];
    for (const item of detail) {
      const location = (item.loc || []).filter((part) => part !== "body");
      const message = item.msg || JSON.stringify(item);
      const name = location.length ? String(location[0]) : "";
      const where = location.join(".");
      if (!name || !showFieldError(panel, name, where && where !== name ? `${where}: ${message}` : message)) {
        unplaced.push(where ? `${where}: ${message}` : message);
      }
    }
    if (!unplaced.length) return `${head}: the server refused the request; see the message next to the field.`;
    return `${head}: ${unplaced.join("; ")}`;
  }
  if ([400, 413, 415, 422].includes(status)) {
    // an upload the server could not use (not an image, too large, no face found): by its file control
    const pickers = [...panel.querySelectorAll("[data-picker]")];
    const named = pickers.find((picker) => picker.pickerFiles().some((file) => String(detail).includes(file.name)));
    const picker = named || pickers[0];
    if (picker && showFieldError(panel, picker.dataset.picker, String(detail))) {
      return `${head}: see the message next to the upload.`;
    }
  }
  return `${head}: ${detail}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Running requests: one job at a time per panel, with a spinner, elapsed time and a cancel button.

/** Give a panel its request box (the curl commands it sent, copyable); once, at start-up. */
export function addRequestBox(panel) {
  const code = el("code", { text: "Nothing sent yet: the request appears here as a curl command." });
  const copy = el("button", { type: "button", class: "secondary copy", text: "Copy curl" });
  const box = el(
    "div",
    { class: "request" },
    el("div", { class: "request-head" }, el("h3", { text: "Request" }), copy),
    el("pre", { tabindex: "0", "aria-label": "the request as a curl command" }, code),
  );
  copy.addEventListener("click", () => copyText(code.textContent, copy));
  panel.querySelector(".outcome").after(box);
  return box;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    // no clipboard API outside secure contexts (plain HTTP to another host): select the text for Ctrl+C
    const range = document.createRange();
    range.selectNodeContents(button.closest(".request").querySelector("code"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.textContent = "Selected: press Ctrl+C";
    return;
  }
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = "Copy curl"), 1500);
}

export class Job {
  constructor(panel) {
    this.panel = panel;
    this.controller = new AbortController();
    this.started = performance.now();
    this.commands = [];
    this.outcome = panel.querySelector(".outcome");
    this.elapsed = el("span", { class: "elapsed", text: "0.0 s" });
    const cancel = el("button", { type: "button", class: "secondary cancel", text: "Cancel" });
    cancel.addEventListener("click", () => this.cancel());
    this.outcome.replaceChildren(el("p", { class: "progress", html: SPINNER }, "Working… ", this.elapsed, " ", cancel));
    this.timer = setInterval(() => this.tick(), 100);
    panel.querySelector(".result").setAttribute("aria-busy", "true");
    clearErrors(panel);
    document.getElementById("api-key-error").textContent = "";
  }

  get cancelled() {
    return this.controller.signal.aborted;
  }

  tick() {
    this.elapsed.textContent = `${((performance.now() - this.started) / 1000).toFixed(1)} s`;
  }

  /**
   * Send a request within this job (shown as curl in the panel's request box). When the server drew the seed (the
   * request gave none), the command is rewritten with the seed it answered with (X-Seed), so that the copied command
   * reproduces what is on screen.
   */
  async send(request) {
    const index = this.commands.push(curlCommand(request)) - 1;
    this.showCommands();
    const response = await send(request, this.controller.signal);
    const seed = response.headers.get("X-Seed");
    if (seed !== null && /^\d+$/.test(seed)) {
      const seeded = withSeed(request, seed);
      if (seeded) {
        this.commands[index] = curlCommand(seeded);
        this.showCommands();
      }
    }
    return response;
  }

  showCommands() {
    this.panel.querySelector(".request code").textContent = this.commands.join("\n\n");
  }

  stop() {
    clearInterval(this.timer);
    this.panel.querySelector(".result").removeAttribute("aria-busy");
    if (this.panel.job === this) this.panel.job = null;
  }

  /** Cancel: `quiet` when a newer job of the same panel takes over (it owns the message line then). */
  cancel(quiet = false) {
    this.controller.abort();
    this.stop();
    if (!quiet) this.outcome.replaceChildren(el("p", { class: "note", text: "Cancelled." }));
  }

  done(message = "") {
    if (this.cancelled) return;
    this.stop();
    const seconds = ((performance.now() - this.started) / 1000).toFixed(1);
    this.outcome.replaceChildren(el("p", { class: "note", text: `Done in ${seconds} s. ${message}`.trim() }));
  }

  fail(error) {
    if (this.cancelled || error.name === "AbortError") return;
    this.stop();
    this.outcome.replaceChildren(el("p", { class: "error", role: "alert", text: showError(this.panel, error) }));
    if (!(error instanceof ApiError)) console.warn(error); // a bug in the page: keep the trace for whoever debugs
  }
}

/** `request` with the seed the server answered with, when it sent none (JSON or form); null when it gave its own. */
function withSeed(request, seed) {
  const big = BigInt(seed);
  const value = big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(seed) : big;
  if (request.json && typeof request.json === "object" && !Array.isArray(request.json)) {
    return request.json.seed === undefined ? { ...request, json: { ...request.json, seed: value } } : null;
  }
  if (request.form) {
    return request.form.some(([name]) => name === "seed") ? null : { ...request, form: [...request.form, ["seed", seed]] };
  }
  return null;
}

/** Start a job in `panel`, cancelling the one before (a slider moved twice: the newest request wins). */
export function startJob(panel) {
  if (panel.job) panel.job.cancel(true);
  panel.job = new Job(panel);
  return panel.job;
}

/**
 * Run `work(job)` as a panel's job: progress while it runs, then its message (when it returns a string) or the error.
 * Resolves with what `work` returned, or undefined when it failed or was cancelled.
 */
export async function runJob(panel, work) {
  const job = startJob(panel);
  try {
    const result = await work(job);
    job.done(typeof result === "string" ? result : "");
    return result;
  } catch (error) {
    job.fail(error);
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Images.

const objectUrls = new WeakMap();

/** Show blobs as <img> in `container` (revoking the URLs of the images it showed before). */
export function blobImage(blob, alt) {
  const img = el("img", { alt });
  img.src = URL.createObjectURL(blob);
  objectUrls.set(img, img.src);
  return img;
}

export function releaseImages(container) {
  for (const img of container.querySelectorAll("img")) {
    if (objectUrls.has(img)) URL.revokeObjectURL(objectUrls.get(img));
  }
}

export function showResult(panel, ...children) {
  const result = panel.querySelector(".result");
  releaseImages(result);
  result.replaceChildren(...children);
}

export const pngData = (base64) => `data:image/png;base64,${base64}`;

export function figure(src, alt, ...caption) {
  return el("figure", { class: "face" }, el("img", { src, alt, width: "64", height: "64" }), caption.length ? el("figcaption", {}, ...caption) : null);
}

/** A base64 PNG from a JSON answer as a File, to upload it again (frames to /classify). */
export function base64File(base64, name) {
  const bytes = Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
  return new File([bytes], name, { type: "image/png" });
}

// ---------------------------------------------------------------------------------------------------------------
// Seed control: a text field (empty = random), a dice button, and the seed the server reported.

export function seedControl(holder, id) {
  const input = el("input", { id, name: "seed", type: "text", inputmode: "numeric", placeholder: "random", autocomplete: "off" });
  const dice = el("button", { type: "button", class: "icon secondary", title: "Random seed", "aria-label": "Pick a random seed", html: DICE });
  const reported = el("p", { class: "hint", "aria-live": "polite", text: "Empty: the server picks one and reports it." });
  holder.append(el("label", { for: id, text: "Seed" }), el("div", { class: "inline" }, input, dice), reported, el("p", { class: "field-error", "aria-live": "polite" }));
  dice.addEventListener("click", () => {
    input.value = String(crypto.getRandomValues(new Uint32Array(1))[0]);
  });
  return {
    value: () => integerOrText(input.value),
    report(seed) {
      const again = el("button", { type: "button", class: "link", text: "use it again" });
      again.addEventListener("click", () => (input.value = seed));
      reported.replaceChildren(`Seed used: `, el("code", { class: "seed-used", text: seed }), " (", again, ")");
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Attributes: one three-way choice per attribute the model knows (random, on, off).

export function attributeChooser(fieldset, names, idPrefix) {
  const grid = el("div", { class: "attribute-grid" });
  const selects = names.map((name) => {
    const id = `${idPrefix}-${name}`;
    const select = el(
      "select",
      { id, "data-attribute": name },
      el("option", { value: "", text: "random" }),
      el("option", { value: "true", text: "on" }),
      el("option", { value: "false", text: "off" }),
    );
    grid.append(el("div", { class: "attribute" }, el("label", { for: id, text: pretty(name) }), select));
    return select;
  });
  const reset = el("button", { type: "button", class: "link", text: "all random" });
  reset.addEventListener("click", () => selects.forEach((select) => (select.value = "")));
  fieldset.setAttribute("name", "attributes");
  fieldset.querySelector(".hint").replaceChildren(`${names.length} attributes; those left random are taken per image from a CelebA training face with the chosen values (`, reset, ").");
  fieldset.querySelector(".field-error").before(grid);
  return () => Object.fromEntries(selects.filter((select) => select.value).map((select) => [select.dataset.attribute, select.value === "true"]));
}

/** How the server turned an upload into the model's input (the `face` report of upload routes), in words. */
export function faceNote(face) {
  if (!face) return "";
  const found = face.faces_found == null ? "" : ` (${face.faces_found} face${face.faces_found === 1 ? "" : "s"} found)`;
  const how = face.align === "auto" ? `aligned${found}` : "taken as aligned";
  return face.warning ? `${how}; ${face.warning}` : how;
}

/** "Male, Smiling" for the attributes on in a reported vector. */
export function attributesOn(vector) {
  const on = Object.entries(vector).filter(([, value]) => value).map(([name]) => pretty(name));
  return on.length ? on.join(", ") : "none";
}

// ---------------------------------------------------------------------------------------------------------------
// Face picker: a file field, drag-and-drop, or one of the bundled example faces.

export function facePicker(holder) {
  const field = holder.dataset.picker;
  const multiple = holder.hasAttribute("data-multiple");
  const id = `${holder.closest(".panel").id}-${field}`;
  const chosen = [];
  const input = el("input", { id, name: field, type: "file", accept: "image/jpeg,image/png,image/webp", multiple });
  const preview = el("div", { class: "chosen", "aria-live": "polite" });
  const drop = el("div", { class: "drop" }, preview, el("p", { class: "hint", text: `Drop ${multiple ? "images" : "an image"} here, choose ${multiple ? "files" : "a file"}, or pick an example below.` }), input);
  const examples = el("div", { class: "examples", role: "group", "aria-label": `Example faces for ${holder.dataset.label}` });

  function render() {
    preview.replaceChildren(
      ...(chosen.length
        ? chosen.map((file) => el("figure", { class: "thumb" }, blobImage(file, `chosen: ${file.name}`), el("figcaption", { text: file.name })))
        : [el("p", { class: "hint", text: "No face chosen." })]),
    );
    for (const button of examples.querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(chosen.some((file) => file.name === button.dataset.name)));
    }
    holder.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function choose(files, add) {
    releaseImages(preview);
    if (!add || !multiple) chosen.length = 0;
    for (const file of files) {
      const at = chosen.findIndex((old) => old.name === file.name);
      if (at >= 0) chosen.splice(at, 1);
      chosen.push(file);
      if (!multiple) break;
    }
    render();
  }

  async function example(name, toggle) {
    if (toggle && multiple && chosen.some((file) => file.name === name)) {
      releaseImages(preview);
      chosen.splice(chosen.findIndex((file) => file.name === name), 1);
      return render();
    }
    const response = await fetch(`/static/examples/${name}`);
    choose([new File([await response.blob()], name, { type: "image/jpeg" })], true);
  }

  for (const name of EXAMPLE_FACES) {
    const button = el("button", { type: "button", class: "example", "data-name": name, "aria-pressed": "false", title: `example face ${name}` },
      el("img", { src: `/static/examples/${name}`, alt: `example face ${name}`, width: "48", height: "48" }));
    button.addEventListener("click", () => example(name, true));
    examples.append(button);
  }
  input.addEventListener("change", () => {
    choose([...input.files], true);
    input.value = ""; // the same file chosen again still fires "change"
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose([...event.dataTransfer.files].filter((file) => file.type.startsWith("image/") || !file.type), true);
  });

  holder.append(el("label", { for: id, text: holder.dataset.label }), drop, examples, el("p", { class: "field-error", "aria-live": "polite" }));
  holder.pickerFiles = () => [...chosen];
  render();
  const defaults = (holder.dataset.example || "").split(" ").filter(Boolean);
  const ready = Promise.all(defaults.map((name) => example(name, false))).catch(() => {});
  return { files: () => [...chosen], ready };
}
