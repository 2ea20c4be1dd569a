// Gallery: past sessions, newest first, with their final image (or the cover of their last round).

import { api, ApiError } from "./api.js";
import { h, showError, timeAgo } from "./dom.js";
import { setImage } from "./images.js";
import { navigate } from "./router.js";

const PAGE_SIZE = 24;
const PHASES = {
  SESSION_PHASE_GENERATING: "generating", SESSION_PHASE_AWAITING_FEEDBACK: "your turn",
  SESSION_PHASE_FINALIZING: "upscaling", SESSION_PHASE_DONE: "final", SESSION_PHASE_CANCELLED: "cancelled",
};

function card(s) {
  const img = h("img", { alt: s.prompt, loading: "lazy", draggable: "false" });
  const imageId = s.finalImageId || s.coverImageId;
  const media = h("div", { class: `card-media${imageId ? "" : " empty"}` }, imageId ? img : h("span", {}, "no image yet"));
  if (imageId) setImage(img, { id: imageId });
  const phase = PHASES[s.phase] || "";
  const rounds = Number(s.rounds || 0);
  const link = h("a", { href: `/s/${encodeURIComponent(s.sessionId)}`, class: "card", dataset: { sessionId: s.sessionId, phase: s.phase } },
    media,
    h("div", { class: "card-body" },
      h("p", { class: "card-prompt" }, s.prompt || "(no prompt)"),
      h("p", { class: "card-meta" },
        h("span", { class: `pill small${s.finalImageId ? " final" : ""}`, dataset: { phase: s.phase } }, phase),
        h("span", { class: "muted" }, `${rounds} round${rounds === 1 ? "" : "s"} · ${timeAgo(s.createdMs)}`))));
  return link;
}

export function createGalleryView() {
  const grid = h("div", { id: "gallery-grid", class: "gallery-grid" });
  const error = h("p", { id: "gallery-error", class: "error", role: "alert", hidden: true });
  const more = h("button", { id: "more", type: "button", class: "btn ghost", hidden: true }, "More");
  const empty = h("div", { class: "empty-state", hidden: true },
    h("p", {}, "No sessions yet."), h("a", { href: "/", class: "btn primary" }, "Start one"));
  const el = h("section", { class: "page gallery", id: "gallery" },
    h("header", { class: "page-head" }, h("h1", {}, "Gallery"), h("p", { class: "muted" }, "Every session of yours, newest first.")),
    error, grid, empty, h("div", { class: "more-row" }, more));
  let token = "";
  let loading = false;
  let generation = 0;

  async function load(reset) {
    if (loading && !reset) return;
    const mine = reset ? ++generation : generation;
    loading = true;
    more.disabled = true;
    showError(error, "");
    if (reset) {
      token = "";
      grid.replaceChildren();
    }
    try {
      const q = new URLSearchParams({ pageSize: String(PAGE_SIZE), pageToken: token });
      const page = await api(`/v1/sessions?${q}`);
      if (mine !== generation) return;
      for (const s of page.sessions || []) grid.append(card(s));
      token = page.nextPageToken || "";
      more.hidden = !token;
      empty.hidden = grid.children.length > 0;
    } catch (err) {
      if (mine === generation) showError(error, err instanceof ApiError ? err.describe() : String(err.message || err));
    } finally {
      if (mine === generation) {
        loading = false;
        more.disabled = false;
      }
    }
  }

  more.addEventListener("click", () => load(false));
  grid.addEventListener("keydown", (event) => {
    const a = event.target instanceof Element && event.target.closest("a.card");
    if (a && event.key === " ") {
      event.preventDefault();
      navigate(new URL(a.href).pathname);
    }
  });
  return { el, show() { el.hidden = false; load(true); }, hide() { el.hidden = true; } };
}
