// The admin page: users with their limits and active streams (refreshed every POLL_MS), change a limit, stop a
// stream, disable or enable a user; the videos with add, edit (kind tags too) and delete (confirmed: its streams end,
// announced `video_deleted`); the plans with their rules and
// shadow policies; the shadow's would-be denials; a user's registered devices, with remove.
//
// Live updates poll GET /v1/users and GET /users/{id}/streams instead of listening to the socket: a stream a
// user stops themself is not announced on any socket, so only a poll sees every way a stream ends, and it costs
// the server nothing while no admin page is open, in either deployment.
import { ApiError, createApi, h, loadSession, since } from "./api.js";
import "./style.css";

const SESSION_KEY = "playgate.admin";
const POLL_MS = 2000;
const MAX_USERS_POLLED = 200; // streams are fetched for this many users per refresh, at most

const $ = (id) => document.getElementById(id);

let session = loadSession(localStorage, SESSION_KEY);
let timer = null;
let videos = new Map(); // videoId -> Video
const userRows = new Map(); // userId -> UserRow
const videoRows = new Map(); // videoId -> VideoRow
const planRows = new Map(); // planId -> PlanRow
const RULE_FIELDS = ["onLimit", "kinds", "maxPerTitle", "maxDevices", "deviceWindowDays", "maxAwayStreams"];

const api = createApi(
  () => session && session.token,
  (error) => endSession(`Your admin session ended: ${error.message} Log in again.`, true),
);

/** One error, said once: the server's detail already names the field it is about. */
function showError(id, err) {
  const el = $(id);
  el.textContent = err ? err.message : "";
  el.hidden = !err;
}

function videoTitle(videoId) {
  return (videos.get(videoId) || { title: `video ${videoId}` }).title;
}

// ---- users ----------------------------------------------------------------------------------------------------

/** One user's row; inputs keep what the admin is typing across refreshes. */
class UserRow {
  constructor(user) {
    this.id = user.id;
    this.dirty = false;
    const inputId = `limit-${user.id}`;
    this.name = h("span", { class: "name" });
    this.plan = h("span", { class: "hint" });
    this.limit = h("input", { id: inputId, type: "number", min: "0", max: "10000", inputmode: "numeric", class: "narrow" });
    this.limit.addEventListener("input", () => {
      this.dirty = true;
    });
    this.limitLabel = h("label", { for: inputId, class: "sr-only" });
    this.effective = h("span", { class: "hint" });
    this.rowError = h("p", { class: "error", role: "alert", hidden: true });
    this.rowSaved = h("p", { class: "saved", role: "status" });
    this.overLimit = h("p", { class: "error over-limit", hidden: true });
    this.limitForm = h(
      "form",
      // novalidate: the browser's own check would block letters silently; saveLimit says what is wrong.
      { class: "limit-form", novalidate: true, onsubmit: (event) => this.saveLimit(event) },
      this.limitLabel,
      this.limit,
      h("button", { type: "submit" }, "Save"),
    );
    this.account = h("span");
    this.toggle = h("button", { type: "button", onclick: () => this.toggleDisabled() });
    this.streams = h("ul", { class: "streams" });
    this.streamItems = new Map();
    this.el = h(
      "tr",
      { "data-user-id": user.id },
      h("th", { scope: "row" }, this.name, h("br"), this.plan),
      h("td", { "data-label": "Limit" }, this.limitForm, this.effective, this.rowError, this.rowSaved),
      h("td", { "data-label": "Account" }, this.account, " ", this.toggle),
      h("td", { "data-label": "Active streams" }, this.overLimit, this.streams),
    );
  }

