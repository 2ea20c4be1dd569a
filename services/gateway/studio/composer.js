// The prompt composer: prompt, negative prompt, images, aspect ratio, style, seed, steps, adapters and
// the explore slider. Enter starts a session (Shift+Enter is a newline).

import { api, ApiError, newIdempotencyKey } from "./api.js";
import { loadModelInfo, modelLine } from "./model_info.js";
import { h, replaceChildren, showError } from "./dom.js";

export const ASPECTS = [
  ["ASPECT_RATIO_SQUARE", "1:1", "Square"],
  ["ASPECT_RATIO_LANDSCAPE_4_3", "4:3", "Landscape"],
  ["ASPECT_RATIO_PORTRAIT_3_4", "3:4", "Portrait"],
  ["ASPECT_RATIO_WIDE_16_9", "16:9", "Wide"],
  ["ASPECT_RATIO_TALL_9_16", "9:16", "Tall"],
];
const EXPLORE_DEFAULT = -1; // slider position that sends no weights (server defaults)
const PREVIEW_EVERY = 1; // a preview every step: tiles denoise live
const SUGGESTIONS = ["a red circle on a blue background", "a yellow triangle on a purple background",
  "a white square on a black background", "a green circle on an orange background"];

/** Which input a BadRequest field names ("params.seed", "negative_prompt", "weights.explore"...). */
const FIELD_INPUTS = {
  prompt: "prompt", negativeprompt: "negative-prompt", numimages: "num-images", aspectratio: "aspect-ratio",
  seed: "seed", steps: "steps", style: "style", adapterids: "adapter-picker", explore: "explore", weights: "explore",
};

function fieldInputId(field) {
  const last = String(field || "").split(".").pop().replace(/[_\s]/g, "").replace(/\[\d+\]$/, "").toLowerCase();
  return FIELD_INPUTS[last] || "";
}

function chip(label, control, extra = {}) {
  return h("label", { class: "chip", ...extra }, h("span", { class: "chip-label" }, label), control);
}

