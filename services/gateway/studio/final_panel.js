// The finalize panel: upscale progress, then the full-size image at its natural size with a download.

import { h } from "./dom.js";
import { imageObjectUrl, pngBlob, setImage } from "./images.js";

export function createFinalPanel() {
  const bar = h("i");
  const progress = h("div", {
    id: "upscale-progress", class: "progress indeterminate", role: "progressbar",
    "aria-label": "Upscaling", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": "0",
  }, bar);
  const label = h("p", { class: "final-label" }, "Upscaling…");
  const source = h("img", { class: "final-source", alt: "chosen image" });
  const image = h("img", { id: "final-image", alt: "final image" });
  const download = h("a", { id: "download", class: "btn primary", download: "philip.png", href: "#", hidden: true },
    "Download PNG");
  const size = h("span", { class: "muted" });
  const figure = h("figure", { class: "final-figure", hidden: true }, h("div", { class: "final-frame" }, image),
    h("figcaption", {}, size, download));
  const el = h("section", { id: "final-panel", class: "final-panel", hidden: true },
    h("div", { class: "final-head" }, source, h("div", { class: "final-progress" }, label, progress)), figure);
  let shownFinal = "";
  let objectUrl = "";

  function render(state) {
    const visible = state.finalizing || Boolean(state.final);
    el.hidden = !visible;
    if (!visible) return;
    const chosen = state.final?.sourceImageId || state.chosenImageId;
    const found = chosen ? state.findImage(chosen) : null;
    if (found && source.dataset.id !== chosen) {
      source.dataset.id = chosen;
      setImage(source, { png: found.roundImage.image?.png, id: chosen });
    }
    if (state.final) {
      label.textContent = "Final image";
      progress.classList.remove("indeterminate");
      progress.setAttribute("aria-valuenow", "1");
      bar.style.width = "100%";
      el.classList.add("done");
      showFinal(state);
    } else {
      const up = state.upscale;
      const frac = up && up.total ? up.done / up.total : 0;
      progress.classList.toggle("indeterminate", !up || !up.total);
      progress.setAttribute("aria-valuenow", frac.toFixed(3));
      bar.style.width = `${Math.round(frac * 100)}%`;
      label.textContent = up && up.total ? `Upscaling · ${up.done}/${up.total} tiles` : "Upscaling…";
    }
  }

  function showFinal(state) {
    const img = state.final.image || {};
    const key = img.id || "inline";
    if (shownFinal === key) return;
    shownFinal = key;
    figure.hidden = false;
    if (img.width && img.height) {
      image.width = img.width;
      image.height = img.height;
      const from = state.findImage(state.final.sourceImageId);
      const src = from?.roundImage.image;
      const factor = src?.width ? ` · ${Math.round(img.width / src.width)}× from round ${from.round}, image ${src.index + 1}` : "";
      size.textContent = `${img.width} × ${img.height} px${factor}`;
    }
    setImage(image, { png: img.png, id: img.id });
    download.download = `philip-${state.id}.png`;
    const url = img.png ? Promise.resolve(URL.createObjectURL(pngBlob(img.png))) : imageObjectUrl(img.id);
    url.then((href) => {
      if (objectUrl && objectUrl !== href) URL.revokeObjectURL(objectUrl);
      objectUrl = img.png ? href : "";
      download.href = href;
      download.hidden = false;
    });
  }

  function reset() {
    shownFinal = "";
    figure.hidden = true;
    download.hidden = true;
    image.removeAttribute("src");
    source.removeAttribute("src");
    delete source.dataset.id;
    el.classList.remove("done");
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = "";
  }

  return { el, render, reset };
}
