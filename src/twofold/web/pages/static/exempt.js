// "Exempt Accounts": removals (X) and additions are staged on the page and sent together by "Save".
"use strict";

function markUnsaved(form) {
  form.querySelector("[data-unsaved]").hidden = false;
}

function toggleRemove(form, row, button) {
  const input = row.querySelector("[data-remove]");
  const removing = !input.value;
  input.value = removing ? "1" : "";
  row.classList.toggle("removed", removing);
  row.querySelector("[data-staged]").hidden = !removing;
  const name = row.cells[0].textContent.trim();
  button.setAttribute("aria-label", removing ? `Keep ${name}` : `Remove ${name}`);
  markUnsaved(form);
}

function stageAdd(form) {
  const field = form.querySelector("#add_username");
  const days = form.querySelector("#add_days");
  const username = field.value.trim();
  if (!username) return field.focus();
  const rows = form.querySelector("[data-exempt-rows]");
  const row = rows.insertRow();
  row.dataset.staged = "add";
  row.insertCell().textContent = username;
  row.insertCell().textContent = "";
  row.insertCell().textContent = "will be added when you save";
  row.insertCell().textContent = `in ${days.value || 90} days`;
  const cell = row.insertCell();
  const hidden = document.createElement("input");
  hidden.type = "hidden";
  hidden.name = `add:${username}`;
  hidden.value = days.value;
  const undo = document.createElement("button");
  undo.type = "button";
  undo.className = "link";
  undo.textContent = "Undo";
  undo.setAttribute("aria-label", `Do not add ${username}`);
  undo.addEventListener("click", () => row.remove());
  cell.append(hidden, undo);
  const empty = form.querySelector("[data-empty]");
  if (empty) empty.hidden = true;
  field.value = "";
  markUnsaved(form);
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("exempt-accounts");
  if (!form) return;
  form.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    if (button.dataset.action === "remove") toggleRemove(form, button.closest("tr"), button);
    if (button.dataset.action === "add") stageAdd(form);
  });
  form.querySelector("#add_username").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      stageAdd(form);
    }
  });
});
