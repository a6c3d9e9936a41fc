"""Zero-shot classifier weights from class names and prompt templates (CLIP's recipe)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from vfm.errors import ConfigError


@torch.no_grad()
def zeroshot_classifier(encode_text: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                        templates: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """(num_classes, dim) unit rows: each class's mean normalised embedding over templates, renormalised."""
    if not classnames:
        raise ConfigError("zero-shot head: no class names given")
    if not templates or any("{}" not in t for t in templates):
        bad = next((t for t in templates if "{}" not in t), None)
        raise ConfigError(f"zero-shot head: every template needs a '{{}}' for the class name, got {bad!r}"
                          if templates else "zero-shot head: no prompt templates given")
    prompts = [t.format(c) for c in classnames for t in templates]
    parts = [encode_text(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
    emb = F.normalize(torch.cat(parts).float(), dim=-1).view(len(classnames), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)
