// The served model (GET /v1/model), asked once per page: its default steps for rounds that leave them unset,
// and a one-line description ("sdxl-turbo · SDXL-Turbo · 4 steps · 512 px"). Pure data, no DOM.

import { api } from "./api.js";

const FALLBACK_STEPS = 8; // SD-1.x's, until the answer arrives (or from a gateway without /v1/model)
let info = null;
let loading = null;

/** The model description (memoized; null when the gateway could not say). */
export function loadModelInfo() {
  loading ??= api("/v1/model").then((answer) => { info = answer; return info; }, () => { loading = null; return null; });
  return loading;
}

/** Steps of a round that leaves them unset: the model's default once known. */
export function defaultSteps() {
  return Number(info?.defaults?.steps) || FALLBACK_STEPS;
}

/** "philip-tiny · SD-1.x/2.x · 8 steps · 64 px" (the folder, then its kind), or "" before the answer. */
export function modelLine(model = info) {
  if (!model) return "";
  const d = model.defaults || {};
  const kind = model.label || model.family;
  const name = model.name && model.name.toLowerCase() !== String(kind).toLowerCase() ? model.name : "";
  return [name, kind, d.steps && `${d.steps} steps`, d.nativeSize && `${d.nativeSize} px`]
    .filter(Boolean).join(" · ");
}
