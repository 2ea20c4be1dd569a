"""Personalization adapters on disk, and switching them on a live pipeline.

An adapter is a folder ``{adapters_dir}/{adapter_id}/`` in the formats diffusers reads itself:
``learned_embeds.safetensors`` (``{token: embedding}``, what ``load_textual_inversion`` takes) for
every method, plus ``pytorch_lora_weights.safetensors`` (what ``load_lora_weights`` takes) for LoRA,
and ``adapter.json`` (token, class word, method, family). The same folder works in a notebook:
``pipe.load_textual_inversion(dir); pipe.load_lora_weights(dir)``.

Per family (:mod:`philip.models.adapter_support`): SDXL's embeddings file holds ``clip_l`` and ``clip_g`` (load
each into its encoder and tokenizer, ``pipe.load_textual_inversion(state["clip_g"], token=...,
text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)``); SD3/Flux adapters are LoRA on the transformer
only, with no embeddings file. Each LoRA file is written by its family's pipeline class (``unet.`` or
``transformer.`` keys), so that class's ``load_lora_weights`` reads it.

``AdapterSwitch`` makes one pipeline serve batches with different adapter sets: LoRA weights
stay loaded (LRU, ``set_adapters`` picks the active ones), while new tokens are added to the
tokenizer only while their adapter is active, so a prompt without the adapter reads the token
as the base model would.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from philip.models.adapter_support import TokenSlot, method_refusal, token_slots
from philip.models.families import FAMILIES, family_of
from philip.rpc.auth import owned_by_caller
from philip.rpc.errors import NotFound

if TYPE_CHECKING:  # torch stays out of light importers (request validation, servicers)
    import torch

LORA_FILE = "pytorch_lora_weights.safetensors"
EMBEDS_FILE = "learned_embeds.safetensors"
META_FILE = "adapter.json"
METHODS = ("lora", "textual_inversion")
ADAPTER_ID = re.compile(r"^ad_[0-9a-f]{8,32}$")
# Each family's LoRA writer: the pipeline class whose save_lora_weights writes its layout, and the keyword that
# names the denoiser's layers (diffusers prefixes them "unet." or "transformer.").
LORA_WRITERS = {"sd": ("StableDiffusionPipeline", "unet_lora_layers"),
                "sdxl": ("StableDiffusionXLPipeline", "unet_lora_layers"),
                "sd3": ("StableDiffusion3Pipeline", "transformer_lora_layers"),
                "flux": ("FluxPipeline", "transformer_lora_layers")}


class AdapterError(NotFound, ValueError):
    """An adapter folder is missing, incomplete or unreadable (NOT_FOUND at the edge)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="adapter_ids")


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    adapter_id: str
    token: str
    class_word: str
    method: str
    tenant: str = ""  # who may use it (API-key tenant; "" with an open gateway)
    family: str = "sd"  # the model family it was trained on (files from before 2026-12-06: SD-1.x, all there was)

    def to_json(self) -> dict[str, str]:
        return {"adapter_id": self.adapter_id, "token": self.token, "class_word": self.class_word,
                "method": self.method, "tenant": self.tenant, "family": self.family}


def is_adapter_id(value: str) -> bool:
    return bool(ADAPTER_ID.match(value))


def adapter_exists(adapters_dir: str | Path, adapter_id: str) -> bool:
    """The adapter's files are there, and the caller's tenant may use it."""
    meta = Path(adapters_dir) / adapter_id / META_FILE
    if not is_adapter_id(adapter_id) or not meta.is_file():
        return False
    try:
        return owned_by_caller(json.loads(meta.read_text()))
    except (OSError, ValueError):
        return False


def adapter_dir(adapters_dir: str | Path, adapter_id: str) -> Path:
    """The adapter's folder; the id is checked so it can never name a path outside ``adapters_dir``."""
    if not is_adapter_id(adapter_id):
        raise AdapterError(f"invalid adapter id {adapter_id!r} (expected ad_ followed by hex digits)")
    return Path(adapters_dir) / adapter_id


