"""What every `philip` command shares: the console (stderr), one JSON object or a table last, torch threads."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

console = Console(stderr=True)


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Print the result: one JSON object on stdout (machine-readable), or key: value lines."""
    if as_json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            console.print(f"[bold]{key}[/bold]: {value}")


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
