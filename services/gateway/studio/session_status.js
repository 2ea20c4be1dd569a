// The session's live status line and phase labels, from its state (pure).

import { Phase } from "./session_state.js";

export const PHASE_LABELS = {
  [Phase.GENERATING]: "Generating", [Phase.AWAITING]: "Your turn", [Phase.FINALIZING]: "Upscaling",
  [Phase.DONE]: "Done", [Phase.CANCELLED]: "Cancelled",
};

/** One line: where the session is, what to do next, and whether the event stream is reconnecting. */
export function statusText(s, { readOnly = false, likes = 0, dislikes = 0, connection = "" } = {}) {
  let text;
  switch (s.phase) {
    case Phase.GENERATING:
      text = s.running.step ? `Round ${s.running.round} · step ${s.running.step} of ${s.running.totalSteps}`
        : `Round ${s.running.round} · starting…`;
      break;
    case Phase.AWAITING:
      if (s.lastError) text = `Round failed: ${s.lastError.message}`;
      else if (readOnly) text = `Round ${s.lastRound()} ready · waiting for the next choice`;
      else if (likes || dislikes) text = `Round ${s.lastRound()} · ${likes} ♥ ${dislikes} ✕ to send · Next round or Finalize`;
      else text = `Round ${s.lastRound()} ready · like ♥ what you want, dislike ✕ what you don't`;
      break;
    case Phase.FINALIZING:
      text = s.upscale?.total ? `Upscaling · ${s.upscale.done} of ${s.upscale.total} tiles` : "Upscaling…";
      break;
    case Phase.DONE:
      text = `Done · ${s.final.image.width} × ${s.final.image.height} px final image`;
      break;
    default:
      text = "Session cancelled";
  }
  if (connection === "reconnecting") return "Connection lost · reconnecting…";
  if (connection === "reconnected") return `Reconnected · ${text}`;
  return text;
}