  update(user, streams) {
    this.user = user;
    this.name.textContent = user.admin ? `${user.name} (admin)` : user.name;
    this.plan.textContent = `id ${user.id}${user.plan ? `, plan ${user.plan}` : ""}`;
    this.limitLabel.textContent = `Own limit of ${user.name}`;
    if (!this.dirty && document.activeElement !== this.limit) this.limit.value = user.ownLimit ?? "";
    this.limit.placeholder = "plan";
    this.effective.textContent = `effective ${user.limit}${user.ownLimit == null ? " (plan or default)" : ""}`;
    this.account.textContent = user.disabled ? "Disabled" : "Active";
    this.account.className = user.disabled ? "badge off" : "badge on";
    this.toggle.textContent = user.disabled ? "Enable" : "Disable";
    this.toggle.hidden = user.id === session.user.id; // an admin does not lock themself out
    this.toggle.setAttribute("aria-label", `${user.disabled ? "Enable" : "Disable"} ${user.name}`);
    this.updateStreams(streams);
    // A lowered limit: the streams over it end at their next heartbeat; until then they are marked.
    const over = streams.length > user.limit;
    this.overLimit.hidden = !over;
    this.overLimit.textContent = over
      ? `Over limit: ${streams.length} of ${user.limit}; the streams over it end at their next heartbeat`
      : "";
  }

  updateStreams(streams) {
    const seen = new Set();
    for (const stream of streams) {
      seen.add(stream.id);
      let item = this.streamItems.get(stream.id);
      if (!item) {
        const text = h("span");
        const title = videoTitle(stream.videoId);
        const button = h(
          "button",
          {
            type: "button",
            "aria-label": `Stop ${title} of ${this.user.name} on ${stream.deviceName || stream.deviceId}`,
            onclick: () => this.stopStream(stream.id),
          },
          "Stop",
        );
        item = { el: h("li", { "data-stream-id": stream.id }, text, " ", button), text };
        this.streamItems.set(stream.id, item);
        this.streams.append(item.el);
      }
      // The start time only (no "N s ago"): text that changes every refresh would make the rows jump.
      item.text.textContent = `${videoTitle(stream.videoId)} on ${stream.deviceName || stream.deviceId}, since ${new Date(stream.startedAt).toLocaleTimeString()}`;
    }
    for (const [id, item] of this.streamItems) {
      if (!seen.has(id)) {
        const hadFocus = item.el.contains(document.activeElement);
        item.el.remove();
        this.streamItems.delete(id);
        if (hadFocus) this.toggle.focus();
      }
    }
    if (!this.streams.children.length && !this.streams.querySelector(".none")) {
      this.streams.append(h("li", { class: "none hint" }, "none"));
    } else if (this.streamItems.size) {
      for (const none of this.streams.querySelectorAll(".none")) none.remove();
    }
  }

  async saveLimit(event) {
    event.preventDefault();
    if (this.limit.validity.badInput) {
      // A number field holding letters reads as empty: refuse it instead of resetting the limit to the plan's.
      this.showRowError(new Error("Letters are not a limit: type a whole number, 0 or more (empty: the plan's)."));
      return;
    }
    const raw = this.limit.value.trim();
    const limit = raw === "" ? null : Number(raw);
    if (limit !== null && (!Number.isInteger(limit) || limit < 0)) {
      this.showRowError(new Error("The limit is a whole number, 0 or more (empty: the plan's)."));
      return;
    }
    this.dirty = false;
    if (!(await this.patch({ limit }))) {
      this.dirty = true;
      return;
    }
    const name = this.user ? this.user.name : this.id;
    this.rowSaved.textContent = limit === null ? `Saved: ${name} follows the plan's limit.` : `Saved: ${name}'s limit is ${limit}.`;
  }

  async toggleDisabled() {
    await this.patch({ disabled: !this.user.disabled });
  }

  /** PATCH the user, then refresh the table; false (and the problem shown in the row) when refused. */
  async patch(changes) {
    try {
      await api.patch(`/v1/users/${encodeURIComponent(this.id)}`, changes);
      this.showRowError(null);
    } catch (err) {
      this.showRowError(err);
      return false;
    }
    await refresh();
    return true;
  }

