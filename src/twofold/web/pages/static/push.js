// The sign-in page while a push notification waits: long-polls its status and, once the device has
// approved, posts the verification form; a denial or expiry offers to send another.
"use strict";

const MESSAGES = {
  denied: "The sign-in was denied on your device. Send another notification, or try another method.",
  expired: "The notification expired before it was answered. Send another one, or try another method.",
  used: "This notification was already used. Send another one.",
};

async function follow(box) {
  const status = box.querySelector("[data-push-status]");
  const url = `${box.dataset.statusUrl}?challenge_id=${encodeURIComponent(box.dataset.pushChallenge)}&wait=25`;
  for (;;) {
    let answer;
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401 || response.status === 404 || response.status === 410) {
        window.location.reload();
        return;
      }
      answer = await response.json();
    } catch (_) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      continue;
    }
    if (answer.status === "approved") {
      status.textContent = "Approved. Signing you in…";
      box.querySelector("form[data-push-verify]").submit();
      return;
    }
    if (answer.status !== "pending") {
      status.textContent = MESSAGES[answer.status] || "The notification was not approved.";
      status.classList.add("error");
      const again = document.querySelector("form[data-push-send]");
      if (again) again.hidden = false;
      return;
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.querySelector("[data-push-challenge]");
  if (box) follow(box);
});
