"""The `philip session` loop: show each round as a numbered contact sheet, ask (or follow flags), repeat.

Scripted use: ``--like 1,3 --dislike 2`` apply to round 1, the next ``--like``/``--dislike`` to
round 2 and so on (``--like ""`` for none); ``--rounds N`` stops after round N and finalizes
with ``--finalize best|N`` (``best``: the first image you liked in the last round, else image 1).
``--resume ID`` reattaches to a session kept in the store (after a dropped connection or 'q').
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from philip.clients.session import Round, SessionClient, SessionError
from philip.images import contact_sheet, decode_png
from philip.v1 import gateway_pb2, refiner_pb2


@dataclass(frozen=True)
class Picks:
    liked: list[int]  # 1-based positions in the round
    disliked: list[int]


def parse_numbers(text: str, count: int, what: str) -> list[int]:
    """"1,3" -> [1, 3]; each in 1..count."""
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= count:
            raise ValueError(f"{what}: {part!r} is not an image number 1-{count}")
        out.append(int(part))
    return out


def scripted_picks(likes: Sequence[str], dislikes: Sequence[str], round_index: int, count: int) -> Picks:
    like = likes[round_index] if round_index < len(likes) else ""
    dislike = dislikes[round_index] if round_index < len(dislikes) else ""
    return Picks(parse_numbers(like, count, "--like"), parse_numbers(dislike, count, "--dislike"))


def choose_final(choice: str, last: Round, picks: Picks | None) -> int:
    """1-based image of the last round to finalize: ``best`` or a number."""
    if choice == "best":
        return picks.liked[0] if picks is not None and picks.liked else 1
    return parse_one(choice, len(last.images), "--finalize")


def save_round(out_dir: Path, session_id: str, done: Round) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(done.images, start=1):
        (out_dir / f"{session_id}_r{done.number}_{k}_seed{image.image.seed}.png").write_bytes(image.image.png)
    sheet = out_dir / f"{session_id}_round{done.number}.png"
    contact_sheet([decode_png(i.image.png) for i in done.images], labels=True).save(sheet)
    return sheet


QUESTION = ("like (e.g. 1,3), then '/' and dislikes (e.g. 1,3/2); 'f N' finalizes; 'q' quits; "
            "'pin SLOT=VALUE', 'ban SLOT=VALUE', 'unpin SLOT', 'clear' steer exploration")


@dataclass
class Constraints:
    """The person's pins (slot -> value) and bans for prompt exploration, sent with the next feedback."""

    pinned: dict[str, str] = field(default_factory=dict)
    banned: set[tuple[str, str]] = field(default_factory=set)
    changed: bool = False

    @classmethod
    def from_options(cls, pins: Sequence[str], bans: Sequence[str]) -> Constraints:
        out = cls()
        for verb, options in (("pin", pins), ("ban", bans)):
            for option in options:
                out.apply(verb, *_slot_value(option, f"--{verb}"))
        return out

    def apply(self, verb: str, slot: str, value: str = "") -> str:
        """Change the constraints; returns what to tell the person."""
        self.changed = True
        if verb == "pin":
            self.pinned[slot] = value
            self.banned.discard((slot, value))
            return f"pinned {slot}={value} from the next round"
        if verb == "ban":
            self.banned.add((slot, value))
            if self.pinned.get(slot) == value:
                del self.pinned[slot]
            return f"banned {slot}={value} from the next round"
        if verb == "unpin":
            self.pinned.pop(slot, None)
            return f"{slot} is explored again"
        self.pinned.clear()
        self.banned.clear()
        return "no pins or bans"

    def to_pb(self) -> refiner_pb2.SlotConstraints:
        return refiner_pb2.SlotConstraints(
            pinned=[refiner_pb2.SlotValue(slot=s, value=v) for s, v in sorted(self.pinned.items())],
            banned=[refiner_pb2.SlotValue(slot=s, value=v) for s, v in sorted(self.banned)])


def _slot_value(text: str, what: str) -> tuple[str, str]:
    slot, eq, value = text.partition("=")
    if not eq or not slot.strip() or not value.strip():
        raise ValueError(f"{what}: write SLOT=VALUE (e.g. bg=blue), got {text!r}")
    return slot.strip(), value.strip()


def describe_learned(done: Round) -> str:
    """``"learned: bg: blue 0.71, red 0.12 | fg: ..."``; empty when the round did not explore."""
    if not done.learned:
        return ""
    parts = [f"{b.slot}: " + ", ".join(f"{v.value} {v.probability:.2f}" for v in b.values) for b in done.learned]
    return "learned: " + " | ".join(parts)


@dataclass(frozen=True)
class Answer:
    """What a person typed at the prompt: picks for the next round, an image to finalize, quit, or a pin/ban."""

    picks: Picks | None = None
    finalize: int | None = None  # 1-based
    quit: bool = False
    constraint: tuple[str, str, str] | None = None  # (pin | ban | unpin | clear, slot, value)


