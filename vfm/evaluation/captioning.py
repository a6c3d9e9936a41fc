"""Captions generated for held-out images, scored by whether they name the image's class.

The model's `generate(images, max_new_tokens)` captions each image greedily; a caption *names* a class word
(e.g. "red" of "red circle") when it contains the word or one of its synonyms as whole words (the classes file's
`synonyms`: "crimson" for red, "discs" for circle). Metrics: `class_match`, the fraction of captions naming every
word of their class (chance: 1 / number of classes for a caption that ignores the image); `word_match`, the
fraction of class words named; `distinct`, the fraction of distinct captions (a collapsed captioner scores ~0).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfm.dist.collectives import all_gather_objects
from vfm.errors import ConfigError
from vfm.evaluation.base import Evaluator
from vfm.evaluation.features import model_device
from vfm.registry import EVALUATORS


def _check(kwargs: dict[str, Any], path: str) -> None:
    if (kwargs.get("max_new_tokens") or 1) < 1:
        raise ConfigError(f"{path}.max_new_tokens: got {kwargs['max_new_tokens']}, expected >= 1")
    if not isinstance(kwargs.get("classes_file"), str):
        raise ConfigError(f"{path}.classes_file: expected a JSON file with 'classes' and optionally 'synonyms'")


def names_word(caption: str, word: str, synonyms: dict[str, list[str]]) -> bool:
    """Whether `caption` contains `word` or one of its synonyms as whole words (case-insensitive)."""
    text = " ".join(re.findall(r"[a-z0-9]+", caption.lower()))
    for candidate in [word, *synonyms.get(word, [])]:
        phrase = " ".join(re.findall(r"[a-z0-9]+", candidate.lower()))
        if phrase and re.search(rf"(^| ){re.escape(phrase)}( |$)", text):
            return True
    return False


@EVALUATORS.register("captioning", check=_check)
class CaptionClassMatch(Evaluator):
    """Greedy captions through `model.generate`, scored against `batch[label_key]`'s class name."""

    def __init__(self, classes_file: str, max_new_tokens: int = 20, label_key: str = "label") -> None:
        try:
            data = json.loads(Path(classes_file).read_text())
            self.classes = [str(c) for c in data["classes"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"captioning.classes_file {classes_file}: expected JSON with a 'classes' list ({error})") from error
        self.synonyms = {str(k): [str(s) for s in v] for k, v in (data.get("synonyms") or {}).items()}
        self.max_new_tokens, self.label_key = max_new_tokens, label_key
        self.model: Any = None
        self.reset()

    @classmethod
    def metric_names(cls, **kwargs: Any) -> list[str]:
        """class_match, word_match, distinct."""
        return ["class_match", "word_match", "distinct"]

    def begin(self, model: nn.Module, loader: Any) -> None:
        if not callable(getattr(model, "generate", None)):
            raise ConfigError(f"captioning evaluator: {type(model).__name__} has no generate method")
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.captions: list[str] = []
        self.stats = torch.zeros(4, dtype=torch.float64)  # class matches, word matches, words, captions

    def process(self, batch: Any, outputs: Any) -> None:
        images = batch["image"].to(model_device(self.model))
        captions = self.model.generate(images, max_new_tokens=self.max_new_tokens)
        for caption, label in zip(captions, torch.as_tensor(batch[self.label_key]).tolist(), strict=True):
            if label < 0:
                continue
            if label >= len(self.classes):
                raise ConfigError(f"captioning: label {label} but the classes file lists {len(self.classes)} classes")
            words = self.classes[label].split()
            named = [names_word(caption, w, self.synonyms) for w in words]
            self.stats += torch.tensor([float(all(named)), float(sum(named)), float(len(words)), 1.0], dtype=torch.float64)
            self.captions.append(caption)

    def compute(self) -> dict[str, float]:
        stats = self.reduce_sum(self.stats.clone())
        if stats[3].item() == 0:
            raise ConfigError(f"captioning evaluator: no sample with a class label (batch[{self.label_key!r}] >= 0)")
        captions = [c for part in all_gather_objects(self.captions) for c in part]
        return {"class_match": stats[0].item() / stats[3].item(), "word_match": stats[1].item() / stats[2].item(),
                "distinct": len(set(captions)) / len(captions)}
