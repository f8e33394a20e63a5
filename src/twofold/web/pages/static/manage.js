// "Manage Your Verification Methods": renames and removals are staged on the page and sent together by
// "Save" (the server applies them as one change and refuses one that leaves no method).
"use strict";

const NAME_MAX = 64;

function showError(form, message) {
  const box = form.querySelector("[data-manage-error]");
  box.textContent = message;
  box.hidden = !message;
}

function remaining(form) {
  return [...form.querySelectorAll("li[data-method]")].filter((row) => !row.classList.contains("removed")).length;
}

function markUnsaved(form) {
  form.dataset.dirty = "1";
  form.querySelector("[data-unsaved]").hidden = false;
}

function setStaged(row, text) {
  const note = row.querySelector("[data-staged]");
  note.textContent = text;
  note.hidden = !text;
}

function nameRow(row, name) {
  row.querySelector(".method-name").textContent = name;
  row.querySelector("[data-action=rename]").setAttribute("aria-label", `Rename ${name}`);
  row.querySelector("[data-action=remove]").setAttribute("aria-label", `Remove ${name}`);
}

function startRename(form, row) {
  showError(form, "");
  row.querySelector("[data-edit]").hidden = false;
  const input = row.querySelector("[data-edit] input");
  input.disabled = false;
  input.focus();
  input.select();
}

function confirmRename(form, row) {
  const input = row.querySelector("[data-edit] input");
  const name = input.value.trim();
  if (!name || name.length > NAME_MAX) {
    return showError(form, `A name needs 1 to ${NAME_MAX} characters.`);
  }
  const others = [...form.querySelectorAll("li[data-method]")].filter((other) => other !== row && !other.classList.contains("removed"));
  if (others.some((other) => other.querySelector(".method-name").textContent.toLowerCase() === name.toLowerCase())) {
    return showError(form, `You already have a verification method named "${name}".`);
  }
  showError(form, "");
  input.value = name;
  nameRow(row, name);
  row.querySelector("[data-edit]").hidden = true;
  if (name !== row.dataset.name) {
    setStaged(row, " · renamed, not saved yet");
    markUnsaved(form);
  } else {
    input.disabled = true;
    setStaged(row, "");
  }
}

function cancelRename(row) {
  const input = row.querySelector("[data-edit] input");
  input.value = row.dataset.name;
  input.disabled = true;
  nameRow(row, row.dataset.name);
  row.querySelector("[data-edit]").hidden = true;
  setStaged(row, "");
}

function startRemove(form, row) {
  if (remaining(form) <= 1) {
    return showError(form, "You must keep at least one verification method. Add another method before you remove this one.");
  }
  showError(form, "");
  row.querySelector("[data-confirm]").hidden = false;
}

function confirmRemove(form, row) {
  if (remaining(form) <= 1) {
    row.querySelector("[data-confirm]").hidden = true;
    return showError(form, "You must keep at least one verification method. Add another method before you remove this one.");
  }
  row.querySelector("[data-confirm]").hidden = true;
  row.querySelector("[data-remove]").value = "1";
  row.classList.add("removed");
  for (const button of row.querySelectorAll(".actions button")) button.disabled = true;
  setStaged(row, " · will be removed when you save");
  row.querySelector("[data-action=undo-remove]").hidden = false;
  markUnsaved(form);
}

function undoRemove(row) {
  row.querySelector("[data-remove]").value = "";
  row.classList.remove("removed");
  for (const button of row.querySelectorAll(".actions button")) button.disabled = false;
  row.querySelector("[data-action=undo-remove]").hidden = true;
  setStaged(row, row.querySelector("[data-edit] input").disabled ? "" : " · renamed, not saved yet");
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("manage-methods");
  if (!form) return;
  form.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const row = button.closest("li[data-method]");
    const actions = {
      rename: () => startRename(form, row),
      "confirm-rename": () => confirmRename(form, row),
      "cancel-rename": () => cancelRename(row),
      remove: () => startRemove(form, row),
      "confirm-remove": () => confirmRemove(form, row),
      "cancel-remove": () => { row.querySelector("[data-confirm]").hidden = true; },
      "undo-remove": () => undoRemove(row),
    };
    actions[button.dataset.action]();
  });
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target.matches("[data-edit] input")) {
      event.preventDefault();
      confirmRename(form, event.target.closest("li[data-method]"));
    }
  });
  form.querySelector("[data-done]").addEventListener("click", (event) => {
    if (form.dataset.dirty && !window.confirm("Leave without saving your changes?")) event.preventDefault();
  });
});
