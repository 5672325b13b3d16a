// The arena page: fetch a battle, show it, post one vote, reveal the model names, fetch the next.
"use strict";
let battle = null;
const $ = (id) => document.getElementById(id);
const voteButtons = () => document.querySelectorAll("button[data-choice]");

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function showPrompt(prompt) {
  const box = $("prompt");
  box.replaceChildren();
  const turns = prompt.messages || [{ role: "text", content: prompt.text }];
  for (const m of turns) {
    const div = document.createElement("div");
    div.className = "turn";
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = m.role + ":";
    div.append(role, document.createTextNode(m.content));
    box.append(div);
  }
}

async function nextBattle() {
  $("next").disabled = true;
  setStatus("…");
  const resp = await fetch("api/battle", { cache: "no-store" });
  if (!resp.ok) { setStatus("could not load a battle: HTTP " + resp.status, true); return; }
  battle = await resp.json();
  $("prompt").dataset.promptId = battle.prompt_id;
  document.body.dataset.token = battle.token;
  showPrompt(battle.prompt);
  $("answer-a").textContent = battle.answers[0];
  $("answer-b").textContent = battle.answers[1];
  $("name-a").textContent = "";
  $("name-b").textContent = "";
  voteButtons().forEach((b) => { b.disabled = false; });
  setStatus("");
}

async function vote(choice) {
  voteButtons().forEach((b) => { b.disabled = true; });
  const resp = await fetch("api/vote", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: battle.token, choice: choice }),
  });
  const body = await resp.json();
  if (!resp.ok) {
    setStatus("vote not stored: " + (body.error || resp.status), true);
    $("next").disabled = false;
    return;
  }
  $("name-a").textContent = body.model_a;
  $("name-b").textContent = body.model_b;
  document.body.dataset.voted = battle.token;
  setStatus("已记录 (vote stored)");
  $("next").disabled = false;
}

voteButtons().forEach((b) => b.addEventListener("click", () => vote(b.dataset.choice)));
$("next").addEventListener("click", nextBattle);
nextBattle();
