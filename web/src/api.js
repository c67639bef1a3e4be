// The HTTP side of the web app: one fetch wrapper that sends the bearer token and turns problem+json answers
// into ApiError, plus the small helpers both pages share (ids, times, stored sessions).

/** An answer that was not 2xx: `status`, and the problem document's `detail` and `field` when there is one. */
export class ApiError extends Error {
  constructor(status, problem) {
    const detail = (problem && (problem.detail || problem.title)) || `HTTP ${status}`;
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.field = problem ? problem.field || null : null;
  }
}

/**
 * A client for the PlayGate API. `getToken()` returns the access token (or null); `onUnauthorized(error)` is
 * called when an authenticated call answers 401 (expired token, disabled user); `error.message` says which.
 */
export function createApi(getToken, onUnauthorized) {
  async function request(method, path, { body, headers = {}, auth = true } = {}) {
    const sent = { Accept: "application/json", ...headers };
    const token = auth ? getToken() : null;
    if (token) sent.Authorization = `Bearer ${token}`;
    if (body !== undefined) sent["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: sent,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, { detail: "The server does not answer. Is PlayGate running?" });
    }
    if (response.status === 204) return null;
    const type = response.headers.get("content-type") || "";
    const data = type.includes("json") ? await response.json() : null;
    if (!response.ok) {
      const error = new ApiError(response.status, data);
      if (response.status === 401 && token) onUnauthorized(error);
      throw error;
    }
    return data;
  }
  return {
    get: (path) => request("GET", path),
    post: (path, body, headers) => request("POST", path, { body, headers }),
    patch: (path, body) => request("PATCH", path, { body }),
    del: (path) => request("DELETE", path),
    login: (username, password) =>
      request("POST", "/auth/token", { body: { username, password }, auth: false }),
  };
}

/** A random id (works on plain http too, where crypto.randomUUID is missing). */
export function randomId(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A stored session `{token, user}` under `key` in `storage`, or null. */
export function loadSession(storage, key) {
  try {
    const session = JSON.parse(storage.getItem(key) || "null");
    return session && typeof session.token === "string" ? session : null;
  } catch {
    return null;
  }
}

/** "14:02:11 (3 min ago)" for an ISO time. */
export function since(isoTime) {
  const at = new Date(isoTime);
  const seconds = Math.max(0, Math.round((Date.now() - at.getTime()) / 1000));
  const ago = seconds < 60 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
  return `${at.toLocaleTimeString()} (${ago})`;
}

/** A DOM element with attributes and children; strings become text nodes (never parsed as HTML). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
    }
  }
  return el;
}

/** Why a stream ended, in words (the `reason` of an `ended` event of the player kit), and what to do next. */
export const ENDED_REASONS = {
  expired: ["its lease ran out (it was paused, or no heartbeat came)", "Press Play to ask again."],
  evicted: ["a newer stream took its slot (the oldest stream ends at the limit)", "Stop another stream to watch here."],
  replaced: [
    "another device took its slot (Replace, or Watch here)",
    "Press Play to ask again; another device may need to stop.",
  ],
  stopped_by_admin: ["an admin stopped it", "Press Play to ask again."],
  user_disabled: ["your account was disabled", "Ask the account's owner to enable it."],
  limit_lowered: ["your account's stream limit was lowered", "Stop a stream on another device to watch here."],
  video_deleted: ["this video was removed from the catalogue", "Choose another video."],
  outage_reconciled: [
    "it was started while the service was degraded, and your account is over its limit now that it is back",
    "Stop a stream on another device to watch here.",
  ],
  stopped: ["it was stopped from another device", "Press Play to ask again."],
  // A heartbeat found the stream gone without an event telling why (stopped on another device, or expired offline).
  gone: ["it is no longer active (stopped on another device, or expired)", "Press Play to ask again."],
};

/** "Chrome on Linux" from this browser's User-Agent (the server names devices the same way). */
export function browserName(userAgent) {
  const browser =
    [[/Edg\//, "Edge"], [/OPR\//, "Opera"], [/Firefox\//, "Firefox"], [/Chrome\//, "Chrome"], [/Safari\//, "Safari"]].find(
      ([pattern]) => pattern.test(userAgent),
    ) || [null, "A browser"];
  const system =
    [[/iPhone|iPad/, "iOS"], [/Android/, "Android"], [/CrOS/, "ChromeOS"], [/Windows/, "Windows"], [/Mac OS X/, "macOS"], [/Linux|X11/, "Linux"]].find(
      ([pattern]) => pattern.test(userAgent),
    );
  return system ? `${browser[1]} on ${system[1]}` : browser[1];
}
