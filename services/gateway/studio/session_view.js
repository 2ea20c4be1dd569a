// The session screen: the running round's tiles filling in live, likes and dislikes, the next round,
// finalize, cancel, share, history of earlier rounds. `readOnly` makes it the /v/{id} live viewer.

import { api, ApiError, followEvents } from "./api.js";
import { h, replaceChildren, showError, toast } from "./dom.js";
import { createFinalPanel } from "./final_panel.js";
import { createHistory } from "./history_strip.js";
import { createLearnedChips } from "./learned_chips.js";
import { bindSessionKeys } from "./session_keys.js";
import { Phase, SessionState } from "./session_state.js";
import { PHASE_LABELS, statusText } from "./session_status.js";
import { sameConstraints, toggleBan, togglePin } from "./slot_constraints.js";
import { aspectOf, nextState, Tile } from "./tile.js";

const describe = (err) => (err instanceof ApiError ? err.describe() : String(err?.message || err));

function columnsFor(n) {
  return n <= 4 ? Math.max(1, n) : n <= 6 ? 3 : 4;
}

export function createSessionView({ onParams = () => {} } = {}) {
  let readOnly = false;
  const title = h("h2", { id: "session-title", class: "session-title" });
  const phasePill = h("span", { id: "phase", class: "pill" });
  const roundLabel = h("span", { id: "round-label", class: "muted" });
  const share = h("button", { id: "share", type: "button", class: "btn ghost", title: "Copy a read-only live link" }, "Share");
  const cancel = h("button", { id: "cancel", type: "button", class: "btn ghost danger", title: "End the session (Esc)" }, "Cancel");
  const bar = h("i");
  const progress = h("div", { id: "round-progress", class: "progress", role: "progressbar", "aria-label": "Round progress",
    "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": "0", dataset: { active: "false" } }, bar);
  const status = h("p", { id: "status", class: "status", "aria-live": "polite" });
  const grid = h("div", { id: "grid", class: "grid" });
  const feedbackError = h("p", { id: "feedback-error", class: "error", role: "alert", hidden: true });
  const roundPrompt = h("textarea", { id: "round-prompt", rows: 1, maxlength: 1000, "aria-label": "Prompt for the next round",
    spellcheck: "false" });
  const nextRound = h("button", { id: "next-round", type: "button", class: "btn primary" }, "Next round ", h("kbd", {}, "⏎"));
  const finalizeBtn = h("button", { id: "finalize", type: "button", class: "btn" }, "Finalize");
  const refine = h("div", { class: "refine", id: "refine" },
    h("label", { class: "refine-prompt" }, h("span", { class: "chip-label" }, "Prompt"), roundPrompt), nextRound, finalizeBtn);
  const hints = h("p", { class: "hints" },
    h("kbd", {}, "1–8"), " like ", h("kbd", {}, "⇧ 1–8"), " dislike ", h("kbd", {}, "click"), " cycles ♥ ✕ ",
    h("kbd", {}, "⏎"), " next round ", h("kbd", {}, "F"), " finalize hovered ", h("kbd", {}, "Esc"), " cancel");
  const finalPanel = createFinalPanel();
  const historyStrip = createHistory({ wireTile: (t) => wireTile(t) });
  const learnedChips = createLearnedChips({ onToggle: (kind, slot, value) => toggleConstraint(kind, slot, value) });
  const banner = h("p", { class: "viewer-banner" }, h("span", { class: "live-dot" }), "Live view · read-only");
  const el = h("section", { class: "session", id: "session", hidden: true },
    banner,
    h("header", { class: "session-head" },
      h("div", { class: "session-heading" }, title, h("div", { class: "session-meta" }, phasePill, roundLabel)),
      h("div", { class: "session-actions" }, share, cancel)),
    progress, status, finalPanel.el, grid, learnedChips.el, feedbackError, refine, hints, historyStrip.el);

  let state = null;
  let ctrl = null;
  let choices = new Map(); // image id -> "liked" | "disliked" | "none" (not sent yet)
  let pendingConstraints = null; // pins and bans not sent yet (null: the session's, unchanged)
  let gridTiles = [];
  let gridRound = -1;
  let selected = ""; // image id the finalize button acts on (last clicked / focused)
  let hovered = "";
  let busy = false;
  let promptShown = ""; // the session prompt the round prompt box was last filled with
  let connection = ""; // "", "reconnecting", "reconnected"
  let connectionTimer = null;

  const committedOf = (id) => (state.liked.has(id) ? "liked" : state.disliked.has(id) ? "disliked" : "none");
  const stateOf = (id) => choices.get(id) ?? committedOf(id);
  const canChoose = () => !readOnly && state && !busy && !state.terminal && state.phase !== Phase.FINALIZING;

  function setChoice(id, value) {
    if (!id || !canChoose()) return;
    if (value === "none" && committedOf(id) !== "none") return; // sent already: flip it, it cannot be unsent
    if (value === committedOf(id)) choices.delete(id);
    else choices.set(id, value);
    selected = id;
    showError(feedbackError, "");
    render();
  }

  const shownConstraints = () => pendingConstraints ?? state.constraints;
  const canConstrain = () => !readOnly && state && !state.terminal && state.phase !== Phase.FINALIZING;

  function toggleConstraint(kind, slot, value) {
    if (!canConstrain()) return;
    const next = (kind === "pin" ? togglePin : toggleBan)(shownConstraints(), slot, value);
    pendingConstraints = sameConstraints(next, state.constraints) ? null : next;
    showError(feedbackError, "");
    render();
  }

  function wireTile(tile) {
    if (readOnly) return;
    tile.el.addEventListener("click", () => {
      if (!tile.imageId) return;
      setChoice(tile.imageId, nextState(stateOf(tile.imageId), committedOf(tile.imageId)));
    });
    tile.el.addEventListener("keydown", (event) => {
      if (event.key === " " && tile.imageId) {
        event.preventDefault();
        setChoice(tile.imageId, nextState(stateOf(tile.imageId), committedOf(tile.imageId)));
      }
    });
    tile.el.addEventListener("mouseenter", () => { hovered = tile.imageId; });
    tile.el.addEventListener("mouseleave", () => { hovered = ""; });
    tile.el.addEventListener("focus", () => {
      if (tile.imageId) { selected = tile.imageId; renderControls(); renderSelection(); }
    });
  }

  function renderGrid() {
    const running = state.running;
    const latest = state.latestRound();
    const round = running ? running.round : latest ? latest.round : 0;
    const count = running ? running.numImages : latest ? latest.images.length : 0;
    if (round !== gridRound || gridTiles.length !== count) {
      gridRound = round;
      gridTiles = Array.from({ length: count }, (_, i) => new Tile({ index: i, interactive: !readOnly, showKey: !readOnly }));
      gridTiles.forEach(wireTile);
      const aspect = aspectOf(state.params?.aspectRatio);
      for (const t of gridTiles) t.setAspect(aspect);
      replaceChildren(grid, gridTiles.map((t) => t.el));
      grid.style.setProperty("--cols", String(columnsFor(count)));
      fitGrid();
    }
    grid.dataset.round = String(round);
    grid.dataset.phase = running ? "running" : "done";
    if (running) {
      const frac = running.totalSteps ? running.step / running.totalSteps : 0;
      gridTiles.forEach((t, i) => t.showPreview(running.previews[i], frac));
      return;
    }
    if (!latest) return;
    gridTiles.forEach((t, i) => {
      const ri = latest.images[i];
      if (!ri) return;
      if (t.imageId !== ri.image?.id) t.showImage(ri, state.prompt);
      t.setState(stateOf(t.imageId), committedOf(t.imageId));
      t.setChosen(t.imageId === state.chosenImageId);
    });
  }

  function renderHistory() {
    historyStrip.render(state, gridRound, { interactive: !readOnly, stateOf, committedOf });
  }

  function renderLearned() {
    if (pendingConstraints && sameConstraints(pendingConstraints, state.constraints)) pendingConstraints = null;
    learnedChips.render({ learned: state.latestLearned(), round: state.lastRound(), constraints: shownConstraints(),
      editable: canConstrain(), dirty: pendingConstraints !== null });
  }

  function renderSelection() {
    for (const t of [...gridTiles, ...historyStrip.tiles()]) t.el.classList.toggle("selected", Boolean(selected) && t.imageId === selected);
  }

  function renderProgress() {
    const running = state.running;
    const frac = running && running.totalSteps ? running.step / running.totalSteps : running ? 0 : 1;
    progress.dataset.active = running ? "true" : "false";
    progress.dataset.step = running ? String(running.step) : "";
    progress.dataset.total = running ? String(running.totalSteps) : "";
    progress.setAttribute("aria-valuenow", frac.toFixed(3));
    bar.style.width = `${Math.round(frac * 100)}%`;
    progress.classList.toggle("idle", !running);
  }

  function target() {
    if (selected && state.findImage(selected)) return selected;
    const latest = state.latestRound();
    const liked = latest?.images.find((ri) => stateOf(ri.image?.id) === "liked");
    return liked?.image?.id || "";
  }

  function renderControls() {
    const awaiting = state.phase === Phase.AWAITING;
    nextRound.disabled = busy || !awaiting;
    const t = target();
    finalizeBtn.disabled = busy || !awaiting || !t;
    const found = t ? state.findImage(t) : null;
    finalizeBtn.textContent = found ? `Finalize #${found.roundImage.image.index + 1} · R${found.round}` : "Finalize";
    cancel.disabled = busy || state.terminal;
    roundPrompt.disabled = state.terminal;
    refine.classList.toggle("disabled", !awaiting);
  }

  function renderStatus() {
    const s = state;
    const pending = [...choices.entries()].filter(([id, v]) => v !== committedOf(id));
    const likes = pending.filter(([, v]) => v === "liked").length;
    const dislikes = pending.filter(([, v]) => v === "disliked").length;
    const text = statusText(s, { readOnly, likes, dislikes, connection });
    status.textContent = text;
    status.dataset.connection = connection || "ok";
    phasePill.textContent = PHASE_LABELS[s.phase] || "";
    phasePill.dataset.phase = s.phase;
    el.dataset.phase = s.phase;
    const rounds = s.running ? s.running.round : s.lastRound();
    roundLabel.textContent = rounds ? `Round ${rounds}` : "";
    title.textContent = s.prompt;
    // The round prompt follows the session's prompt unless the person has edited it.
    if (s.prompt !== promptShown) {
      if (roundPrompt.value === promptShown) roundPrompt.value = s.prompt;
      promptShown = s.prompt;
    }
    if (s.lastError) showError(feedbackError, `${s.lastError.message}`);
  }

  function render() {
    if (!state) return;
    renderGrid();
    renderLearned();
    renderHistory();
    renderSelection();
    renderProgress();
    renderControls();
    finalPanel.render(state);
    renderStatus();
  }

  function fitGrid() {
    if (!gridTiles.length) return;
    const cols = columnsFor(gridTiles.length);
    const rows = Math.ceil(gridTiles.length / cols);
    const aspect = aspectOf(state?.params?.aspectRatio);
    const avail = Math.max(240, window.innerHeight - 250);
    const tileH = (avail - 16 * (rows - 1)) / rows;
    grid.style.maxWidth = `${Math.round(cols * tileH * aspect + 16 * (cols - 1))}px`;
  }

  async function post(path, json) {
    busy = true;
    renderControls();
    showError(feedbackError, "");
    try {
      const snap = await api(`/v1/sessions/${encodeURIComponent(state.id)}/${path}`, { method: "POST", json });
      state.merge(snap);
      return true;
    } catch (err) {
      showError(feedbackError, describe(err));
      return false;
    } finally {
      busy = false;
      render();
    }
  }

  async function sendFeedback() {
    if (readOnly || busy || !state || state.phase !== Phase.AWAITING) return;
    const body = { likedImageIds: [], dislikedImageIds: [] };
    for (const [id, v] of choices) {
      if (v === committedOf(id)) continue;
      if (v === "liked") body.likedImageIds.push(id);
      else if (v === "disliked") body.dislikedImageIds.push(id);
    }
    if (roundPrompt.value.trim() !== state.prompt) body.prompt = roundPrompt.value.trim();
    const sentConstraints = pendingConstraints;
    if (sentConstraints) body.constraints = sentConstraints;
    if (await post("feedback", body)) {
      if (pendingConstraints === sentConstraints) pendingConstraints = null;
      choices = new Map();
      selected = "";
      render();
    }
  }

  async function finalize(imageId) {
    if (readOnly || busy || !state || !imageId || state.phase !== Phase.AWAITING) return;
    await post("finalize", { imageId });
  }

  async function cancelSession() {
    if (readOnly || busy || !state || state.terminal) return;
    if (await post("cancel", {})) toast("Session cancelled");
  }

  async function copyShare() {
    if (!state) return;
    const url = `${location.origin}/v/${encodeURIComponent(state.id)}`;
    try {
      await navigator.clipboard.writeText(url);
      toast("Live viewer link copied");
    } catch {
      toast(url);
    }
    share.dataset.url = url;
  }

  function onConnection(what) {
    clearTimeout(connectionTimer);
    connection = what;
    if (what === "reconnected") connectionTimer = setTimeout(() => { connection = ""; render(); }, 4000);
    render();
  }

  nextRound.addEventListener("click", sendFeedback);
  finalizeBtn.addEventListener("click", () => finalize(target()));
  cancel.addEventListener("click", cancelSession);
  share.addEventListener("click", copyShare);
  roundPrompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendFeedback();
    }
  });
  window.addEventListener("resize", fitGrid);
  const keys = bindSessionKeys({
    enabled: () => !readOnly && Boolean(state) && !el.hidden,
    toggle(index, value) {
      const t = gridTiles[index];
      if (!t || !t.imageId) return;
      setChoice(t.imageId, stateOf(t.imageId) === value ? "none" : value);
      t.el.focus({ preventScroll: true });
    },
    next: sendFeedback,
    finalize: () => finalize(hovered || target()),
    cancel: cancelSession,
    canCancel: () => Boolean(state) && !state.terminal,
  });

  /**
   * Events carry how many likes and dislikes a round used, not which: when those differ from what this
   * page knows (feedback sent from another tab, or this is the viewer), the snapshot says which.
   */
  async function refreshChoices(started) {
    const s = state;
    if (Number(started.liked || 0) === s.liked.size && Number(started.disliked || 0) === s.disliked.size) return;
    try {
      const snap = await api(`/v1/sessions/${encodeURIComponent(s.id)}`, { signal: ctrl?.signal });
      if (state === s) {
        s.merge(snap);
        render();
      }
    } catch {
      /* the next round's snapshot will tell */
    }
  }

  function close() {
    ctrl?.abort();
    ctrl = null;
    state = null;
    el.hidden = true;
  }

  function setReadOnly(value) {
    readOnly = value;
    el.classList.toggle("read-only", readOnly);
    for (const x of [cancel, refine, hints]) x.hidden = readOnly;
    banner.hidden = !readOnly;
  }

  /** Follows session `sessionId` (from `snapshot` if given); `readOnly` is the /v/{id} viewer. */
  async function open(sessionId, snapshot, { readOnly: viewer = false } = {}) {
    close();
    setReadOnly(viewer);
    const mine = new AbortController();
    ctrl = mine;
    el.hidden = false;
    choices = new Map();
    pendingConstraints = null;
    learnedChips.reset();
    gridRound = -1;
    selected = "";
    promptShown = "";
    roundPrompt.value = "";
    connection = "";
    finalPanel.reset();
    replaceChildren(grid);
    historyStrip.reset();
    showError(feedbackError, "");
    title.textContent = "";
    status.textContent = "Loading session…";
    el.dataset.phase = "loading";
    let snap = snapshot;
    try {
      snap ||= await api(`/v1/sessions/${encodeURIComponent(sessionId)}`, { signal: mine.signal });
    } catch (err) {
      if (mine.signal.aborted) return;
      status.textContent = "Cannot open this session";
      el.dataset.phase = "error";
      showError(feedbackError, describe(err));
      return;
    }
    if (mine.signal.aborted) return;
    state = new SessionState(snap);
    onParams(state.params);
    render();
    if (state.terminal) return;
    try {
      await followEvents(`/v1/sessions/${encodeURIComponent(state.id)}/events`, {
        lastEventId: state.lastEventId,
        signal: mine.signal,
        isFinished: () => !state || state.terminal,
        onEvent: (name, data, id) => {
          if (!state || !state.apply(name, data, id)) return;
          render();
          if (name === "round_started") refreshChoices(data.roundStarted || {});
        },
        onConnection,
      });
    } catch (err) {
      if (!mine.signal.aborted) showError(feedbackError, `Event stream: ${describe(err)}`);
    }
  }

  return { el, open, close, destroy() { close(); keys.unbind(); window.removeEventListener("resize", fitGrid); } };
}
