// Keyboard shortcuts of the session screen: 1-8 like, Shift+1-8 dislike (event.code: Shift changes
// event.key), Enter next round, F finalize the hovered/selected image, Esc cancel the session.

import { isTyping } from "./dom.js";

export function bindSessionKeys({ enabled, toggle, next, finalize, cancel, canCancel }) {
  function onKey(event) {
    if (!enabled() || event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    if (document.querySelector("dialog[open]") || isTyping(event)) return;
    const digit = /^(?:Digit|Numpad)([1-8])$/.exec(event.code);
    if (digit) {
      event.preventDefault();
      toggle(Number(digit[1]) - 1, event.shiftKey ? "disliked" : "liked");
      return;
    }
    const onControl = event.target instanceof Element && event.target.closest("button, a, summary");
    if (event.key === "Enter" && !onControl) {
      event.preventDefault();
      next();
    } else if (event.code === "KeyF" && !event.shiftKey) {
      event.preventDefault();
      finalize();
    } else if (event.key === "Escape" && canCancel()) {
      event.preventDefault();
      cancel();
    }
  }

  document.addEventListener("keydown", onKey);
  return { unbind: () => document.removeEventListener("keydown", onKey) };
}
