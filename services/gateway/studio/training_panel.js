// A training job being watched: state, progress bar, loss with a sparkline, sample previews.

import { api, ApiError, followEvents } from "./api.js";
import { h, replaceChildren, showError } from "./dom.js";
import { pngDataUrl } from "./images.js";

const SVG = "http://www.w3.org/2000/svg";
const TERMINAL = new Set(["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"]);
const STATE_LABELS = {
  JOB_STATE_QUEUED: "queued", JOB_STATE_RUNNING: "training", JOB_STATE_SUCCEEDED: "done",
  JOB_STATE_FAILED: "failed", JOB_STATE_CANCELLED: "cancelled",
};
const WATCH_KEY = "philip.trainingJob";

function sparkline(values, width = 220, height = 44) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "sparkline");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.id = "loss-sparkline";
  if (values.length < 2) return svg;
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const pts = values.map((v, i) => `${((i / (values.length - 1)) * width).toFixed(1)},${(height - 3 - ((v - lo) / span) * (height - 6)).toFixed(1)}`);
  const area = document.createElementNS(SVG, "polygon");
  area.setAttribute("points", `0,${height} ${pts.join(" ")} ${width},${height}`);
  area.setAttribute("class", "spark-area");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", pts.join(" "));
  line.setAttribute("class", "spark-line");
  svg.append(area, line);
  return svg;
}

export function createTrainingPanel({ onAdapter }) {
  const title = h("h3", { class: "section-title" }, "Training");
  const pill = h("span", { class: "pill", id: "training-state" });
  const bar = h("i");
  const progress = h("div", { id: "training-progress", class: "progress", role: "progressbar", "aria-valuemin": "0",
    "aria-valuemax": "1", "aria-valuenow": "0" }, bar);
  const steps = h("span", { class: "muted", id: "training-steps" });
  const loss = h("span", { class: "loss", id: "training-loss" });
  const spark = h("div", { class: "spark-wrap" });
  const previews = h("div", { class: "strip", id: "training-previews" });
  const error = h("p", { class: "error", id: "training-error", role: "alert", hidden: true });
  const cancel = h("button", { type: "button", class: "btn ghost danger", id: "training-cancel" }, "Stop");
  const el = h("section", { class: "panel training", id: "training", hidden: true },
    h("div", { class: "panel-head" }, h("div", {}, title, pill), cancel),
    progress, h("div", { class: "training-meta" }, steps, loss), spark, previews, error);
  let job = null;
  let losses = [];
  let ctrl = null;

  function render() {
    if (!job) return;
    title.textContent = `Training “${job.token}”`;
    pill.textContent = STATE_LABELS[job.state] || job.state;
    pill.dataset.state = job.state;
    const total = Number(job.totalSteps || 0);
    const step = Number(job.step || 0);
    const frac = total ? step / total : 0;
    bar.style.width = `${Math.round(frac * 100)}%`;
    progress.setAttribute("aria-valuenow", frac.toFixed(3));
    progress.classList.toggle("indeterminate", job.state === "JOB_STATE_QUEUED");
    steps.textContent = total ? `step ${step} of ${total}` : "waiting for a worker…";
    if (losses.length) loss.textContent = `loss ${losses[losses.length - 1].toFixed(4)}`;
    replaceChildren(spark, sparkline(losses.slice(-200)));
    cancel.hidden = TERMINAL.has(job.state);
    showError(error, job.state === "JOB_STATE_FAILED" || job.state === "JOB_STATE_CANCELLED" ? job.error || pill.textContent : "");
  }

  function onEvent(name, ev) {
    if (name === "job" && ev.job) {
      job = { ...job, ...ev.job };
    } else if (name === "progress" && ev.progress) {
      job.step = ev.progress.step;
      job.totalSteps = ev.progress.totalSteps;
      job.state = TERMINAL.has(job.state) ? job.state : "JOB_STATE_RUNNING";
      if (Number.isFinite(ev.progress.loss)) losses.push(ev.progress.loss);
    } else if (name === "preview" && ev.preview?.image?.png) {
      previews.append(h("figure", { class: "sample" },
        h("img", { src: pngDataUrl(ev.preview.image.png), alt: `sample at step ${ev.preview.step}` }),
        h("figcaption", {}, `step ${ev.preview.step}`)));
    } else if (name === "adapter" && ev.adapter) {
      onAdapter(ev.adapter);
    }
    render();
    if (TERMINAL.has(job.state)) sessionStorage.removeItem(WATCH_KEY);
  }

  async function watch(first) {
    ctrl?.abort();
    const mine = new AbortController();
    ctrl = mine;
    job = first;
    losses = [];
    replaceChildren(previews);
    el.hidden = false;
    render();
    sessionStorage.setItem(WATCH_KEY, first.jobId);
    try {
      await followEvents(`/v1/training-jobs/${encodeURIComponent(first.jobId)}/events`, {
        signal: mine.signal,
        isFinished: () => TERMINAL.has(job.state),
        onEvent,
      });
    } catch (err) {
      if (!mine.signal.aborted) showError(error, err instanceof ApiError ? err.describe() : String(err.message || err));
    }
  }

  cancel.addEventListener("click", async () => {
    if (!job) return;
    try {
      job = { ...job, ...(await api(`/v1/training-jobs/${encodeURIComponent(job.jobId)}/cancel`, { method: "POST", json: {} })) };
      render();
    } catch (err) {
      showError(error, err instanceof ApiError ? err.describe() : String(err.message || err));
    }
  });

  /** Resumes watching the job this tab started, after a reload. */
  async function resume() {
    const id = sessionStorage.getItem(WATCH_KEY);
    if (!id || (job && job.jobId === id)) return;
    try {
      const j = await api(`/v1/training-jobs/${encodeURIComponent(id)}`);
      watch(j);
    } catch {
      sessionStorage.removeItem(WATCH_KEY);
    }
  }

  return { el, watch, resume, stop() { ctrl?.abort(); ctrl = null; } };
}