  async stopStream(streamId) {
    try {
      await api.del(`/v1/streams/${encodeURIComponent(streamId)}`);
      this.showRowError(null);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) this.showRowError(err);
    }
    refresh();
  }

  showRowError(err) {
    this.rowError.textContent = err ? err.message : "";
    this.rowError.hidden = !err;
    if (err) this.rowSaved.textContent = "";
  }
}

async function refreshUsers() {
  const users = await api.get("/v1/users");
  const streams = await Promise.all(
    users.map((user, index) =>
      user.disabled || index >= MAX_USERS_POLLED ? [] : api.get(`/users/${encodeURIComponent(user.id)}/streams`),
    ),
  );
  const body = $("users").tBodies[0];
  const seen = new Set();
  users.forEach((user, index) => {
    seen.add(user.id);
    let row = userRows.get(user.id);
    if (!row) {
      row = new UserRow(user);
      userRows.set(user.id, row);
      body.append(row.el);
    }
    row.update(user, streams[index]);
  });
  for (const [id, row] of userRows) {
    if (!seen.has(id)) {
      row.el.remove();
      userRows.delete(id);
    }
  }
}

// ---- videos ---------------------------------------------------------------------------------------------------

/** One video's row: title and URL inputs with a Save button, and Delete (asked to confirm in the row). */
class VideoRow {
  constructor(video) {
    this.id = video.id;
    this.dirty = false;
    this.title = h("input", { id: `title-${video.id}`, maxlength: "500", required: true });
    this.url = h("input", { id: `url-${video.id}`, maxlength: "2000", required: true });
    this.kinds = h("input", { id: `kinds-${video.id}`, maxlength: "400" });
    for (const input of [this.title, this.url, this.kinds]) {
      input.addEventListener("input", () => {
        this.dirty = true;
      });
    }
    this.save = h("button", { type: "button", onclick: () => this.store() }, "Save");
    this.remove = h("button", { type: "button", class: "danger", onclick: () => this.askDelete() }, "Delete");
    this.actions = h("div", { class: "row-actions" }, this.save, this.remove);
    this.titleLabel = h("label", { for: this.title.id, class: "sr-only" });
    this.urlLabel = h("label", { for: this.url.id, class: "sr-only" });
    this.kindsLabel = h("label", { for: this.kinds.id, class: "sr-only" });
    this.el = h(
      "tr",
      { "data-video-id": video.id },
      h("td", { "data-label": "Id" }, video.id),
      h("td", { "data-label": "Title" }, this.titleLabel, this.title),
      h("td", { "data-label": "URL" }, this.urlLabel, this.url),
      h("td", { "data-label": "Kinds" }, this.kindsLabel, this.kinds),
      h("td", {}, this.actions),
    );
  }

  update(video) {
    this.titleLabel.textContent = `Title of video ${video.id}`;
    this.urlLabel.textContent = `URL of video ${video.id}`;
    this.kindsLabel.textContent = `Kinds of video ${video.id}`;
    this.save.setAttribute("aria-label", `Save video ${video.id}`);
    this.remove.setAttribute("aria-label", `Delete video ${video.id}`);
    this.name = video.title;
    if (!this.dirty) {
      this.title.value = video.title;
      this.url.value = video.url;
      this.kinds.value = (video.kinds || []).join(", ");
    }
  }

  async store() {
    try {
      const video = await api.patch(`/v1/videos/${encodeURIComponent(this.id)}`, {
        title: this.title.value.trim(),
        url: this.url.value.trim(),
        kinds: kindList(this.kinds.value),
      });
      this.dirty = false;
      showError("videos-error", null);
      this.update(video);
      await refreshVideos();
    } catch (err) {
      showError("videos-error", err);
    }
  }