def parse_answer(text: str, count: int) -> Answer:
    """``1,3/2`` -> like 1 and 3, dislike 2; ``f 2`` -> finalize image 2; ``q`` -> quit; ``pin bg=blue``,
    ``ban fg=red``, ``unpin bg``, ``clear``."""
    text = text.strip()
    if text == "q":
        return Answer(quit=True)
    verb, _, rest = text.partition(" ")
    if verb in ("pin", "ban"):
        return Answer(constraint=(verb, *_slot_value(rest, verb)))
    if verb == "unpin" and rest.strip():
        return Answer(constraint=("unpin", rest.strip(), ""))
    if text == "clear":
        return Answer(constraint=("clear", "", ""))
    if text.startswith("f"):
        return Answer(finalize=parse_one(text[1:], count, "f"))
    like, _, dislike = text.partition("/")
    return Answer(picks=Picks(parse_numbers(like, count, "like"), parse_numbers(dislike, count, "dislike")))


def parse_one(text: str, count: int, what: str) -> int:
    numbers = parse_numbers(text, count, what)
    if len(numbers) != 1:
        raise ValueError(f"{what}: name one image number 1-{count}")
    return numbers[0]


def ask_until_valid(ask: Callable[[str], str], say: Callable[[str], None], count: int,
                    constraints: Constraints | None = None) -> Answer:
    """Ask again after a typo (a bad answer must not end or lose the session) and after a pin or ban."""
    while True:
        try:
            answer = parse_answer(ask(QUESTION), count)
        except ValueError as err:
            say(f"{err}; try again")
            continue
        if answer.constraint is None:
            return answer
        if constraints is not None:
            say(constraints.apply(*answer.constraint))


async def run_session(session: SessionClient, *, out_dir: Path, rounds: int | None, likes: Sequence[str],
                      dislikes: Sequence[str], finalize: str, scale: int, ask: Callable[[str], str] | None,
                      say: Callable[[str], None], current: Round | None = None,
                      constraints: Constraints | None = None) -> Path | None:
    """Drive one session to its final image (path returned) or until the user quits (None).

    ``current``: a finished round to continue from (a resumed session); else wait for the running one.
    """
    if current is None:
        current = await session.next_round()
    while True:
        sheet = save_round(out_dir, session.session_id, current)
        c = current.compute
        say(f"round {current.number}: {len(current.images)} images -> {sheet} "
            f"(UNet evals {c.main_image_evals + c.reference_image_evals})")
        if len({i.prompt for i in current.images}) > 1:  # exploration asked for captions: say which is which
            for k, image in enumerate(current.images, start=1):
                say(f"  {k}: {image.prompt}")
        if learned := describe_learned(current):
            say(f"  {learned}")
        picks: Picks | None = None
        index = current.number - 1
        if ask is None or index < len(likes) or index < len(dislikes):
            picks = scripted_picks(likes, dislikes, index, len(current.images))
        last = rounds is not None and current.number >= rounds
        if ask is not None and picks is None and not last:
            answer = ask_until_valid(ask, say, len(current.images), constraints)
            if answer.quit:
                say(f"left session {session.session_id} as it is; continue it with --resume {session.session_id}")
                return None
            if answer.finalize is not None:
                return await _finalize(session, current, answer.finalize, scale, out_dir, say)
            picks = answer.picks
        if last or picks is None:
            return await _finalize(session, current, choose_final(finalize, current, picks), scale, out_dir, say)
        ids = [i.image.id for i in current.images]
        sent = None
        if constraints is not None and constraints.changed:
            sent, constraints.changed = constraints.to_pb(), False
        try:
            current = await session.feedback([ids[k - 1] for k in picks.liked],
                                             [ids[k - 1] for k in picks.disliked], constraints=sent)
        except SessionError as err:
            if sent is None or ask is None or constraints is None or err.code != "INVALID_ARGUMENT":
                raise
            say(f"{err.message}; your pins and bans are cleared, answer again")
            constraints.apply("clear", "")


async def _finalize(session: SessionClient, last: Round, number: int, scale: int, out_dir: Path,
                    say: Callable[[str], None]) -> Path:
    if not 1 <= number <= len(last.images):
        raise ValueError(f"finalize: {number} is not an image number 1-{len(last.images)}")
    say(f"upscaling image {number} of round {last.number} ...")
    return save_final(out_dir, session.session_id, await session.finalize(last.images[number - 1].image.id, scale))


def save_final(out_dir: Path, session_id: str, final: gateway_pb2.SessionFinal) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{session_id}_final.png"
    path.write_bytes(final.image.png)
    return path


async def resume_point(session: SessionClient, out_dir: Path, say: Callable[[str], None]) -> Path | Round | None:
    """Where a resumed session stands: the path of its final image (done, or finished now), the last
    finished round to continue from (``run_session(current=...)``), or None (a round is running)."""
    snap = session.snapshot
    if snap is None:
        raise SessionError("INTERNAL", "the session was not resumed")
    phase = snap.phase
    if phase == gateway_pb2.SESSION_PHASE_CANCELLED:
        raise SessionError("FAILED_PRECONDITION", f"session {session.session_id} was cancelled; start a new one")
    if phase == gateway_pb2.SESSION_PHASE_DONE:
        return save_final(out_dir, session.session_id, snap.final)
    if phase == gateway_pb2.SESSION_PHASE_FINALIZING:
        say(f"session {session.session_id} is upscaling its chosen image ...")
        return save_final(out_dir, session.session_id, await session.wait_final())
    if phase == gateway_pb2.SESSION_PHASE_AWAITING_FEEDBACK and snap.rounds:
        say(f"session {session.session_id}: {len(snap.rounds)} rounds so far, continuing from the last")
        return Round.from_pb(snap.rounds[-1])
    say(f"session {session.session_id}: waiting for round {snap.running_round} ...")
    return None
