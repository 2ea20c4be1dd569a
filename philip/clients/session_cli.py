"""The `philip session` loop: show each round as a numbered contact sheet, ask (or follow flags), repeat.

Scripted use: ``--like 1,3 --dislike 2`` apply to round 1, the next ``--like``/``--dislike`` to
round 2 and so on (``--like ""`` for none); ``--rounds N`` stops after round N and finalizes
with ``--finalize best|N`` (``best``: the first image you liked in the last round, else image 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from philip.clients.session import Round, SessionClient
from philip.images import contact_sheet, decode_png


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
    return parse_numbers(choice, len(last.images), "--finalize")[0]


def save_round(out_dir: Path, session_id: str, done: Round) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(done.images, start=1):
        (out_dir / f"{session_id}_r{done.number}_{k}_seed{image.image.seed}.png").write_bytes(image.image.png)
    sheet = out_dir / f"{session_id}_round{done.number}.png"
    contact_sheet([decode_png(i.image.png) for i in done.images], labels=True).save(sheet)
    return sheet


async def run_session(session: SessionClient, *, out_dir: Path, rounds: int | None, likes: Sequence[str],
                      dislikes: Sequence[str], finalize: str, scale: int, ask: Callable[[str], str] | None,
                      say: Callable[[str], None]) -> Path | None:
    """Drive one session to its final image (path returned) or until the user quits (None)."""
    current = await session.next_round()
    while True:
        sheet = save_round(out_dir, session.session_id, current)
        c = current.compute
        say(f"round {current.number}: {len(current.images)} images -> {sheet} "
            f"(UNet evals {c.main_image_evals + c.reference_image_evals})")
        picks: Picks | None = None
        index = current.number - 1
        if ask is None or index < len(likes) or index < len(dislikes):
            picks = scripted_picks(likes, dislikes, index, len(current.images))
        last = rounds is not None and current.number >= rounds
        if ask is not None and picks is None and not last:
            answer = ask("like (e.g. 1,3), then '/' and dislikes (e.g. 1,3/2); 'f N' finalizes; 'q' quits")
            if answer.strip() == "q":
                return None
            if answer.startswith("f"):
                return await _finalize(session, current, int(answer[1:].strip()), scale, out_dir, say)
            like, _, dislike = answer.partition("/")
            picks = Picks(parse_numbers(like, len(current.images), "like"),
                          parse_numbers(dislike, len(current.images), "dislike"))
        if last or picks is None:
            return await _finalize(session, current, choose_final(finalize, current, picks), scale, out_dir, say)
        ids = [i.image.id for i in current.images]
        current = await session.feedback([ids[k - 1] for k in picks.liked], [ids[k - 1] for k in picks.disliked])


async def _finalize(session: SessionClient, last: Round, number: int, scale: int, out_dir: Path,
                    say: Callable[[str], None]) -> Path:
    if not 1 <= number <= len(last.images):
        raise ValueError(f"finalize: {number} is not an image number 1-{len(last.images)}")
    say(f"upscaling image {number} of round {last.number} ...")
    final = await session.finalize(last.images[number - 1].image.id, scale)
    path = out_dir / f"{session.session_id}_final.png"
    path.write_bytes(final.image.png)
    return path
