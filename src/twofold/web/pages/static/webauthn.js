// WebAuthn for Twofold's pages: options arrive as WebAuthn JSON, credentials go back as the
// browser's toJSON() output (API.md). Uses PublicKeyCredential.parse*OptionsFromJSON and toJSON()
// where the browser has them, base64url by hand where not.
"use strict";

const b64url = {
  encode(buffer) {
    const bytes = new Uint8Array(buffer);
    let text = "";
    for (const byte of bytes) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  },
  decode(value) {
    const base64 = value.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((value.length + 3) % 4);
    return Uint8Array.from(atob(base64), (ch) => ch.charCodeAt(0)).buffer;
  },
};

function supported() {
  return typeof window.PublicKeyCredential === "function" && !!navigator.credentials;
}

function creationOptions(json) {
  if (typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function") {
    return PublicKeyCredential.parseCreationOptionsFromJSON(json);
  }
  return {
    ...json,
    challenge: b64url.decode(json.challenge),
    user: { ...json.user, id: b64url.decode(json.user.id) },
    excludeCredentials: (json.excludeCredentials || []).map((c) => ({ ...c, id: b64url.decode(c.id) })),
  };
}

function requestOptions(json) {
  if (typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function") {
    return PublicKeyCredential.parseRequestOptionsFromJSON(json);
  }
  return {
    ...json,
    challenge: b64url.decode(json.challenge),
    allowCredentials: (json.allowCredentials || []).map((c) => ({ ...c, id: b64url.decode(c.id) })),
  };
}

function credentialJSON(credential) {
  if (typeof credential.toJSON === "function") {
    try {
      return credential.toJSON();
    } catch (_) {
      // fall through to the manual encoding
    }
  }
  const response = credential.response;
  const json = {
    id: credential.id,
    rawId: b64url.encode(credential.rawId),
    type: credential.type,
    authenticatorAttachment: credential.authenticatorAttachment || null,
    clientExtensionResults: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {},
    response: { clientDataJSON: b64url.encode(response.clientDataJSON) },
  };
  if (response.attestationObject) {
    json.response.attestationObject = b64url.encode(response.attestationObject);
    json.response.transports = response.getTransports ? response.getTransports() : [];
  } else {
    json.response.authenticatorData = b64url.encode(response.authenticatorData);
    json.response.signature = b64url.encode(response.signature);
    if (response.userHandle) json.response.userHandle = b64url.encode(response.userHandle);
  }
  return json;
}

function explain(error) {
  if (!supported()) return "This browser cannot use security keys or built-in authenticators. Try another method.";
  switch (error && error.name) {
    case "NotAllowedError":
      return "The request was cancelled or timed out. Try again when your authenticator is ready.";
    case "InvalidStateError":
      return "This authenticator is already registered to your account.";
    case "SecurityError":
      return "This page's address cannot be used with WebAuthn.";
    case "NotSupportedError":
      return "This authenticator does not support what this server asks for.";
    default:
      return "The authenticator did not answer: " + ((error && error.message) || "unknown error") + ".";
  }
}

function showError(message) {
  let box = document.querySelector("[data-webauthn-error]");
  if (!box) {
    box = document.createElement("p");
    box.className = "error";
    box.setAttribute("role", "alert");
    box.setAttribute("data-webauthn-error", "");
    const main = document.querySelector("main");
    main.insertBefore(box, main.firstChild);
  }
  box.textContent = message;
}

function submitCredential(form, credential) {
  form.querySelector("input[name=credential_json]").value = JSON.stringify(credentialJSON(credential));
  form.submit();
}

// Verification step: buttons carrying data-webauthn="platform_authenticator" | "security_key".
async function verifyWith(type, button) {
  if (!supported()) return showError(explain(null));
  const form = document.getElementById("webauthn-verify");
  button.disabled = true;
  try {
    const body = new FormData();
    body.set("csrf_token", form.querySelector("input[name=csrf_token]").value);
    body.set("type", type);
    const url = form.dataset.optionsUrl || "/login/webauthn/options";
    const answer = await fetch(url, { method: "POST", body, credentials: "same-origin" });
    const json = await answer.json();
    if (!answer.ok) throw Object.assign(new Error(json.detail || "the server refused"), { name: "ServerError" });
    const credential = await navigator.credentials.get({ publicKey: requestOptions(json.publicKey) });
    submitCredential(form, credential);
  } catch (error) {
    showError(error.name === "ServerError" ? error.message : explain(error));
    button.disabled = false;
  }
}

// Enrollment step: the options are embedded in the page.
async function enroll(button) {
  if (!supported()) return showError(explain(null));
  const form = document.getElementById("webauthn-enroll");
  const options = JSON.parse(document.getElementById("webauthn-creation-options").textContent);
  button.disabled = true;
  try {
    const credential = await navigator.credentials.create({ publicKey: creationOptions(options) });
    submitCredential(form, credential);
  } catch (error) {
    showError(explain(error));
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-webauthn]")) {
    button.addEventListener("click", () => verifyWith(button.dataset.webauthn, button));
  }
  const enrollButton = document.querySelector("button[data-webauthn-enroll]");
  if (enrollButton) enrollButton.addEventListener("click", () => enroll(enrollButton));
});