  /** Ask in the row (Escape or Cancel keeps the video): deleting ends every stream of it, on every account. */
  askDelete() {
    const question = h("span", { id: `delete-q-${this.id}` }, `Delete “${this.name}”? Streams playing it stop now.`);
    const yes = h("button", { type: "button", class: "danger", onclick: () => this.destroy() }, "Yes, delete");
    yes.setAttribute("aria-label", `Yes, delete video ${this.id}`);
    yes.setAttribute("aria-describedby", question.id);
    const cancel = h("button", { type: "button", onclick: () => this.keep() }, "Cancel");
    cancel.setAttribute("aria-label", `Cancel: keep video ${this.id}`);
    this.actions.replaceChildren(question, " ", yes, " ", cancel);
    this.actions.onkeydown = (event) => {
      if (event.key === "Escape") this.keep();
    };
    cancel.focus(); // the safe choice under the keyboard; "Yes, delete" is one Tab back
  }

  keep() {
    this.actions.onkeydown = null;
    this.actions.replaceChildren(this.save, this.remove);
    this.remove.focus();
  }

  async destroy() {
    try {
      await api.del(`/v1/videos/${encodeURIComponent(this.id)}`);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) {
        showError("videos-error", err);
        this.keep();
        return;
      }
    }
    showError("videos-error", null);
    $("videos-status").textContent = `Deleted “${this.name}”; its streams were stopped.`;
    this.el.remove();
    videoRows.delete(this.id);
    $("new-title").focus();
    await refreshVideos();
  }
}

async function refreshVideos() {
  const list = await api.get("/v1/videos");
  videos = new Map(list.map((video) => [video.id, video]));
  const body = $("videos").tBodies[0];
  for (const video of list) {
    let row = videoRows.get(video.id);
    if (!row) {
      row = new VideoRow(video);
      videoRows.set(video.id, row);
      body.append(row.el);
    }
    row.update(video);
  }
  for (const [id, row] of videoRows) {
    if (!videos.has(id)) {
      row.el.remove(); // deleted elsewhere (another admin, the API)
      videoRows.delete(id);
    }
  }
}

async function addVideo(event) {
  event.preventDefault();
  const title = $("new-title").value.trim();
  const url = $("new-url").value.trim();
  if (!title || !url) {
    showError("videos-error", new Error(title ? "Give the video a URL." : "Give the video a title."));
    $(title ? "new-url" : "new-title").focus();
    return;
  }
  try {
    await api.post("/v1/videos", { title, url, kinds: kindList($("new-kinds").value) });
    event.target.reset();
    showError("videos-error", null);
    await refreshVideos();
  } catch (err) {
    showError("videos-error", err);
  }
}

/** "uhd, live" -> ["uhd", "live"]. */
function kindList(text) {
  return text
    .split(",")
    .map((kind) => kind.trim())
    .filter(Boolean);
}

// ---- plans ----------------------------------------------------------------------------------------------------

/** JSON text of an object, or an Error naming `what` (empty text: `empty`). */
function parseJson(text, what, empty) {
  if (!text.trim()) return empty;
  try {
    const value = JSON.parse(text);
    if (value && typeof value === "object" && !Array.isArray(value)) return value;
  } catch {
    // reported below
  }
  throw new Error(`${what}: a JSON object, such as {"kinds": {"uhd": 1}}.`);
}

/** The rule fields of a plan (or shadow) that are set, as the JSON the admin edits. */
function rulesText(rules, extra = []) {
  const shown = {};
  for (const name of [...extra, ...RULE_FIELDS]) {
    if (rules[name] !== null && rules[name] !== undefined) shown[name] = rules[name];
  }
  return Object.keys(shown).length ? JSON.stringify(shown) : "";
}

