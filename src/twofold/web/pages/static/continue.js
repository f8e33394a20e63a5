// After a step-up, post the interrupted form again without another click ("Continue" without JavaScript).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form[data-auto-submit]");
  if (form) form.submit();
});
