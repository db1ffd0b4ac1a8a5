// The inspector page. Everything it shows comes from the network and is attacker-chosen
// (ids, property names, values): it is written with textContent, never as markup.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);
let csrf = null;
let open = null;        // the key of the open record: {channel, v1, kind, user, conversation}
let openETag = "";      // the eTag the editor's text was based on
let shownVersion = null; // the version of what the page shows, for polling
let channels = [];      // the listed channels; an option's value is its index
let listing = null;     // what the list shows: channel, kind and prefix, as searched
let dirty = false;      // the editor holds changes not saved yet
let cursor = null;
let pollTimer = null;
let opened = 0;         // counts records opened: a poll chain belongs to one opening
let reads = 0;          // counts reads: only the answer to the latest is shown

function text(tag, content, className) {
  const node = document.createElement(tag);
  node.textContent = content;
  if (className) node.className = className;
  return node;
}

function localTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

async function api(method, path, body, headers) {
  const options = { method, headers: Object.assign({}, headers), credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  if (method === "POST" && csrf) options.headers["X-Inline-State-CSRF"] = csrf;
  const response = await fetch("api/" + path, options);
  let json = null;
  try { json = await response.json(); } catch (e) { json = null; }
  return { status: response.status, json };
}

function problem(result) {
  const error = result.json && result.json.error;
  return error ? `${error.code}: ${error.message}` : `HTTP ${result.status}`;
}

// -- logging in ---------------------------------------------------------------------------

function showLogin(noAuth, message) {
  $("main").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-note").textContent = noAuth
    ? "No-auth mode (loopback only): leave the secret empty."
    : "Log in with the state API's secret.";
  $("login-error").textContent = message || "";
  $("secret").focus();
}

async function enter(session) {
  csrf = session.csrf;
  $("who").textContent = "bot: " + session.bot;
  $("login").hidden = true;
  $("main").hidden = false;
  $("logout").hidden = false;
  await loadChannels();
  await openFromHash();
}

async function start() {
  const result = await api("GET", "session");
  if (result.status === 200) return enter(result.json);
  showLogin(Boolean(result.json && result.json.noAuth));
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = await api("POST", "login", { secret: $("secret").value });
  $("secret").value = "";
  if (result.status === 200) return enter(result.json);
  showLogin(false, problem(result));
});

$("logout").addEventListener("click", async () => {
  await api("POST", "logout", {});
  csrf = null;
  closeRecord();
  showLogin(false, "Logged out.");
});

// -- finding records ----------------------------------------------------------------------

function channelKey() {
  const channel = channels[Number($("channel").value)];
  return channel === null ? { v1: true } : { channel };
}

async function loadChannels() {
  const result = await api("GET", "channels");
  const select = $("channel");
  select.replaceChildren();
  if (result.status !== 200) {
    $("list-note").textContent = problem(result);
    return;
  }
  channels = result.json.channels;
  channels.forEach((channel, index) => {
    const option = text("option", channel === null ? "(v1: every channel)" : channel);
    option.value = String(index);
    select.append(option);
  });
  $("list-note").textContent = result.json.channels.length ? "" : "No records yet.";
  if (result.json.channels.length) await search(true);
}

function label(key) {
  if (key.kind === "user") return key.user;
  if (key.kind === "conversation") return key.conversation;
  return `${key.user} in ${key.conversation}`;
}

async function search(fresh) {
  if (fresh) {
    if (!$("channel").value) return;
    cursor = null;
    $("records").replaceChildren();
    listing = Object.assign(channelKey(), { kind: $("kind").value, prefix: $("prefix").value });
  }
  const mine = listing;  // a newer search may start while this one waits
  const result = await api("POST", "records", Object.assign({}, mine, { cursor }));
  if (mine !== listing) return;
  if (result.status !== 200) {
    $("list-note").textContent = problem(result);
    return;
  }
  for (const key of result.json.records) {
    const button = text("button", label(key));
    button.type = "button";
    const full = Object.assign(mine.v1 ? { v1: true } : { channel: mine.channel }, key);
    button.addEventListener("click", () => openRecord(full));
    const item = document.createElement("li");
    item.append(button);
    $("records").append(item);
  }
  cursor = result.json.cursor;
  $("more").hidden = cursor === null;
  const count = $("records").children.length;
  $("list-note").textContent = count ? `${count} shown` + (cursor ? ", more may follow" : "") : "None found.";
}

$("search").addEventListener("submit", (event) => { event.preventDefault(); search(true); });
$("channel").addEventListener("change", () => search(true));
$("kind").addEventListener("change", () => search(true));
$("more").addEventListener("click", () => search(false));

