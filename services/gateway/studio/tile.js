// One image tile: live preview while it denoises, then the finished image with a like/dislike state.

import { h } from "./dom.js";
import { setImage } from "./images.js";

const BADGES = { liked: "♥", disliked: "✕", none: "" };
const NEXT = { none: "liked", liked: "disliked", disliked: "none" };

/** The state after a click. A like or dislike already sent can be flipped, not cleared. */
export function nextState(current, committed) {
  let next = NEXT[current] || "liked";
  if (next === "none" && committed !== "none") next = NEXT[next];
  return next;
}

export function aspectOf(ratioName) {
  switch (ratioName) {
    case "ASPECT_RATIO_LANDSCAPE_4_3": return 4 / 3;
    case "ASPECT_RATIO_PORTRAIT_3_4": return 3 / 4;
    case "ASPECT_RATIO_WIDE_16_9": return 16 / 9;
    case "ASPECT_RATIO_TALL_9_16": return 9 / 16;
    default: return 1;
  }
}

export class Tile {
  constructor({ index, interactive, small = false, showKey = false }) {
    this.img = h("img", { alt: "", draggable: "false", decoding: "async" });
    this.img.addEventListener("load", () => this.el.classList.add("has-image"));
    this.bar = h("i");
    this.caption = h("p", { class: "tile-caption", hidden: true });
    this.badge = h("span", { class: "tile-badge", "aria-hidden": "true" });
    this.el = h("div", {
      class: `tile${small ? " small" : ""}${interactive ? " interactive" : ""}`,
      dataset: { index: String(index), state: "none" },
      tabindex: interactive ? "0" : false,
      role: interactive ? "button" : "img",
    },
    h("div", { class: "tile-media" }, this.img, h("div", { class: "tile-shimmer" })),
    showKey ? h("span", { class: "tile-key", "aria-hidden": "true" }, String(index + 1)) : null,
    this.badge,
    h("div", { class: "tile-bar" }, this.bar),
    this.caption);
    this.index = index;
    this.imageId = "";
  }

  setAspect(ratio) {
    if (ratio > 0) this.el.style.setProperty("--aspect", String(ratio));
  }

  /** A preview (base64 PNG, no id) at `fraction` (0-1) of the denoising. */
  showPreview(png, fraction, { width, height } = {}) {
    if (png) setImage(this.img, { png });
    if (width && height) this.setAspect(width / height);
    this.el.classList.add("denoising");
    this.el.dataset.phase = "preview";
    this.setProgress(fraction);
  }

  setProgress(fraction) {
    this.bar.style.width = `${Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100)}%`;
  }

  /** The finished RoundImage. */
  showImage(roundImage, sessionPrompt) {
    const image = roundImage.image || {};
    this.imageId = image.id || "";
    this.el.dataset.imageId = this.imageId;
    this.el.dataset.phase = "done";
    this.el.classList.remove("denoising");
    this.setProgress(1);
    if (image.width && image.height) this.setAspect(image.width / image.height);
    setImage(this.img, { png: image.png, id: image.id });
    const n = this.index + 1;
    const text = roundImage.prompt && roundImage.prompt !== sessionPrompt ? roundImage.prompt : "";
    this.caption.textContent = text;
    this.caption.hidden = !text;
    this.el.title = text ? `#${n}: ${text}` : `#${n}`;
    this.img.alt = text || `image ${n}`;
    this.el.classList.toggle("explored", Boolean(text));
  }

  setState(state, committed = "none") {
    if (this.el.dataset.state === state && this.el.dataset.committed === committed) return;
    this.el.dataset.state = state;
    this.el.dataset.committed = committed;
    this.badge.textContent = BADGES[state] || "";
    this.el.setAttribute("aria-pressed", state === "none" ? "false" : "true");
    this.el.setAttribute("aria-label", `image ${this.index + 1}${state === "none" ? "" : `, ${state}`}`);
  }

  setChosen(chosen) {
    this.el.classList.toggle("chosen", chosen);
  }
}