export function createComposer({ onStarted }) {
  const prompt = h("textarea", {
    id: "prompt", rows: 2, maxlength: 1000, spellcheck: "false", autocomplete: "off",
    placeholder: "Describe an image…  e.g. a red circle on a blue background", "aria-label": "Prompt",
  });
  const start = h("button", { id: "start", type: "submit", class: "btn primary start-btn" },
    h("span", { class: "btn-text" }, "Generate"), h("kbd", {}, "⏎"));
  const startError = h("p", { id: "start-error", class: "error", role: "alert", hidden: true });
  const numImages = h("select", { id: "num-images", "aria-label": "Number of images" },
    [1, 2, 3, 4, 5, 6, 7, 8].map((n) => h("option", { value: n, selected: n === 4 }, String(n))));
  const aspect = h("select", { id: "aspect-ratio", "aria-label": "Aspect ratio" },
    ASPECTS.map(([value, ratio, name]) => h("option", { value }, `${ratio} ${name}`)));
  const style = h("select", { id: "style", "aria-label": "Style" }, h("option", { value: "" }, "None"));
  const exploreOut = h("output", { id: "explore-value", class: "chip-value" }, "default");
  const explore = h("input", {
    id: "explore", type: "range", min: EXPLORE_DEFAULT, max: 20, step: 1, value: EXPLORE_DEFAULT,
    "aria-label": "Prompt exploration (left end: server default)",
  });
  const adapterCount = h("span", { class: "chip-value" }, "none");
  const adapterList = h("div", { class: "picker-list", id: "adapter-options" });
  const adapterPicker = h("details", { class: "picker", id: "adapter-picker" },
    h("summary", { class: "chip" }, h("span", { class: "chip-label" }, "Adapters"), adapterCount),
    h("div", { class: "picker-pop" }, adapterList,
      h("p", { class: "picker-hint muted small" }, "Name the token in your prompt, e.g. “a sks dog”.")));
  const negative = h("textarea", {
    id: "negative-prompt", rows: 1, maxlength: 1000, placeholder: "What to steer away from", "aria-label": "Negative prompt",
  });
  const seed = h("input", {
    id: "seed", type: "text", inputmode: "numeric", pattern: "[0-9]*", placeholder: "random", autocomplete: "off",
    "aria-label": "Seed",
  });
  const dice = h("button", { type: "button", class: "btn ghost icon", title: "Random seed", "aria-label": "Random seed" }, "⚄");
  const steps = h("input", { id: "steps", type: "number", min: 0, max: 100, placeholder: "8", "aria-label": "Steps" });
  const modelNote = h("p", { id: "model-line", class: "model-line muted small", hidden: true });
  const advanced = h("details", { class: "advanced", id: "advanced" },
    h("summary", { class: "chip" }, h("span", { class: "chip-label" }, "Advanced")),
    h("div", { class: "advanced-body" },
      h("label", { class: "field wide" }, h("span", {}, "Negative prompt"), negative),
      h("label", { class: "field" }, h("span", {}, "Seed"), h("span", { class: "with-btn" }, seed, dice)),
      h("label", { class: "field" }, h("span", {}, "Steps"), steps)));
  const suggestions = h("div", { class: "suggestions" }, SUGGESTIONS.map((text) =>
    h("button", { type: "button", class: "suggestion", onclick: () => { prompt.value = text; prompt.focus(); } }, text)));

  const form = h("form", { id: "start-form", class: "composer-form", novalidate: true },
    h("div", { class: "prompt-box" }, prompt, start),
    startError,
    h("div", { class: "controls" },
      chip("Images", numImages), chip("Aspect", aspect), chip("Style", style),
      chip("Explore", h("span", { class: "range-wrap" }, explore, exploreOut), { title: "Share of images drawn from captions the refiner explores; far left = server default" }),
      adapterPicker, advanced),
    modelNote,
    suggestions);
  const el = h("section", { class: "composer", id: "composer" }, form);

  let busy = false;
  let selectedAdapters = new Set();

  const updateExplore = () => {
    const v = Number(explore.value);
    exploreOut.textContent = v <= EXPLORE_DEFAULT ? "default" : (v / 20).toFixed(2);
    explore.classList.toggle("is-default", v <= EXPLORE_DEFAULT);
  };
  explore.addEventListener("input", updateExplore);
  dice.addEventListener("click", () => { seed.value = String(Math.floor(Math.random() * 2 ** 31)); });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      event.stopPropagation();
      form.requestSubmit();
    }
  });
  for (const input of [prompt, negative, seed, steps]) input.addEventListener("input", () => clearInvalid());
  document.addEventListener("click", (event) => {
    if (adapterPicker.open && !adapterPicker.contains(event.target)) adapterPicker.open = false;
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });

  function clearInvalid() {
    for (const x of form.querySelectorAll(".invalid")) x.classList.remove("invalid");
  }

  function body() {
    const params = {
      prompt: prompt.value.trim(),
      negativePrompt: negative.value.trim(),
      numImages: Number(numImages.value),
      aspectRatio: aspect.value,
      steps: Number(steps.value || 0),
      style: style.value,
      adapterIds: [...selectedAdapters],
      previewEvery: PREVIEW_EVERY,
    };
    if (seed.value.trim() !== "") params.seed = seed.value.trim();
    const out = { params };
    const v = Number(explore.value);
    if (v > EXPLORE_DEFAULT) out.weights = { explore: v / 20 };
    return out;
  }

  async function submit() {
    if (busy) return;
    busy = true;
    start.disabled = true;
    el.classList.add("busy");
    showError(startError, "");
    clearInvalid();
    try {
      const snapshot = await api("/v1/sessions", { method: "POST", json: body(), idempotencyKey: newIdempotencyKey() });
      prompt.blur(); // keys now drive the session (1-8, Enter, F); the prompt box takes them again on a click
      onStarted(snapshot);
    } catch (err) {
      const message = err instanceof ApiError ? err.describe() : String(err.message || err);
      showError(startError, message);
      const id = err instanceof ApiError ? fieldInputId(err.field) : "";
      const target = id && document.getElementById(id);
      if (target) {
        target.classList.add("invalid");
        if (advanced.contains(target)) advanced.open = true;
        if (target.focus) target.focus();
      } else {
        prompt.focus();
      }
    } finally {
      busy = false;
      start.disabled = false;
      el.classList.remove("busy");
    }
  }

  function renderAdapters(adapters) {
    selectedAdapters = new Set([...selectedAdapters].filter((id) => adapters.some((a) => a.adapterId === id)));
    if (!adapters.length) {
      replaceChildren(adapterList, h("p", { class: "muted small" }, "No adapters yet. ",
        h("a", { href: "/adapters" }, "Train one"), "."));
    } else {
      replaceChildren(adapterList, adapters.map((a) => {
        const box = h("input", { type: "checkbox", value: a.adapterId, checked: selectedAdapters.has(a.adapterId) });
        box.addEventListener("change", () => {
          if (box.checked) selectedAdapters.add(a.adapterId);
          else selectedAdapters.delete(a.adapterId);
          updateAdapterCount();
        });
        return h("label", { class: "picker-item" }, box, h("span", { class: "token" }, a.token),
          h("span", { class: "muted" }, a.classWord));
      }));
    }
    updateAdapterCount();
  }

  function updateAdapterCount() {
    adapterCount.textContent = selectedAdapters.size ? String(selectedAdapters.size) : "none";
  }

  async function loadOptions() {
    const [styles, adapters, model] = await Promise.allSettled([api("/v1/styles"), api("/v1/adapters"), loadModelInfo()]);
    if (model.status === "fulfilled" && model.value) showModel(model.value);
    if (styles.status === "fulfilled") {
      const current = style.value;
      replaceChildren(style, h("option", { value: "" }, "None"),
        (styles.value.styles || []).map((s) => h("option", { value: s.name, title: s.suffix, selected: s.name === current }, s.name)));
    }
    if (adapters.status === "fulfilled") renderAdapters(adapters.value.adapters || []);
    else replaceChildren(adapterList, h("p", { class: "error small" }, adapters.reason?.message || "cannot list adapters"));
  }

  /** The served model's line, and its steps as the form's default and range. */
  function showModel(info) {
    modelNote.textContent = modelLine(info);
    modelNote.hidden = !modelNote.textContent;
    const d = info.defaults || {};
    if (d.steps) steps.placeholder = String(d.steps);
    if (d.maxSteps) steps.max = String(d.maxSteps);
  }

  /** Fills the form from a session's parameters (so a new session can start from it). */
  function prefill(params) {
    if (!params) return;
    prompt.value = params.prompt || "";
    negative.value = params.negativePrompt || "";
    if (params.numImages) numImages.value = String(params.numImages);
    if (params.aspectRatio && params.aspectRatio !== "ASPECT_RATIO_UNSPECIFIED") aspect.value = params.aspectRatio;
    steps.value = params.steps ? String(params.steps) : "";
    if (params.style) style.value = params.style;
  }

  updateExplore();
  return {
    el,
    loadOptions,
    prefill,
    setCompact(compact) {
      el.classList.toggle("compact", compact);
      prompt.rows = compact ? 1 : 2;
      if (compact) {
        advanced.open = false;
        adapterPicker.open = false;
      }
    },
    focus() { prompt.focus(); },
  };
}
