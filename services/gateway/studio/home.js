// The studio's empty state: what to do, and the latest sessions to pick up again.

import { api } from "./api.js";
import { h, replaceChildren, timeAgo } from "./dom.js";
import { setImage } from "./images.js";

export function createHome() {
  const recent = h("div", { class: "recent-grid", id: "recent" });
  const recentBlock = h("section", { class: "recent", hidden: true },
    h("div", { class: "recent-head" }, h("h3", { class: "section-title" }, "Pick up where you left off"),
      h("a", { href: "/gallery", class: "muted" }, "All sessions →")), recent);
  const el = h("section", { class: "home", id: "home" },
    h("div", { class: "home-hero" },
      h("h1", { class: "home-title" }, "Shape an image by choosing."),
      h("p", { class: "home-sub" }, "Describe it, then like ♥ and dislike ✕ what each round shows you. ",
        "Every round moves toward what you want; finalize the one you love to get it upscaled 4×."),
      h("ol", { class: "home-steps" },
        h("li", {}, h("span", {}, "1"), "Write a prompt, press ", h("kbd", {}, "⏎")),
        h("li", {}, h("span", {}, "2"), "Click tiles to ♥ or ✕, or press ", h("kbd", {}, "1–8")),
        h("li", {}, h("span", {}, "3"), h("kbd", {}, "⏎"), " for the next round, ", h("kbd", {}, "F"), " to finalize"))),
    recentBlock);

  async function loadRecent() {
    try {
      const page = await api("/v1/sessions?pageSize=6&pageToken=");
      const sessions = (page.sessions || []).filter((s) => s.finalImageId || s.coverImageId);
      replaceChildren(recent, sessions.map((s) => {
        const img = h("img", { alt: s.prompt, draggable: "false" });
        setImage(img, { id: s.finalImageId || s.coverImageId });
        return h("a", { class: "recent-card", href: `/s/${encodeURIComponent(s.sessionId)}`, title: s.prompt },
          img, h("span", { class: "recent-caption" }, s.prompt), h("span", { class: "recent-time" }, timeAgo(s.createdMs)));
      }));
      recentBlock.hidden = sessions.length === 0;
    } catch {
      recentBlock.hidden = true; // the gallery shows the error where it matters
    }
  }

  return { el, show() { el.hidden = false; loadRecent(); }, hide() { el.hidden = true; } };
}
