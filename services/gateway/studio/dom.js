// Tiny DOM helpers: element building without innerHTML (so no markup injection from prompts).

/**
 * h("div", {class: "tile", dataset: {index: 1}, onclick: fn}, child, "text", [more])
 * Attributes: `class`, `dataset` (object), `style` (object, set through element.style), `on<event>`
 * (listener), booleans (true sets an empty attribute, false/null/undefined skips), anything else
 * via setAttribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") Object.assign(el.style, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces every child of `el`. */
export function replaceChildren(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** Sets or clears a message in an `.error` element (hidden while empty). */
export function showError(el, message) {
  if (!el) return;
  el.textContent = message || "";
  el.hidden = !message;
}

/** A short "3 minutes ago" style time. */
export function timeAgo(ms) {
  const seconds = Math.max(0, (Date.now() - Number(ms)) / 1000);
  if (seconds < 60) return "just now";
  const minutes = seconds / 60;
  if (minutes < 60) return `${Math.floor(minutes)} min ago`;
  const hours = minutes / 60;
  if (hours < 24) return `${Math.floor(hours)} h ago`;
  return new Date(Number(ms)).toLocaleDateString();
}

/** A transient message at the bottom of the screen. */
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  if (!box) return;
  const item = h("div", { class: `toast toast-${kind}`, role: "status" }, message);
  box.append(item);
  requestAnimationFrame(() => item.classList.add("shown"));
  setTimeout(() => {
    item.classList.remove("shown");
    setTimeout(() => item.remove(), 300);
  }, 2600);
}

/** True when a key event comes from a place that takes text. */
export function isTyping(event) {
  const t = event.target;
  if (!(t instanceof Element)) return false;
  return t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName);
}
