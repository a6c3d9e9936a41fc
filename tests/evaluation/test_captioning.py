"""Caption scoring: a caption names its class through synonyms, as whole words; collapsed captioners are visible."""

import json

import pytest
import torch
from torch import nn

from vfm.errors import ConfigError
from vfm.evaluation.captioning import CaptionClassMatch, names_word

SYNONYMS = {"red": ["red", "crimson"], "circle": ["circle", "disc", "round dot", "circles", "discs", "round dots"]}


def test_names_word_matches_whole_words_and_phrases():
    assert names_word("two crimson discs on the left", "red", SYNONYMS)
    assert names_word("a round dot, small", "circle", SYNONYMS)
    assert not names_word("a reddish box", "red", SYNONYMS)  # "red" inside a word does not count
    assert not names_word("a round box", "circle", SYNONYMS)
    assert names_word("A RED box", "red", {})  # the word itself, without synonyms, case-insensitive


class Captioner(nn.Module):
    def __init__(self, captions):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.captions = captions

    def generate(self, images, max_new_tokens=20):
        assert max_new_tokens == 7
        return self.captions[: len(images)]


def test_caption_metrics_on_known_captions(tmp_path):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": ["red circle", "blue square"], "synonyms": SYNONYMS}))
    evaluator = CaptionClassMatch(str(classes), max_new_tokens=7)
    evaluator.begin(Captioner(["a crimson disc", "a blue box", "a crimson disc", "x"]), None)
    # sample 0: red circle, both named; 1: blue square, only "blue" (box is no synonym here); 2: labelled blue
    # square but captioned red circle; 3: no label, not scored
    evaluator.process({"image": torch.zeros(4, 3, 2, 2), "label": torch.tensor([0, 1, 1, -1])}, None)
    metrics = evaluator.end()
    assert metrics["class_match"] == pytest.approx(1 / 3)
    assert metrics["word_match"] == pytest.approx(3 / 6)
    assert metrics["distinct"] == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="has no generate"):
        CaptionClassMatch(str(classes)).begin(nn.Linear(1, 1), None)
