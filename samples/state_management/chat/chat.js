// The sample's chat page: sends activities to the bot as a channel would (inline
// replies, deliveryMode expectReplies) and shows the three bags after every turn.
// Everything shown is written as text, never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const random = () => Math.random().toString(36).slice(2, 10);
const user = sessionStorage.getItem("chat-user") || "user-" + random();
sessionStorage.setItem("chat-user", user);
const conversation = "conversation-" + random();
const CHANNEL = "chat";
const BOT = { id: "state-bot", name: "State bot" };
let turns = 0;
let shown = {};

$("who").textContent = "you are " + user;
$("inspect").href = "inspector/#" + new URLSearchParams({ channel: CHANNEL, kind: "user", user });

function say(who, text) {
  const item = document.createElement("li");
  item.className = who;
  item.textContent = text;
  $("transcript").append(item);
  item.scrollIntoView({ block: "nearest" });
}

function activity(fields) {
  return Object.assign({
    id: "activity-" + random(),
    channelId: CHANNEL,
    serviceUrl: location.origin + "/",
    timestamp: new Date().toISOString(),
    conversation: { id: conversation },
    from: { id: user, name: "You" },
    recipient: BOT,
    deliveryMode: "expectReplies",
  }, fields);
}

async function send(fields) {
  $("error").textContent = "";
  const response = await fetch("api/messages", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(activity(fields)),
  });
  if (!response.ok) {
    $("error").textContent = `The bot answered HTTP ${response.status}`;
    return;
  }
  const body = await response.json();
  for (const reply of body.activities || []) {
    if (reply.text) say("bot", reply.text);
  }
  if (fields.type === "message") turns += 1;
  await showBags();
}

async function showBags() {
  const params = new URLSearchParams({ user, conversation });
  const response = await fetch("chat/bags?" + params);
  if (!response.ok) {
    $("error").textContent = `Reading the state failed: HTTP ${response.status}`;
    return;
  }
  const bags = await response.json();
  $("turn").textContent = `after turn ${turns}`;
  for (const name of ["user", "conversation", "private"]) {
    const text = bags[name] === null ? "(empty)" : bags[name];
    const pre = $("bag-" + name);
    pre.classList.toggle("changed", shown[name] !== undefined && shown[name] !== text);
    pre.textContent = text;
    shown[name] = text;
  }
}

$("compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  say("user", text);
  await send({ type: "message", text });
  $("text").focus();
});

send({ type: "conversationUpdate", membersAdded: [{ id: user, name: "You" }] });
$("text").focus();
