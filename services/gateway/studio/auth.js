// The API key: asked for once (a small dialog, not prompt()), kept in this tab's sessionStorage.

const STORAGE_KEY = "philip.apiKey";
let pending = null;
let memoryKey = ""; // used when sessionStorage is unavailable

export function getKey() {
  try {
    return sessionStorage.getItem(STORAGE_KEY) || "";
  } catch {
    return memoryKey;
  }
}

export function setKey(key) {
  memoryKey = key || "";
  try {
    if (key) sessionStorage.setItem(STORAGE_KEY, key);
    else sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    /* storage disabled: the key lives only as long as this page */
  }
  window.dispatchEvent(new CustomEvent("philip:key"));
}

/**
 * Opens the key dialog (once, however many requests got a 401) and resolves with the key typed.
 * `reason` is the server's message when a key was sent and refused. Rejects when dismissed.
 */
export function askForKey(reason) {
  if (pending) return pending;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  const error = document.getElementById("key-error");
  error.textContent = reason || "";
  error.hidden = !reason;
  input.value = "";
  pending = new Promise((resolve, reject) => {
    const done = (key) => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onCancel);
      pending = null;
      if (dialog.open) dialog.close();
      if (key) {
        setKey(key);
        resolve(key);
      } else {
        reject(new Error("An API key is needed to use this studio."));
      }
    };
    const onSubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (key) done(key);
    };
    const onCancel = () => done("");
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("cancel", onCancel);
  });
  dialog.showModal();
  input.focus();
  return pending;
}
