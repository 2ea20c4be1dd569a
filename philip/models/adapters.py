"""Personalization adapters on disk, and switching them on a live pipeline.

An adapter is a folder ``{adapters_dir}/{adapter_id}/`` in the formats diffusers reads itself:
``learned_embeds.safetensors`` (``{token: embedding}``, what ``load_textual_inversion`` takes) for
every method, plus ``pytorch_lora_weights.safetensors`` (what ``load_lora_weights`` takes) for LoRA,
and ``adapter.json`` (token, class word, method). The same folder works in a notebook:
``pipe.load_textual_inversion(dir); pipe.load_lora_weights(dir)``.

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

from philip.rpc.auth import owned_by_caller
from philip.rpc.errors import NotFound

if TYPE_CHECKING:  # torch stays out of light importers (request validation, servicers)
    import torch

LORA_FILE = "pytorch_lora_weights.safetensors"
EMBEDS_FILE = "learned_embeds.safetensors"
META_FILE = "adapter.json"
METHODS = ("lora", "textual_inversion")
ADAPTER_ID = re.compile(r"^ad_[0-9a-f]{8,32}$")


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

    def to_json(self) -> dict[str, str]:
        return {"adapter_id": self.adapter_id, "token": self.token, "class_word": self.class_word,
                "method": self.method, "tenant": self.tenant}


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


def save_adapter(folder: Path, info: AdapterInfo, embedding: torch.Tensor,
                 lora_state: dict[str, torch.Tensor] | None) -> None:
    """Write the adapter files into ``folder`` (created); the metadata file is written last."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({info.token: embedding.detach().reshape(1, -1).float().contiguous()}, str(folder / EMBEDS_FILE))
    if lora_state is not None:
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=lora_state, weight_name=LORA_FILE,
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
    info = AdapterInfo(adapter_id, data["token"], data["class_word"], data["method"], data.get("tenant", ""))
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
        self._loaded: OrderedDict[str, AdapterInfo] = OrderedDict()  # LoRA + embeddings read, LRU order
        self._embeds: dict[str, Any] = {}  # adapter id -> embedding tensor
        self._tokens: dict[str, str] = {}  # token -> adapter id, tokens now in the tokenizer
        self._lora_on = False

    def activate(self, adapter_ids: tuple[str, ...]) -> None:
        """Make exactly ``adapter_ids`` active (an empty tuple restores the base model)."""
        infos = [self._load(adapter_id) for adapter_id in adapter_ids]
        wanted = {info.token: info.adapter_id for info in infos}
        stale = [token for token, owner in self._tokens.items() if wanted.get(token) != owner]
        if stale:
            self.pipe.unload_textual_inversion(stale)
            for token in stale:
                del self._tokens[token]
        for info in infos:
            if info.token not in self._tokens:
                self.pipe.load_textual_inversion({info.token: self._embeds[info.adapter_id]}, token=info.token)
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
            self.pipe.unload_textual_inversion([info.token])
            del self._tokens[info.token]
        if info.method == "lora":
            self.pipe.delete_adapters([adapter_id])

    @property
    def loaded(self) -> tuple[str, ...]:
        return tuple(self._loaded)

    def _load(self, adapter_id: str) -> AdapterInfo:
        if adapter_id in self._loaded:
            if not adapter_exists(self.adapters_dir, adapter_id):  # deleted since it was loaded
                self.forget(adapter_id)
                raise AdapterError(f"adapter {adapter_id} was deleted")
            self._loaded.move_to_end(adapter_id)
            return self._loaded[adapter_id]
        info = read_adapter(self.adapters_dir, adapter_id)
        from safetensors.torch import load_file

        folder = adapter_dir(self.adapters_dir, adapter_id)
        state = load_file(str(folder / EMBEDS_FILE))
        if info.token not in state:
            raise AdapterError(f"adapter {adapter_id}: {EMBEDS_FILE} has no embedding for token {info.token!r}")
        if info.method == "lora":
            self.pipe.load_lora_weights(read_lora_file(folder), adapter_name=adapter_id)
            self._lora_on = True  # loading activates it; activate() sets the real set right after
        self._embeds[adapter_id] = state[info.token].to(self.pipe.text_encoder.dtype)
        self._loaded[adapter_id] = info
        while len(self._loaded) > self.capacity:
            oldest = next(iter(self._loaded))
            self.forget(oldest)
        return info


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
