"""`philip eval references`: the held-out star from 5 uploaded references, no training (FABRIC only).

The personalization evaluation's subject and references (:mod:`philip.evals.personalize`); each image is
"a {class word} on a {colour} background" for the 7 other colours, drawn by the refiner's round runner
(the code a session's round 1 runs) once with the 5 references as liked images and once without, same
seeds. An image shows the subject when the judge sees a star in the reference colour.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PIL import Image

from philip.evals.personalize import SUBJECT_COLOR, eval_prompts, reference_images, score
from philip.feedback_weights import parse_weights


def evaluate_references(model_dir: str | Path = "models/philip-tiny", *, references: int = 5,
                        seeds_per_colour: int = 6, class_word: str = "shape", weights: dict[str, float] | None = None,
                        steps: int = 8, guidance: float = 5.0, save_dir: Path | None = None) -> dict[str, Any]:
    """Subject rate with the references as liked images vs without them (the same prompts and seeds)."""
    import torch

    from philip.models.pipelines import load_pipeline
    from services.refiner.rounds import Feedback, FeedbackImage, NoiseOrigin, RoundParams, RoundRunner

    torch.manual_seed(0)
    pipe = load_pipeline(model_dir)
    runner = RoundRunner(pipe)
    given = {"explore": 0.0, **(weights or {})}
    schedule, diversity, _ = parse_weights(given)
    refs = reference_images(references, SUBJECT_COLOR)
    liked = tuple(FeedbackImage(f"ref-{k}", img, NoiseOrigin(0), reference=True) for k, img in enumerate(refs))
    with_refs: list[Image.Image] = []
    without: list[Image.Image] = []
    backgrounds: list[str] = []
    started = time.monotonic()
    evals = {"with": 0, "without": 0}
    try:
        for k, (prompt, bg) in enumerate(eval_prompts(class_word, SUBJECT_COLOR)):
            params = RoundParams(prompt=prompt, width=64, height=64, steps=steps, guidance=guidance,
                                 scheduler="dpm++", num_images=seeds_per_colour, seed=10_000 + k * seeds_per_colour)
            conditioned = Feedback(liked=liked, weights=schedule, diversity=diversity)
            for name, feedback, out in (("with", conditioned, with_refs), ("without", Feedback(), without)):
                done = runner.run(params, feedback)
                out.extend(i.image for i in done.images)
                evals[name] += done.compute.total_image_evals
            backgrounds += [bg] * seeds_per_colour
    finally:
        runner.close()
    result = score(with_refs, without, backgrounds, SUBJECT_COLOR)
    if save_dir is not None:
        from philip.images import contact_sheet

        save_dir.mkdir(parents=True, exist_ok=True)
        contact_sheet(refs, len(refs)).save(save_dir / "references_refs.png")
        contact_sheet(with_refs, seeds_per_colour).save(save_dir / "references_with.png")
        contact_sheet(without, seeds_per_colour).save(save_dir / "references_without.png")
    return {
        "subject_rate_with_references": result["subject_rate_with"],
        "subject_rate_without": result["subject_rate_without"],
        "bg_follows_prompt": result["bg_follows_prompt"],
        "references": references, "n": len(backgrounds), "prompt": f"a {class_word} on a {{colour}} background",
        "weights": given, "unet_evals_with": evals["with"], "unet_evals_without": evals["without"],
        "seconds": round(time.monotonic() - started, 1),
    }