/** One plan's row: name, total, rules and shadow as JSON, with a Save button. */
class PlanRow {
  constructor(plan) {
    this.id = plan.id;
    this.dirty = false;
    const field = (name, attrs) => h("input", { id: `${name}-${plan.id}`, ...attrs });
    this.name = field("plan-name", { maxlength: "200", required: true });
    this.max = field("plan-max", { type: "number", min: "0", max: "10000", class: "narrow" });
    this.rules = field("plan-rules", { maxlength: "2000" });
    this.shadow = field("plan-shadow", { maxlength: "2000" });
    this.labels = [this.name, this.max, this.rules, this.shadow].map((input) => {
      input.addEventListener("input", () => {
        this.dirty = true;
      });
      return h("label", { for: input.id, class: "sr-only" });
    });
    this.save = h("button", { type: "button", onclick: () => this.store() }, "Save");
    const [nameLabel, maxLabel, rulesLabel, shadowLabel] = this.labels;
    this.el = h(
      "tr",
      { "data-plan-id": plan.id },
      h("td", { "data-label": "Plan" }, nameLabel, this.name, h("br"), h("span", { class: "hint" }, `id ${plan.id}`)),
      h("td", { "data-label": "Max streams" }, maxLabel, this.max),
      h("td", { "data-label": "Rules" }, rulesLabel, this.rules),
      h("td", { "data-label": "Shadow" }, shadowLabel, this.shadow),
      h("td", {}, this.save),
    );
  }

  update(plan) {
    const [nameLabel, maxLabel, rulesLabel, shadowLabel] = this.labels;
    nameLabel.textContent = `Name of plan ${plan.id}`;
    maxLabel.textContent = `Max streams of ${plan.name}`;
    rulesLabel.textContent = `Rules of ${plan.name}`;
    shadowLabel.textContent = `Shadow policy of ${plan.name}`;
    this.save.setAttribute("aria-label", `Save plan ${plan.name}`);
    if (!this.dirty) {
      this.name.value = plan.name;
      this.max.value = plan.maxStreams;
      this.rules.value = rulesText(plan);
      this.shadow.value = plan.shadow ? rulesText(plan.shadow, ["maxStreams"]) : "";
    }
  }

  async store() {
    try {
      const rules = parseJson(this.rules.value, "Rules", {});
      const shadow = parseJson(this.shadow.value, "Shadow", null);
      const lifted = Object.fromEntries(RULE_FIELDS.map((name) => [name, null])); // a rule left out is lifted
      const plan = await api.patch(`/v1/plans/${encodeURIComponent(this.id)}`, {
        name: this.name.value.trim(),
        maxStreams: Number(this.max.value),
        ...lifted,
        ...rules,
        shadow,
      });
      this.dirty = false;
      showError("plans-error", null);
      this.update(plan);
    } catch (err) {
      showError("plans-error", err);
    }
  }
}

async function refreshPlans() {
  const list = await api.get("/v1/plans");
  const body = $("plans").tBodies[0];
  for (const plan of list) {
    let row = planRows.get(plan.id);
    if (!row) {
      row = new PlanRow(plan);
      planRows.set(plan.id, row);
      body.append(row.el);
    }
    row.update(plan);
  }
}

async function addPlan(event) {
  event.preventDefault();
  const name = $("new-plan-name").value.trim();
  const maxStreams = Number($("new-plan-max").value);
  if (!name || $("new-plan-max").value === "") {
    showError("plans-error", new Error(name ? "Give the plan its max streams." : "Give the plan a name."));
    return;
  }
  try {
    await api.post("/v1/plans", { name, maxStreams, ...parseJson($("new-plan-rules").value, "Rules", {}) });
    event.target.reset();
    showError("plans-error", null);
    await refreshPlans();
  } catch (err) {
    showError("plans-error", err);
  }
}

// ---- shadow denials and devices -------------------------------------------------------------------------------

async function refreshShadow() {
  const denials = await api.get("/v1/shadow-denials");
  const rows = denials.map((d) =>
    h(
      "tr",
      { "data-request-id": d.requestId },
      h("td", { "data-label": "When" }, since(d.decidedAt)),
      h("td", { "data-label": "User" }, d.userId),
      h("td", { "data-label": "Video on device" }, `${videoTitle(d.videoId)} on ${d.deviceId}`),
      h("td", { "data-label": "Shadow rule" }, d.rule),
      h("td", { "data-label": "Enforced" }, d.enforced),
    ),
  );
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: "5", class: "hint" }, "none")));
  $("shadow").tBodies[0].replaceChildren(...rows);
}

