// The history strip: every finished round except the one in the grid, newest first, as small tiles
// that can still be liked, disliked or finalized.

import { h, replaceChildren } from "./dom.js";
import { Tile } from "./tile.js";

export function createHistory({ wireTile }) {
  const el = h("section", { id: "history", class: "history" });
  let key = "";
  let tiles = [];

  /** `stateOf(id)` / `committedOf(id)`: the like state shown and the one the server has. */
  function render(state, gridRound, { interactive, stateOf, committedOf }) {
    const earlier = state.rounds.filter((r) => r.round !== gridRound);
    const nextKey = `${interactive}:${earlier.map((r) => r.round).join(",")}`;
    if (nextKey !== key) {
      key = nextKey;
      tiles = [];
      const rows = [...earlier].reverse().map((r) => {
        const row = r.images.map((ri, i) => {
          const t = new Tile({ index: i, interactive, small: true });
          wireTile(t);
          t.showImage(ri, state.prompt);
          tiles.push(t);
          return t.el;
        });
        return h("div", { class: "history-round", dataset: { round: String(r.round) } },
          h("div", { class: "history-label" }, h("strong", {}, `Round ${r.round}`),
            h("span", { class: "muted history-count", dataset: { round: String(r.round) } })),
          h("div", { class: "strip" }, row));
      });
      replaceChildren(el, earlier.length ? h("h3", { class: "section-title" }, "Earlier rounds") : null, rows);
    }
    for (const t of tiles) {
      t.setState(stateOf(t.imageId), committedOf(t.imageId));
      t.setChosen(t.imageId === state.chosenImageId);
    }
    for (const label of el.querySelectorAll(".history-count")) {
      const r = state.findRound(Number(label.dataset.round));
      const n = (r?.images || []).filter((ri) => stateOf(ri.image?.id) === "liked").length;
      label.textContent = n ? ` · ${n} ♥` : "";
    }
  }

  function reset() {
    key = "";
    tiles = [];
    replaceChildren(el);
  }

  return { el, render, reset, tiles: () => tiles };
}
