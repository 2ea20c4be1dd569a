// A session's pins and bans for prompt exploration (SlotConstraints as JSON: {pinned, banned}, lists
// of {slot, value}), as plain immutable data. Pure, no DOM. At most one pin per slot; a value is
// pinned or banned, never both.

const pairs = (list) => (Array.isArray(list) ? list : [])
  .filter((x) => x && x.slot && x.value)
  .map((x) => ({ slot: String(x.slot), value: String(x.value) }));

const same = (a, b) => a.slot === b.slot && a.value === b.value;

/** `c` (a snapshot's `constraints`, possibly absent or with absent lists) with both lists present. */
export function normalize(c) {
  return { pinned: pairs(c?.pinned), banned: pairs(c?.banned) };
}

export const EMPTY = Object.freeze(normalize({}));

const keyOf = (list) => list.map((x) => `${x.slot}\u0000${x.value}`).sort().join("\u0001");

/** Same pins and bans, in any order. */
export function sameConstraints(a, b) {
  return keyOf(a.pinned) === keyOf(b.pinned) && keyOf(a.banned) === keyOf(b.banned);
}

/** "pinned" | "banned" | "none" for `value` of `slot`. */
export function stateOf(c, slot, value) {
  const v = { slot, value };
  if (c.pinned.some((x) => same(x, v))) return "pinned";
  if (c.banned.some((x) => same(x, v))) return "banned";
  return "none";
}

/** Pins `value` of `slot` (replacing the slot's earlier pin, lifting a ban of it), or unpins it. */
export function togglePin(c, slot, value) {
  const v = { slot, value };
  if (stateOf(c, slot, value) === "pinned") return { ...c, pinned: c.pinned.filter((x) => !same(x, v)) };
  return { pinned: [...c.pinned.filter((x) => x.slot !== slot), v], banned: c.banned.filter((x) => !same(x, v)) };
}

/** Bans `value` of `slot` (lifting a pin of it), or lifts the ban. */
export function toggleBan(c, slot, value) {
  const v = { slot, value };
  if (stateOf(c, slot, value) === "banned") return { ...c, banned: c.banned.filter((x) => !same(x, v)) };
  return { pinned: c.pinned.filter((x) => !same(x, v)), banned: [...c.banned, v] };
}

/** The values of `slot` pinned or banned, in that order. */
export function constrainedValues(c, slot) {
  return [...c.pinned, ...c.banned].filter((x) => x.slot === slot).map((x) => x.value);
}

/** Every slot with a pin or ban, first seen first. */
export function constrainedSlots(c) {
  return [...new Set([...c.pinned, ...c.banned].map((x) => x.slot))];
}
