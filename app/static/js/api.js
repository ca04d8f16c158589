// Talking to the facegen HTTP API: the API key, sending a request, and the same request as a curl command.
//
// A request is a plain object, so one description serves both fetch() and the curl line shown on the page:
//   {method: "POST", path: "/generate/vae", json: {n: 8}, output: "vae.png"}
//   {method: "POST", path: "/glow/interpolate", form: [["face_a", file], ["steps", "8"]], output: "frames.gif"}

const KEY_STORAGE = "facegen.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** An answer other than 2xx, or no answer at all (status 0). `detail` is the API's JSON detail when it sent one. */
export class ApiError extends Error {
  constructor(status, detail, retryAfter = null) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }

  static async from(response) {
    const text = await response.text();
    let detail = text || response.statusText;
    try {
      detail = JSON.parse(text).detail ?? detail;
    } catch {
      // not JSON (a proxy's HTML page, say): keep the text
    }
    return new ApiError(response.status, detail, response.headers.get("Retry-After"));
  }
}

/** JSON with BigInt values written as plain integers: seeds go up to 2**63 - 1, past what a Number holds exactly. */
export function toJson(value) {
  return JSON.stringify(value, (_, item) => (typeof item === "bigint" ? `@@bigint:${item}@@` : item)).replace(
    /"@@bigint:(\d+)@@"/g,
    "$1",
  );
}

/**
 * Send a request; resolve with the Response when it is 2xx (or a status listed in `request.expect`, as GET /ready's
 * 503), else throw ApiError (AbortError when cancelled).
 */
export async function send(request, signal) {
  const headers = {};
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  let body;
  if (request.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = toJson(request.json);
  } else if (request.form) {
    body = new FormData();
    for (const [name, value] of request.form) {
      if (value instanceof Blob) body.append(name, value, value.name);
      else body.append(name, value);
    }
  }
  let response;
  try {
    response = await fetch(request.path, { method: request.method || "GET", headers, body, signal });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `no answer from the server at ${location.origin} (${error.message}): is it running?`);
  }
  if (!response.ok && !(request.expect || []).includes(response.status)) throw await ApiError.from(response);
  return response;
}

function shellQuote(text) {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${String(text).replaceAll("'", `'\\''`)}'`;
}

/** The request as a curl command a user can paste into a shell (the key stays out of it: $FACEGEN_API_KEY). */
export function curlCommand(request) {
  const lines = [`curl${request.method && request.method !== "GET" ? ` -X ${request.method}` : ""} ${shellQuote(location.origin + request.path)}`];
  if (apiKey()) lines.push(`-H "X-API-Key: $FACEGEN_API_KEY"`);
  if (request.json !== undefined) {
    lines.push(`-H 'Content-Type: application/json'`, `-d ${shellQuote(toJson(request.json))}`);
  }
  for (const [name, value] of request.form || []) {
    lines.push(`-F ${shellQuote(value instanceof Blob ? `${name}=@${value.name}` : `${name}=${value}`)}`);
  }
  if (request.output) lines.push(`-o ${shellQuote(request.output)}`);
  return lines.join(" \\\n     ");
}