// -- one record ---------------------------------------------------------------------------

async function openFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.get("kind")) return;
  const key = {
    kind: params.get("kind"), user: params.get("user") || "",
    conversation: params.get("conversation") || "",
  };
  if (params.get("v1")) key.v1 = true; else key.channel = params.get("channel") || "";
  await openRecord(key);
}

function closeRecord() {
  open = null;
  opened += 1;
  clearTimeout(pollTimer);
  $("record").hidden = true;
}

// One poll at a time: the next is scheduled when this one has answered.
async function poll(opening) {
  await refresh();
  if (opening === opened) pollTimer = setTimeout(poll, POLL_MS, opening);
}

async function openRecord(key) {
  open = key;
  dirty = false;
  shownVersion = null;
  $("status").textContent = "";
  $("conflict").hidden = true;
  $("confirm").hidden = true;
  $("record").hidden = false;
  $("delete-user").hidden = key.kind === "conversation";
  clearTimeout(pollTimer);
  const opening = ++opened;
  await refresh();
  if (opening === opened) pollTimer = setTimeout(poll, POLL_MS, opening);
}

async function refresh() {
  if (!open) return;
  const key = open;
  const mine = ++reads;
  const result = await api("POST", "read", Object.assign({}, key, { known: shownVersion }));
  if (key !== open || mine !== reads) return;
  if (result.status !== 200) {
    $("record-live").textContent = problem(result);
    return;
  }
  if (result.json.unchanged) return;
  shownVersion = result.json.version;
  show(result.json);
}

function show(record) {
  $("record-title").textContent = `${record.kind}: ${label(record)}`;
  $("record-meta").textContent = record.exists
    ? `eTag ${record.eTag} · last modified ${localTime(record.modified)}`
    : "No data stored.";
  const rows = $("properties").tBodies[0];
  rows.replaceChildren();
  for (const property of record.properties) {
    const row = document.createElement("tr");
    const value = document.createElement("td");
    value.append(text("pre", property.value));
    row.append(text("td", property.name), text("td", localTime(property.modified)), value);
    rows.append(row);
  }
  $("record-text").hidden = record.text === null;
  $("record-text").textContent = record.text === null ? "" : `A string (REST): ${record.text}`;
  if (dirty) {
    $("record-live").textContent = record.eTag === openETag
      ? "" : "The record changed since you started editing.";
    return;
  }
  openETag = record.eTag;
  $("editor").value = record.data === null ? "{}" : record.data;
  $("record-live").textContent = "Updates as the conversation runs.";
}

$("editor").addEventListener("input", () => { dirty = true; });

$("save").addEventListener("click", async () => {
  const body = Object.assign({}, open, { data: $("editor").value, eTag: openETag });
  const result = await api("POST", "save", body);
  if (result.status === 200) {
    dirty = false;
    openETag = result.json.eTag;
    shownVersion = null;
    $("conflict").hidden = true;
    $("status").textContent = "Saved.";
    await refresh();
    return;
  }
  if (result.status === 412) {
    $("conflict-value").textContent = result.json.current.data === null
      ? "(no data)" : result.json.current.data;
    $("conflict").hidden = false;
    $("conflict").dataset.eTag = result.json.current.eTag;
    $("conflict").dataset.data = result.json.current.data === null ? "{}" : result.json.current.data;
    $("status").textContent = "Not saved: conflict.";
    return;
  }
  $("status").textContent = "Not saved: " + problem(result);
});

$("take-current").addEventListener("click", () => {
  $("editor").value = $("conflict").dataset.data;
  openETag = $("conflict").dataset.eTag;
  dirty = true;
  $("conflict").hidden = true;
  $("status").textContent = "Editing the current value.";
});

$("delete-user").addEventListener("click", () => {
  const where = open.v1 ? "every channel (v1)" : `channel ${open.channel}`;
  $("confirm-text").textContent =
    `Delete all data of user ${open.user} on ${where}: their user record and every ` +
    "per-conversation record? This cannot be undone.";
  $("confirm").hidden = false;
});

$("cancel-delete").addEventListener("click", () => { $("confirm").hidden = true; });

$("confirm-delete").addEventListener("click", async () => {
  const body = Object.assign(open.v1 ? { v1: true } : { channel: open.channel }, { user: open.user });
  const result = await api("POST", "delete-user", body);
  $("confirm").hidden = true;
  if (result.status !== 200) {
    $("status").textContent = "Not deleted: " + problem(result);
    return;
  }
  dirty = false;
  shownVersion = null;
  $("status").textContent = "The user's data was deleted.";
  await refresh();
  await search(true);
});

start();
