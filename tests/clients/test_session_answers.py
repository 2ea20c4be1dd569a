"""What a person types at `philip session`'s prompt: parsed precisely, and a typo asks again."""

from __future__ import annotations

import pytest

from philip.clients.session import Round
from philip.clients.session_cli import Answer, Picks, ask_until_valid, choose_final, parse_answer
from philip.v1 import refiner_pb2


@pytest.mark.parametrize(("text", "answer"), [
    ("1,3/2", Answer(picks=Picks([1, 3], [2]))),
    (" 2 ", Answer(picks=Picks([2], []))),
    ("/4", Answer(picks=Picks([], [4]))),
    ("", Answer(picks=Picks([], []))),
    ("f 3", Answer(finalize=3)),
    ("f2", Answer(finalize=2)),
    ("q", Answer(quit=True)),
])
def test_answers_parse(text: str, answer: Answer) -> None:
    assert parse_answer(text, 4) == answer


@pytest.mark.parametrize(("text", "message"), [
    ("5", "like: '5' is not an image number 1-4"),
    ("1/x", "dislike: 'x' is not an image number 1-4"),
    ("f", "f: name one image number 1-4"),
    ("f 1,2", "f: name one image number 1-4"),
    ("f 9", "f: '9' is not an image number 1-4"),
])
def test_bad_answers_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_answer(text, 4)


def test_a_typo_asks_again_instead_of_ending_the_session() -> None:
    typed = iter(["7", "f x", "2/1"])
    said: list[str] = []
    answer = ask_until_valid(lambda _question: next(typed), said.append, 4)
    assert answer == Answer(picks=Picks([2], [1]))
    assert said == ["like: '7' is not an image number 1-4; try again",
                    "f: 'x' is not an image number 1-4; try again"]


def test_finalize_flag_takes_best_or_one_number() -> None:
    last = Round(3, [refiner_pb2.RoundImage() for _ in range(4)], refiner_pb2.RoundCompute())
    assert choose_final("best", last, Picks([3, 1], [])) == 3
    assert choose_final("best", last, None) == 1
    assert choose_final("4", last, None) == 4
    with pytest.raises(ValueError, match="--finalize: name one image number 1-4"):
        choose_final("1,2", last, None)