def save_adapter(folder: Path, info: AdapterInfo, embedding: torch.Tensor | dict[str, torch.Tensor] | None,
                 lora_state: dict[str, torch.Tensor] | None) -> None:
    """Write the adapter files into ``folder`` (created); the metadata file is written last.

    ``embedding``: one tensor (SD-1.x, saved as ``{token: embedding}``), one per token slot's key (SDXL:
    ``clip_l``, ``clip_g``), or None (a LoRA-only family: no embeddings file)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if embedding is not None:
        rows = embedding if isinstance(embedding, dict) else {info.token: embedding}
        save_file({key: row.detach().reshape(1, -1).float().contiguous() for key, row in rows.items()},
                  str(folder / EMBEDS_FILE))
    if lora_state is not None:
        import diffusers

        class_name, keyword = LORA_WRITERS[info.family]
        getattr(diffusers, class_name).save_lora_weights(str(folder), **{keyword: lora_state}, weight_name=LORA_FILE,
                                                         safe_serialization=True)
    (folder / META_FILE).write_text(json.dumps(info.to_json(), indent=2))


def read_lora_file(folder: Path) -> dict[str, torch.Tensor]:
    """The LoRA state dict of an adapter folder, in PEFT's key format.

    Adapters written before 2026-12-02 named the attention projections in the old diffusers format and every
    other layer in PEFT's; diffusers' loader judges the format by the first key and skipped the attention
    LoRA of those files, so they are converted here as a whole.
    """
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors.torch import load_file

    state = load_file(str(folder / LORA_FILE))
    if any(".lora.down." in key or ".lora.up." in key for key in state):
        state = convert_unet_state_dict_to_peft(state)
    return state


def read_adapter(adapters_dir: str | Path, adapter_id: str) -> AdapterInfo:
    folder = adapter_dir(adapters_dir, adapter_id)
    meta = folder / META_FILE
    if not meta.is_file():
        raise AdapterError(f"adapter {adapter_id} has no files under {folder} (is PHILIP_ADAPTERS_DIR shared?)")
    data = json.loads(meta.read_text())
    info = AdapterInfo(adapter_id, data["token"], data["class_word"], data["method"], data.get("tenant", ""),
                       data.get("family", "sd"))
    if info.method == "lora" and not (folder / LORA_FILE).is_file():
        raise AdapterError(f"adapter {adapter_id} is a LoRA but {folder / LORA_FILE} is missing")
    return info


class AdapterSwitch:
    """Activates an adapter set on one pipeline before a batch. Not thread-safe: call it from the
    thread that runs the pipeline."""

    def __init__(self, pipe: Any, adapters_dir: str | Path, capacity: int = 8) -> None:
        self.pipe = pipe
        self.adapters_dir = Path(adapters_dir)
        self.capacity = capacity
        self.family = family_of(pipe)
        self.slots: tuple[TokenSlot, ...] = token_slots(self.family.name)  # encoders taking tokens (SDXL: two)
        self._loaded: OrderedDict[str, AdapterInfo] = OrderedDict()  # LoRA + embeddings read, LRU order
        self._embeds: dict[str, tuple[Any, ...]] = {}  # adapter id -> its embedding per slot
        self._tokens: dict[str, str] = {}  # token -> adapter id, tokens now in the tokenizers
        self._lora_on = False

    def activate(self, adapter_ids: tuple[str, ...]) -> None:
        """Make exactly ``adapter_ids`` active (an empty tuple restores the base model)."""
        infos = [self._load(adapter_id) for adapter_id in adapter_ids]
        wanted = {info.token: info.adapter_id for info in infos}
        stale = [token for token, owner in self._tokens.items() if wanted.get(token) != owner]
        if stale:
            self._unload_tokens(stale)
            for token in stale:
                del self._tokens[token]
        for info in infos:
            if self.slots and info.token not in self._tokens:
                for slot, embedding in zip(self.slots, self._embeds[info.adapter_id], strict=True):
                    self.pipe.load_textual_inversion({info.token: embedding}, token=info.token,
                                                     text_encoder=getattr(self.pipe, slot.text_encoder),
                                                     tokenizer=getattr(self.pipe, slot.tokenizer))
                self._tokens[info.token] = info.adapter_id
        loras = [info.adapter_id for info in infos if info.method == "lora"]
        if loras:
            self.pipe.set_adapters(loras, adapter_weights=[1.0] * len(loras))
            if not self._lora_on:
                self.pipe.enable_lora()
                self._lora_on = True
        elif self._lora_on:
            self.pipe.disable_lora()
            self._lora_on = False

    def forget(self, adapter_id: str) -> None:
        """Drop a deleted adapter from memory (no-op if it was never loaded)."""
        info = self._loaded.pop(adapter_id, None)
        if info is None:
            return
        self._embeds.pop(adapter_id, None)
        if self._tokens.get(info.token) == adapter_id:
            self._unload_tokens([info.token])
            del self._tokens[info.token]
        if info.method == "lora":
            self.pipe.delete_adapters([adapter_id])

    @property
    def loaded(self) -> tuple[str, ...]:
        return tuple(self._loaded)

    def _unload_tokens(self, tokens: list[str]) -> None:
        for slot in self.slots:  # each tokenizer and encoder holds its own copy of the token
            self.pipe.unload_textual_inversion(tokens, tokenizer=getattr(self.pipe, slot.tokenizer),
                                               text_encoder=getattr(self.pipe, slot.text_encoder))

    def _load(self, adapter_id: str) -> AdapterInfo:
        if adapter_id in self._loaded:
            if not adapter_exists(self.adapters_dir, adapter_id):  # deleted since it was loaded
                self.forget(adapter_id)
                raise AdapterError(f"adapter {adapter_id} was deleted")
            self._loaded.move_to_end(adapter_id)
            return self._loaded[adapter_id]
        info = read_adapter(self.adapters_dir, adapter_id)
        if info.family != self.family.name:  # its files fit another family's encoders and denoiser
            trained = next((f.label for f in FAMILIES.values() if f.name == info.family), info.family)
            raise AdapterError(f"adapter {adapter_id} was trained on a {trained} model; this server serves "
                               f"{self.family.label}: train it again here")
        if (refusal := method_refusal(self.family, info.method)) is not None:  # a hand-made folder; never trained
            raise AdapterError(f"adapter {adapter_id}: {refusal}")
        folder = adapter_dir(self.adapters_dir, adapter_id)
        embeds = self._read_embeddings(folder, info)
        if info.method == "lora":
            self.pipe.load_lora_weights(read_lora_file(folder), adapter_name=adapter_id)
            self._lora_on = True  # loading activates it; activate() sets the real set right after
        self._embeds[adapter_id] = embeds
        self._loaded[adapter_id] = info
        while len(self._loaded) > self.capacity:
            oldest = next(iter(self._loaded))
            self.forget(oldest)
        return info

    def _read_embeddings(self, folder: Path, info: AdapterInfo) -> tuple[Any, ...]:
        """The token's embedding for each slot, in its encoder's dtype (none for a LoRA-only family)."""
        if not self.slots:
            return ()
        from safetensors.torch import load_file

        state = load_file(str(folder / EMBEDS_FILE))
        embeds = []
        for slot in self.slots:
            key = slot.key or info.token
            if key not in state:
                raise AdapterError(f"adapter {info.adapter_id}: {EMBEDS_FILE} has no embedding "
                                   f"{'for token ' + repr(info.token) if not slot.key else repr(key)}")
            embeds.append(state[key].to(getattr(self.pipe, slot.text_encoder).dtype))
        return tuple(embeds)


def activate_adapters(switch: AdapterSwitch | None, adapter_ids: tuple[str, ...]) -> None:
    """Activate ``adapter_ids`` on a pipeline's switch; without a switch only the empty set is servable."""
    if switch is not None:
        switch.activate(adapter_ids)
    elif adapter_ids:
        raise AdapterError(f"adapter {adapter_ids[0]} cannot be used: this server loads no adapters "
                           "(PHILIP_ADAPTERS_DIR)")


def token_in_vocabulary(tokenizer: Any, token: str) -> bool:
    """True if the tokenizer already reads ``token`` as one word of its own (so it has a meaning)."""
    return token in tokenizer.get_added_vocab() or len(tokenizer.tokenize(token)) == 1


def load_tokenizer(model_dir: str | Path) -> Any:
    """The model folder's tokenizer alone (cheap: what the personalizer needs to vet new tokens)."""
    from transformers import CLIPTokenizer

    folder = Path(model_dir) / "tokenizer"
    if not folder.is_dir():
        raise AdapterError(f"{model_dir} has no tokenizer/ folder; is PHILIP_MODEL_DIR a diffusers model folder?")
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
