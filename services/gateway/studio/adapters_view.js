// Adapters: teach the model a subject from 4-7 photos (LoRA or textual inversion), watch the training,
// list and delete adapters.

import { api, ApiError, newIdempotencyKey } from "./api.js";
import { h, replaceChildren, showError, timeAgo, toast } from "./dom.js";
import { createTrainingPanel } from "./training_panel.js";

const METHODS = { ADAPTER_METHOD_LORA: "LoRA", ADAPTER_METHOD_TEXTUAL_INVERSION: "Textual inversion" };
const describe = (err) => (err instanceof ApiError ? err.describe() : String(err?.message || err));

export function createAdaptersView({ onAdaptersChanged = () => {} } = {}) {
  let photos = []; // {file, url}
  const fileInput = h("input", { id: "photos", type: "file", accept: "image/png,image/jpeg", multiple: true, class: "visually-hidden" });
  const thumbs = h("div", { class: "photo-thumbs", id: "photo-thumbs" });
  const count = h("span", { class: "muted", id: "photo-count" }, "0 photos · 4–7 needed");
  const dropzone = h("label", { class: "dropzone", id: "dropzone", for: "photos" },
    fileInput, h("span", { class: "drop-icon", "aria-hidden": "true" }, "⇪"),
    h("strong", {}, "Drop 4–7 photos here"), h("span", { class: "muted" }, "or click to choose · PNG or JPEG"));
  const token = h("input", { id: "token", name: "token", placeholder: "sks", autocomplete: "off", maxlength: 32, spellcheck: "false" });
  const classWord = h("input", { id: "class-word", name: "class_word", placeholder: "dog", autocomplete: "off", maxlength: 32 });
  const method = h("select", { id: "method", name: "method" },
    h("option", { value: "LORA" }, "LoRA"), h("option", { value: "TEXTUAL_INVERSION" }, "Textual inversion"));
  const steps = h("input", { id: "train-steps", name: "steps", type: "number", min: 0, max: 5000, placeholder: "500" });
  const train = h("button", { id: "train", type: "submit", class: "btn primary" }, "Train adapter");
  const error = h("p", { id: "adapter-error", class: "error", role: "alert", hidden: true });
  const form = h("form", { id: "adapter-form", class: "panel adapter-form", novalidate: true },
    h("h3", { class: "section-title" }, "New adapter"),
    dropzone, h("div", { class: "photos-row" }, thumbs, count),
    h("div", { class: "form-grid" },
      h("label", { class: "field" }, h("span", {}, "Token"), token, h("small", { class: "muted" }, "2–32 lowercase letters, new to the model")),
      h("label", { class: "field" }, h("span", {}, "Class word"), classWord, h("small", { class: "muted" }, "what the subject is")),
      h("label", { class: "field" }, h("span", {}, "Method"), method),
      h("label", { class: "field" }, h("span", {}, "Steps"), steps, h("small", { class: "muted" }, "0 or empty: the default"))),
    error, h("div", { class: "form-actions" }, train));
  const list = h("div", { id: "adapter-list", class: "adapter-list" });
  const listError = h("p", { class: "error", id: "adapter-list-error", role: "alert", hidden: true });
  const training = createTrainingPanel({ onAdapter: (a) => { toast(`Adapter “${a.token}” is ready`); loadList(); } });
  const el = h("section", { class: "page adapters", id: "adapters" },
    h("header", { class: "page-head" }, h("h1", {}, "Adapters"),
      h("p", { class: "muted" }, "Teach the model a subject from a few photos, then pick it in the studio.")),
    h("div", { class: "adapters-layout" }, form,
      h("div", { class: "adapters-side" }, training.el,
        h("section", { class: "panel" }, h("h3", { class: "section-title" }, "Your adapters"), listError, list))));

  function addFiles(files) {
    for (const file of files) {
      if (!/^image\//.test(file.type)) continue;
      photos.push({ file, url: URL.createObjectURL(file) });
    }
    renderPhotos();
  }

  function renderPhotos() {
    replaceChildren(thumbs, photos.map((p, i) => h("figure", { class: "photo" },
      h("img", { src: p.url, alt: p.file.name }),
      h("button", { type: "button", class: "photo-remove", title: "Remove", "aria-label": `Remove ${p.file.name}`,
        onclick: () => { URL.revokeObjectURL(p.url); photos.splice(i, 1); renderPhotos(); } }, "×"))));
    const n = photos.length;
    count.textContent = `${n} photo${n === 1 ? "" : "s"} · 4–7 needed`;
    count.classList.toggle("ok", n >= 4 && n <= 7);
    dropzone.classList.toggle("has-files", n > 0);
  }

  fileInput.addEventListener("change", () => { addFiles(fileInput.files); fileInput.value = ""; });
  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (e) => { e.preventDefault(); dropzone.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    dropzone.addEventListener(name, () => dropzone.classList.remove("dragging"));
  }
  dropzone.addEventListener("drop", (e) => { e.preventDefault(); addFiles(e.dataTransfer?.files || []); });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    showError(error, "");
    const data = new FormData();
    for (const p of photos) data.append("photos", p.file, p.file.name);
    data.append("token", token.value.trim());
    data.append("class_word", classWord.value.trim());
    data.append("method", method.value);
    data.append("steps", String(Number(steps.value || 0)));
    train.disabled = true;
    try {
      const job = await api("/v1/adapters", { method: "POST", form: data, idempotencyKey: newIdempotencyKey() });
      for (const p of photos) URL.revokeObjectURL(p.url);
      photos = [];
      renderPhotos();
      training.watch(job);
      training.el.scrollIntoView({ behavior: "smooth", block: "nearest" });
    } catch (err) {
      showError(error, describe(err));
    } finally {
      train.disabled = false;
    }
  });

  function adapterRow(a) {
    const del = h("button", { type: "button", class: "btn ghost danger small", dataset: { adapterId: a.adapterId } }, "Delete");
    del.addEventListener("click", async () => {
      if (del.dataset.confirm !== "1") {
        del.dataset.confirm = "1";
        del.textContent = "Delete?";
        setTimeout(() => { del.dataset.confirm = ""; del.textContent = "Delete"; }, 3000);
        return;
      }
      del.disabled = true;
      try {
        await api(`/v1/adapters/${encodeURIComponent(a.adapterId)}`, { method: "DELETE" });
        toast(`Deleted “${a.token}”`);
        loadList();
      } catch (err) {
        del.disabled = false;
        showError(listError, describe(err));
      }
    });
    return h("div", { class: "adapter-row", dataset: { adapterId: a.adapterId } },
      h("div", {}, h("span", { class: "token" }, a.token), " ", h("span", { class: "muted" }, a.classWord)),
      h("div", { class: "muted small" }, `${METHODS[a.method] || a.method} · ${a.steps} steps · ${timeAgo(a.createdMs)}`),
      del);
  }

  async function loadList() {
    showError(listError, "");
    try {
      const res = await api("/v1/adapters");
      const adapters = res.adapters || [];
      replaceChildren(list, adapters.length ? adapters.map(adapterRow)
        : h("p", { class: "muted" }, "None yet. Train one with the form."));
      onAdaptersChanged(adapters);
    } catch (err) {
      showError(listError, describe(err));
    }
  }

  return {
    el,
    show() { el.hidden = false; loadList(); training.resume(); },
    hide() { el.hidden = true; },
  };
}
