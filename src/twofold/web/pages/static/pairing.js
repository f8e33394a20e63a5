// A push enrollment's page: long-polls whether the device has paired, then completes the enrollment.
"use strict";

async function waitForPairing(form) {
  const status = document.querySelector("[data-pairing-status]");
  const url = `${form.dataset.statusUrl}?enrollment_id=${encodeURIComponent(form.dataset.enrollment)}&wait=25`;
  for (;;) {
    let answer;
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      answer = await response.json();
    } catch (_) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      continue;
    }
    if (answer.status === "paired") {
      status.textContent = "Paired. Finishing…";
      form.submit();
      return;
    }
    if (answer.status !== "pending") {
      status.textContent = "This pairing link expired or was already used. Go back and start again.";
      status.classList.add("error");
      return;
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form[data-pairing-complete]");
  if (form) waitForPairing(form);
});
