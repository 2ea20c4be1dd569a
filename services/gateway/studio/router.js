// Client-side routes over history.pushState. The server answers every studio path with index.html.
//   /            studio (composer, no session)
//   /s/{id}      studio following session {id}
//   /v/{id}      read-only live viewer of session {id}
//   /gallery     past sessions
//   /adapters    personalization adapters

const ROUTES = [
  { name: "studio", pattern: /^\/$/ },
  { name: "studio", pattern: /^\/s\/([^/]+)\/?$/, param: "sessionId" },
  { name: "viewer", pattern: /^\/v\/([^/]+)\/?$/, param: "sessionId" },
  { name: "gallery", pattern: /^\/gallery\/?$/ },
  { name: "adapters", pattern: /^\/adapters\/?$/ },
];

export function match(pathname) {
  for (const route of ROUTES) {
    const m = route.pattern.exec(pathname);
    if (m) {
      const params = {};
      if (route.param) params[route.param] = decodeURIComponent(m[1]);
      return { name: route.name, params };
    }
  }
  return { name: "notfound", params: {} };
}

let onChange = () => {};
const handoff = new Map(); // path -> data passed along by navigate() (e.g. a fresh snapshot)

/** Goes to `path` without a page load; `data` is there for the next view to take (once). */
export function navigate(path, data = undefined, { replace = false } = {}) {
  if (data !== undefined) handoff.set(path, data);
  if (replace) history.replaceState(null, "", path);
  else if (location.pathname !== path) history.pushState(null, "", path);
  onChange(match(location.pathname));
}

/** What navigate() passed along for `path`, taken once. */
export function takeHandoff(path) {
  const data = handoff.get(path);
  handoff.delete(path);
  return data;
}

/** Starts routing: calls `render(route)` now and on every navigation (links, back/forward). */
export function start(render) {
  onChange = render;
  window.addEventListener("popstate", () => render(match(location.pathname)));
  document.addEventListener("click", (event) => {
    const a = event.target instanceof Element ? event.target.closest("a[href]") : null;
    if (!a || a.hasAttribute("download") || a.target || event.defaultPrevented) return;
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || url.pathname.startsWith("/v1/") || url.pathname.startsWith("/static/")) return;
    event.preventDefault();
    navigate(url.pathname);
  });
  render(match(location.pathname));
}
