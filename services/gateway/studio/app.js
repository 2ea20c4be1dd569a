// Entry point: builds the pages once, then shows the one the URL names.

import { getKey, setKey } from "./auth.js";
import { createAdaptersView } from "./adapters_view.js";
import { createComposer } from "./composer.js";
import { h } from "./dom.js";
import { createGalleryView } from "./gallery_view.js";
import { createHome } from "./home.js";
import { navigate, start, takeHandoff } from "./router.js";
import { loadModelInfo } from "./model_info.js";
import { createSessionView } from "./session_view.js";

const view = document.getElementById("view");

const composer = createComposer({
  onStarted: (snapshot) => navigate(`/s/${encodeURIComponent(snapshot.sessionId)}`, snapshot),
});
// One session view (its element ids are unique): in the studio page, or read-only in the viewer page.
const session = createSessionView({
  onParams: (params) => { if (!document.getElementById("prompt").value) composer.prefill(params); },
});
const home = createHome();
const studio = h("section", { class: "page studio", id: "studio" }, composer.el, home.el);
const viewer = h("section", { class: "page viewer", id: "viewer" });
const gallery = createGalleryView();
const adapters = createAdaptersView({ onAdaptersChanged: () => composer.loadOptions() });
const notFound = h("section", { class: "page empty-state", id: "not-found" },
  h("h1", {}, "Nothing here"), h("a", { href: "/", class: "btn primary" }, "Back to the studio"));
const pages = [studio, viewer, gallery.el, adapters.el, notFound];
view.append(...pages);

let following = ""; // "studio:{id}" or "viewer:{id}": what the session view follows
let optionsLoaded = false;

function follow(page, mode, sessionId) {
  const key = `${mode}:${sessionId}`;
  if (following === key) return;
  following = key;
  page.append(session.el);
  session.open(sessionId, takeHandoff(location.pathname), { readOnly: mode === "viewer" });
}

function showPage(page, navName) {
  for (const p of pages) p.hidden = p !== page;
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === navName);
    if (a.dataset.nav === navName) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function render(route) {
  const { name, params } = route;
  const mode = name === "studio" || name === "viewer" ? name : "";
  if (following && (!params.sessionId || !following.startsWith(`${mode}:`))) {
    session.close();
    following = "";
  }
  if (name !== "gallery") gallery.hide();
  if (name !== "adapters") adapters.hide();
  switch (name) {
    case "studio":
      showPage(studio, "studio");
      if (!optionsLoaded) {
        optionsLoaded = true;
        composer.loadOptions();
      }
      composer.setCompact(Boolean(params.sessionId));
      if (params.sessionId) {
        home.hide();
        follow(studio, "studio", params.sessionId);
        document.title = "Session · PHiLIP Studio";
      } else {
        home.show();
        composer.focus();
        document.title = "PHiLIP Studio";
      }
      break;
    case "viewer":
      showPage(viewer, "");
      follow(viewer, "viewer", params.sessionId);
      document.title = "Live view · PHiLIP Studio";
      break;
    case "gallery":
      showPage(gallery.el, "gallery");
      gallery.show();
      document.title = "Gallery · PHiLIP Studio";
      break;
    case "adapters":
      showPage(adapters.el, "adapters");
      adapters.show();
      document.title = "Adapters · PHiLIP Studio";
      break;
    default:
      showPage(notFound, "");
      document.title = "Not found · PHiLIP Studio";
  }
}

// "API key" in the top bar: shown once a key is in use, to forget it.
const keyButton = document.getElementById("key-button");
const syncKeyButton = () => { keyButton.hidden = !getKey(); };
keyButton.addEventListener("click", () => {
  setKey("");
  syncKeyButton();
  location.reload();
});
window.addEventListener("philip:key", syncKeyButton);
syncKeyButton();

loadModelInfo(); // every page's rounds count the model's default steps (the viewer too)
start(render);
