"""The adapter's token added to one tokenizer and its text encoder, with only its own embedding row learning.

SD-1.x has one such pair; SDXL has two (CLIP-L and CLIP-G, embeddings of different widths), and the token must be
a word of both: otherwise the second tokenizer splits it into letters and encoder 2 never sees the subject.
"""

from __future__ import annotations

from typing import Any

import torch

from philip.models.adapters import token_in_vocabulary


class NewToken:
    """``token`` added to ``tokenizer``; its row of ``text_encoder``'s input embeddings starts as the mean of
    ``class_word``'s rows and is the only row that learns. Freezes the rest of the encoder."""

    def __init__(self, tokenizer: Any, text_encoder: Any, token: str, class_word: str) -> None:
        if token_in_vocabulary(tokenizer, token) or tokenizer.add_tokens(token) != 1:
            raise ValueError(f"token {token!r} is already in the model's vocabulary; choose another")
        self.token_id = tokenizer.convert_tokens_to_ids(token)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the row is set below
        embeddings = text_encoder.get_input_embeddings().weight
        class_ids = tokenizer(class_word, add_special_tokens=False).input_ids
        text_encoder.requires_grad_(False)
        with torch.no_grad():
            embeddings[self.token_id] = embeddings[class_ids].mean(0)
        # Only the new token's row learns: the others' gradients are zeroed, and with Adam and no
        # weight decay a row whose gradient is always zero never moves.
        embeddings.requires_grad_(True)
        row_mask = torch.zeros(embeddings.shape[0], 1, dtype=embeddings.dtype, device=embeddings.device)
        row_mask[self.token_id] = 1.0
        embeddings.register_hook(lambda grad: grad * row_mask)
        self.embeddings: torch.Tensor = embeddings

    @property
    def row(self) -> torch.Tensor:
        """The learned embedding of the token (a copy)."""
        return self.embeddings[self.token_id].detach().clone()

    def restore(self, row: torch.Tensor) -> None:
        """Set the token's row (from a checkpoint)."""
        with torch.no_grad():
            self.embeddings[self.token_id] = row
