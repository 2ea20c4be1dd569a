// What the loop learned: one row per slot of prompt exploration ("bg"), its most probable values as
// chips ("blue 71 %", filled as far as the probability), each with pin (always this value) and ban
// (never this value) buttons. Pinned and banned values stay shown (to undo) when out of the top 3.

import { h, replaceChildren } from "./dom.js";
import { constrainedSlots, constrainedValues, stateOf } from "./slot_constraints.js";

const SVG = "http://www.w3.org/2000/svg";

function icon(kind) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", "chip-icon");
  const shapes = kind === "pin"
    ? [["path", { d: "M5 1.5h6v1.4l-1 .6v3.6l2.6 2.4v1.2H3.4V9.5L6 7.1V3.5l-1-.6z", class: "fill" }],
      ["path", { d: "M8 10.7v3.8", class: "line" }]]
    : [["circle", { cx: "8", cy: "8", r: "5.6", class: "line" }], ["path", { d: "M4.1 11.9l7.8-7.8", class: "line" }]];
  for (const [tag, attrs] of shapes) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    svg.append(el);
  }
  return svg;
}

const percent = (p) => `${Math.round(Math.max(0, Math.min(1, p)) * 100)} %`;

export function createLearnedChips({ onToggle }) {
  const note = h("span", { class: "learned-note muted" });
  const rows = h("div", { class: "learned-rows" });
  const el = h("section", { id: "learned", class: "learned", "aria-label": "What the loop learned", hidden: true },
    h("div", { class: "learned-head" }, h("h3", { class: "section-title" }, "Learned so far"), note), rows);
  let key = "";

  function button(kind, slot, value, state, editable) {
    const on = state === (kind === "pin" ? "pinned" : "banned");
    const verb = kind === "pin" ? "Pin" : "Ban";
    return h("button", {
      type: "button", class: `chip-btn ${kind}`, disabled: !editable, "aria-pressed": on ? "true" : "false",
      "aria-label": `${verb} ${slot}: ${value}`, title: on ? `Undo: ${kind === "pin" ? "unpin" : "unban"} ${value}`
        : kind === "pin" ? `Always ${value}` : `Never ${value}`,
      dataset: { kind, slot, value }, onclick: () => onToggle(kind, slot, value),
    }, icon(kind));
  }

  function chip(slot, value, probability, constraints, editable) {
    const state = stateOf(constraints, slot, value);
    const known = probability !== null;
    const el = h("div", { class: "value-chip", dataset: { slot, value, state, probability: known ? String(probability) : "" } },
      h("span", { class: "value-chip-text" }, value),
      known ? h("span", { class: "value-chip-prob" }, percent(probability)) : null,
      state !== "none" ? h("span", { class: "visually-hidden" }, `, ${state}`) : null,
      editable || state === "pinned" ? button("pin", slot, value, state, editable) : null,
      editable || state === "banned" ? button("ban", slot, value, state, editable) : null);
    // CSSOM, not a style attribute: the page's CSP allows no inline styles.
    el.style.setProperty("--p", known ? String(Math.max(0, Math.min(1, probability))) : "0");
    return el;
  }

  /**
   * `learned`: SlotBelief JSON of round `round` (empty: it did not explore); `constraints` the pins
   * and bans shown (normalized); `editable` whether they can change; `dirty` whether they differ
   * from the session's (they go with the next round).
   */
  function render({ learned = [], round = 0, constraints, editable, dirty }) {
    const nextKey = JSON.stringify([learned, round, constraints, editable, dirty]);
    if (nextKey === key) return;
    key = nextKey;
    const beliefs = new Map((learned || []).map((b) => [b.slot, b.values || []]));
    const slots = [...beliefs.keys(), ...constrainedSlots(constraints).filter((s) => !beliefs.has(s))];
    el.hidden = !slots.length;
    if (!slots.length) {
      replaceChildren(rows);
      return;
    }
    const focused = el.contains(document.activeElement) ? { ...document.activeElement.dataset } : null;
    note.textContent = dirty ? "Pins and bans go with the next round"
      : beliefs.size ? `What round ${round} explored, from your picks${editable ? " · pin a value to keep it, ban one to never see it" : ""}`
        : "";
    note.classList.toggle("pending", Boolean(dirty));
    replaceChildren(rows, slots.map((slot) => {
      const top = beliefs.get(slot) || [];
      const shown = new Set(top.map((v) => v.value));
      const extra = constrainedValues(constraints, slot).filter((v) => !shown.has(v));
      return h("div", { class: "learned-row", dataset: { slot } },
        h("span", { class: "learned-slot" }, slot),
        h("div", { class: "learned-values", role: "group", "aria-label": `${slot} values` },
          top.map((v) => chip(slot, v.value, Number(v.probability || 0), constraints, editable)),
          extra.map((v) => chip(slot, v, null, constraints, editable))));
    }));
    if (focused?.kind) {
      const again = [...rows.querySelectorAll(".chip-btn")].find((b) =>
        b.dataset.kind === focused.kind && b.dataset.slot === focused.slot && b.dataset.value === focused.value);
      again?.focus({ preventScroll: true });
    }
  }

  function reset() {
    key = "";
    el.hidden = true;
    replaceChildren(rows);
  }

  return { el, render, reset };
}