async function showDevices(event) {
  if (event) event.preventDefault();
  const userId = $("devices-user").value.trim();
  if (!userId) {
    showError("devices-error", new Error("Give the user id."));
    return;
  }
  try {
    const devices = await api.get(`/v1/devices?userId=${encodeURIComponent(userId)}`);
    const items = devices.map((device) =>
      h(
        "li",
        { "data-device-id": device.id },
        `${device.id}, last seen ${since(device.lastSeenAt)} `,
        h(
          "button",
          {
            type: "button",
            "aria-label": `Remove device ${device.id}`,
            onclick: () => forgetDevice(userId, device.id),
          },
          "Remove",
        ),
      ),
    );
    if (!items.length) items.push(h("li", { class: "none hint" }, "none registered"));
    $("devices").replaceChildren(...items);
    showError("devices-error", null);
  } catch (err) {
    showError("devices-error", err);
  }
}

async function forgetDevice(userId, deviceId) {
  try {
    await api.del(`/v1/devices/${encodeURIComponent(deviceId)}?userId=${encodeURIComponent(userId)}`);
  } catch (err) {
    showError("devices-error", err);
    return;
  }
  await showDevices();
}

// ---- refresh loop and session ---------------------------------------------------------------------------------

async function refresh() {
  if (!session) return;
  clearTimeout(timer);
  if (document.hidden) return; // a hidden tab asks nothing; visibilitychange refreshes it when seen again
  try {
    await refreshUsers();
    showError("users-error", null);
    $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (session) showError("users-error", err);
  }
  try {
    await refreshShadow(); // on its own: a failing users table does not hide the shadow's denials
    showError("shadow-error", null);
  } catch (err) {
    if (session) showError("shadow-error", err);
  }
  if (session) timer = setTimeout(refresh, POLL_MS);
}

async function start() {
  $("login-view").hidden = true;
  $("admin-view").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = session.user.name;
  try {
    await refreshVideos();
  } catch (err) {
    showError("videos-error", err);
  }
  try {
    await refreshPlans();
  } catch (err) {
    showError("plans-error", err);
  }
  await refresh();
}

function endSession(message, isError = false) {
  clearTimeout(timer);
  session = null;
  localStorage.removeItem(SESSION_KEY);
  for (const row of userRows.values()) row.el.remove();
  userRows.clear();
  for (const row of videoRows.values()) row.el.remove();
  videoRows.clear();
  for (const row of planRows.values()) row.el.remove();
  planRows.clear();
  $("admin-view").hidden = true;
  $("who").hidden = true;
  $("login-view").hidden = false;
  const el = $("login-error");
  el.textContent = message;
  el.hidden = !message;
  el.classList.toggle("info", !isError);
}

async function login(event) {
  event.preventDefault();
  const username = $("username").value.trim();
  const password = $("password").value;
  const error = $("login-error");
  error.classList.remove("info");
  if (!username || !password) {
    error.textContent = username ? "Enter the password." : "Enter the user name.";
    error.hidden = false;
    $(username ? "password" : "username").focus();
    return;
  }
  const button = event.target.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const answer = await api.login(username, password);
    if (!answer.user.admin) {
      error.textContent = `${answer.user.name} is not an admin. Log in as admin.`;
      error.hidden = false;
      return;
    }
    session = { token: answer.accessToken, user: answer.user };
    localStorage.setItem(SESSION_KEY, JSON.stringify(session));
    error.hidden = true;
    $("password").value = "";
    await start();
  } catch (err) {
    error.textContent = err.status === 401 ? "Wrong user name or password." : `Could not log in: ${err.message}`;
    error.hidden = false;
    $("password").select();
  } finally {
    button.disabled = false;
  }
}

$("login-form").addEventListener("submit", login);
$("logout").addEventListener("click", () => endSession("You logged out."));
$("video-add").addEventListener("submit", addVideo);
$("plan-add").addEventListener("submit", addPlan);
$("devices-form").addEventListener("submit", showDevices);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) refresh();
});
if (session) start();
