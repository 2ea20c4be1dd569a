// A session as the page knows it: built from a SessionSnapshot, moved forward by SessionEvents.
// Pure data, no DOM. Events can arrive twice around a snapshot (and replays repeat old rounds), so
// every step is idempotent: round images are deduped by round number, stale rounds are ignored.

import { defaultSteps } from "./model_info.js";
import { normalize } from "./slot_constraints.js";

export const Phase = Object.freeze({
  GENERATING: "SESSION_PHASE_GENERATING",
  AWAITING: "SESSION_PHASE_AWAITING_FEEDBACK",
  FINALIZING: "SESSION_PHASE_FINALIZING",
  DONE: "SESSION_PHASE_DONE",
  CANCELLED: "SESSION_PHASE_CANCELLED",
});

const DEFAULT_IMAGES = 4;

export class SessionState {
  constructor(snapshot) {
    this.id = snapshot.sessionId;
    this.rounds = []; // RoundImages, oldest first, one per round number
    this.running = null; // {round, prompt, numImages, step, totalSteps, previews: [b64], previewStep}
    this.upscale = null; // {done, total} while finalizing
    this.final = null; // SessionFinal
    this.finalizing = false;
    this.cancelled = false;
    this.lastError = null; // {code, message} of the last failed round or upscale
    this.lastEventId = snapshot.lastEventId || "";
    this.constraints = normalize(null); // the session's pins and bans for prompt exploration
    this.weights = null; // the effective FeedbackWeights
    this.merge(snapshot);
  }

  /** Folds a snapshot in (the first one, or the answer of feedback/finalize/cancel). Only moves forward. */
  merge(snap) {
    if (snap.params) this.params = snap.params;
    for (const r of snap.rounds || []) this.addRound(r);
    this.liked = new Set(snap.likedImageIds || []);
    this.disliked = new Set(snap.dislikedImageIds || []);
    this.chosenImageId = snap.chosenImageId || this.chosenImageId || "";
    this.constraints = normalize(snap.constraints);
    if (snap.weights) this.weights = snap.weights;
    if (snap.final && snap.final.image) this.final = snap.final;
    switch (snap.phase) {
      case Phase.GENERATING: {
        const n = Number(snap.runningRound || 0);
        if (n > this.lastRound() && (!this.running || this.running.round < n)) {
          this.startRound({
            round: n,
            prompt: snap.params?.prompt || "",
            numImages: snap.params?.numImages || DEFAULT_IMAGES,
          });
        }
        break;
      }
      case Phase.FINALIZING:
        if (!this.final) this.finalizing = true;
        this.running = null;
        break;
      case Phase.CANCELLED:
        this.cancelled = true;
        this.running = null;
        this.finalizing = false;
        break;
      case Phase.DONE:
        this.finalizing = false;
        this.running = null;
        break;
      default:
        break;
    }
  }

  get phase() {
    if (this.cancelled) return Phase.CANCELLED;
    if (this.final) return Phase.DONE;
    if (this.finalizing) return Phase.FINALIZING;
    if (this.running) return Phase.GENERATING;
    return Phase.AWAITING;
  }

  get terminal() {
    return this.phase === Phase.DONE || this.phase === Phase.CANCELLED;
  }

  get prompt() {
    return this.params?.prompt || "";
  }

  lastRound() {
    return this.rounds.length ? this.rounds[this.rounds.length - 1].round : 0;
  }

  latestRound() {
    return this.rounds[this.rounds.length - 1] || null;
  }

  /** What prompt exploration had learned for the latest finished round (SlotBelief JSON; empty: it did not explore). */
  latestLearned() {
    return this.latestRound()?.learned || [];
  }

  addRound(r) {
    const n = Number(r.round);
    if (this.rounds.some((x) => x.round === n)) return false;
    this.rounds.push({ ...r, round: n });
    this.rounds.sort((a, b) => a.round - b.round);
    if (this.running && this.running.round <= n) this.running = null;
    return true;
  }

  startRound({ round, prompt, numImages }) {
    this.running = {
      round,
      prompt,
      numImages: numImages || DEFAULT_IMAGES,
      step: 0,
      totalSteps: this.params?.steps || defaultSteps(), // the served model's (GET /v1/model)
      previews: [],
      previewStep: 0,
    };
    this.lastError = null;
  }

  findRound(n) {
    return this.rounds.find((r) => r.round === n) || null;
  }

  /** Every image of the session by id: {roundImage, round}. */
  findImage(imageId) {
    for (const r of this.rounds) {
      for (const ri of r.images || []) if (ri.image?.id === imageId) return { roundImage: ri, round: r.round };
    }
    return null;
  }

  /**
   * Applies one SSE event; returns what changed ("round" | "progress" | "preview" | "upscale" |
   * "final" | "error" | "cancelled") or "" when it changed nothing (stale or duplicate).
   */
  apply(name, ev, id) {
    if (id) this.lastEventId = id;
    const round = Number(ev.round || 0);
    switch (name) {
      case "round_started": {
        const rs = ev.roundStarted || {};
        const n = Number(rs.round || round);
        if (n <= this.lastRound() || (this.running && this.running.round > n)) return "";
        if (this.running && this.running.round === n) {
          Object.assign(this.running, { prompt: rs.prompt, numImages: rs.numImages || this.running.numImages });
        } else {
          this.startRound({ round: n, prompt: rs.prompt, numImages: rs.numImages });
        }
        if (rs.prompt && this.params) this.params = { ...this.params, prompt: rs.prompt };
        return "round";
      }
      case "progress": {
        if (!this.running || (round && round !== this.running.round)) return "";
        const p = ev.progress || {};
        this.running.step = Number(p.step || 0);
        this.running.totalSteps = Number(p.totalSteps || this.running.totalSteps);
        return "progress";
      }
      case "preview": {
        if (!this.running || (round && round !== this.running.round)) return "";
        const pv = ev.preview || {};
        for (const [i, img] of (pv.images || []).entries()) {
          this.running.previews[img.index ?? i] = img.png;
        }
        this.running.previewStep = Number(pv.step || 0);
        if (this.running.previewStep > this.running.step) this.running.step = this.running.previewStep;
        return "preview";
      }
      case "round_images": {
        const r = ev.roundImages;
        if (!r) return "";
        return this.addRound(r) ? "round" : "";
      }
      case "upscale_progress": {
        if (this.final || this.cancelled) return "";
        this.finalizing = true;
        this.running = null;
        const u = ev.upscaleProgress || {};
        this.upscale = { done: Number(u.done || 0), total: Number(u.total || 0) };
        return "upscale";
      }
      case "final": {
        if (this.final) return "";
        this.final = ev.final;
        this.chosenImageId = ev.final?.sourceImageId || this.chosenImageId;
        this.finalizing = false;
        this.upscale = null;
        return "final";
      }
      case "error": {
        // A replayed error of a round that has since been retried and finished, or of an older round.
        if (round && (this.findRound(round) || (this.running && round < this.running.round))) return "";
        this.lastError = ev.error || { code: "UNKNOWN", message: "the round failed" };
        this.running = null;
        this.finalizing = false;
        this.upscale = null;
        return "error";
      }
      case "cancelled": {
        if (this.cancelled) return "";
        this.cancelled = true;
        this.running = null;
        this.finalizing = false;
        return "cancelled";
      }
      default:
        return "";
    }
  }
}
