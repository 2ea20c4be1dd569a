// Image sources. <img src> cannot send Authorization, so stored images are fetched with the key and
// shown through object URLs; PNGs that came inside JSON (previews, round images) become data: URLs.

import { api } from "./api.js";

const cache = new Map(); // image id -> Promise<object URL> (images are immutable)

/** data: URL of a base64 PNG from a JSON answer. */
export function pngDataUrl(base64) {
  return `data:image/png;base64,${base64}`;
}

/** A Blob of a base64 PNG. */
export function pngBlob(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

/** Object URL of /v1/images/{id}.png, fetched with the API key (cached per id). */
export function imageObjectUrl(imageId) {
  if (!cache.has(imageId)) {
    const url = api(`/v1/images/${encodeURIComponent(imageId)}.png`, { raw: true, headers: { Accept: "image/png" } })
      .then((res) => res.blob())
      .then((blob) => URL.createObjectURL(blob));
    url.catch(() => cache.delete(imageId));
    cache.set(imageId, url);
  }
  return cache.get(imageId);
}

/** Shows an image in `img`: from inline base64 when we have it, else the stored image by id. */
export function setImage(img, { png = "", id = "" } = {}) {
  if (png) {
    const src = pngDataUrl(png);
    if (img.getAttribute("src") !== src) img.src = src;
    return Promise.resolve();
  }
  if (!id) return Promise.resolve();
  img.dataset.loading = id;
  return imageObjectUrl(id).then(
    (url) => {
      if (img.dataset.loading === id) img.src = url;
    },
    () => img.classList.add("broken"),
  );
}
