"""Zero-shot accuracy, retrieval recall and the linear probe on hand-made embeddings with known answers."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vfm.errors import ConfigError
from vfm.evaluation.retrieval import Retrieval, recall_at_k
from vfm.evaluation.zeroshot import ZeroShotAccuracy
from vfm.evaluation.zeroshot_head import zeroshot_classifier
from vfm.registry import EVALUATORS

AXES = {"red": 0, "green": 1, "blue": 2}


class AxisModel(nn.Module):
    """Texts embed on the axis of the colour they name; images are given as their features."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode_text(self, texts):
        rows = torch.zeros(len(texts), 3)
        for i, text in enumerate(texts):
            for name, axis in AXES.items():
                if name in text:
                    rows[i, axis] = 1.0
            rows[i] += 0.01 * len(text)  # templates differ a little
        return F.normalize(rows, dim=1)

    def encode_image(self, images):
        return F.normalize(images.flatten(1), dim=1)


def test_the_zero_shot_head_averages_templates_per_class():
    head = zeroshot_classifier(AxisModel().encode_text, ["red", "blue"], ["a {}", "the {} one"])
    assert head.shape == (2, 3) and torch.allclose(head.norm(dim=1), torch.ones(2))
    assert head[0].argmax() == 0 and head[1].argmax() == 2
    with pytest.raises(ConfigError, match="every template needs a '\\{\\}'"):
        zeroshot_classifier(AxisModel().encode_text, ["red"], ["no slot"])


def test_zero_shot_accuracy_on_a_known_embedding_set(tmp_path):
    # 4 images: 3 lie on the axis of their class, the 4th (class green) lies on red's axis.
    features = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.9, 0.1, 0]])
    labels = torch.tensor([0, 1, 2, 1])
    (tmp_path / "classes.json").write_text(json.dumps({"classes": list(AXES), "templates": ["a {} thing"]}))
    evaluator = EVALUATORS.build({"type": "zeroshot", "classes_file": str(tmp_path / "classes.json"), "topk": [1, 2]})
    evaluator.begin(AxisModel(), None)
    evaluator.process({"label": labels[:2]}, {"image_features": features[:2]})
    evaluator.process({"label": labels[2:]}, {"image_features": features[2:]})
    assert evaluator.end() == {"accuracy": 0.75, "top2_accuracy": 1.0}
    assert ZeroShotAccuracy.metric_names([1, 2]) == ["accuracy", "top2_accuracy"]


def test_zero_shot_needs_a_text_tower():
    evaluator = ZeroShotAccuracy(classnames=["a", "b"])
    with pytest.raises(ConfigError, match="has no encode_text"):
        evaluator.begin(nn.Linear(2, 2), None)


def test_recall_on_a_known_similarity_matrix():
    # Row i's true column is i. Ranks of the true column per row: 0, 1, 2, 0.
    similarity = torch.tensor([[0.9, 0.1, 0.0, 0.0],
                               [0.8, 0.5, 0.0, 0.0],
                               [0.7, 0.6, 0.3, 0.1],
                               [0.0, 0.0, 0.0, 0.2]])
    assert recall_at_k(similarity, (1, 2, 3)) == {1: 0.5, 2: 0.75, 3: 1.0}
    retrieval = Retrieval(ks=[1, 2])
    images = torch.eye(4)
    retrieval.process({}, {"image_features": images, "text_features": similarity.T})  # sim = images @ texts.T
    metrics = retrieval.end()
    assert metrics["i2t_r1"] == 0.5 and metrics["i2t_r2"] == 0.75
    # text->image reads the columns: ranks of the true image per column are 0, 1, 0, 0
    assert metrics["t2i_r1"] == 0.75 and metrics["t2i_r2"] == 1.0
    assert metrics["mean_recall"] == pytest.approx(sum(v for k, v in metrics.items() if k != "mean_recall") / 4)


def test_linear_probe_separates_separable_classes(tmp_path):
    import numpy as np
    from PIL import Image

    from vfm.data.shard_writer import write_pair_shards

    records = []
    for i in range(60):
        label = i % 3
        pixels = np.zeros((4, 4, 3), dtype=np.uint8)
        pixels[..., label] = 120 + (i * 7) % 100  # the class is which channel is lit
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        records.append({"key": f"k{i}", "image": f"{i}.png", "caption": "x", "label": label})
    write_pair_shards(records[:45], tmp_path, str(tmp_path / "train-%06d.tar"))
    node = {"type": "image_text_shards", "urls": str(tmp_path / "train-*.tar"), "shuffle_buffer": 0}
    probe = EVALUATORS.build({"type": "linear_probe", "train": node, "batch_size": 10})
    probe.begin(AxisModelImages(), None)
    val = [(torch.tensor(np.asarray(Image.open(tmp_path / f"{i}.png")), dtype=torch.float32).permute(2, 0, 1) / 255,
            i % 3) for i in range(45, 60)]
    probe.process({"image": torch.stack([v[0] for v in val]), "label": torch.tensor([v[1] for v in val])}, {})
    assert probe.end() == {"accuracy": 1.0, "train_accuracy": 1.0}


class AxisModelImages(AxisModel):
    def encode_image(self, images):
        return images.mean(dim=(2, 3))  # per-channel brightness


def test_retrieval_needs_both_features():
    with pytest.raises(ConfigError, match="gives no image_features and text_features"):
        Retrieval().process({}, {"logits": torch.zeros(2, 2)})


class TwoPathModel(AxisModel):
    """encode_image gives the right colour axis, encode_image_wrong the next one: the evaluators must use the one named."""

    def encode_image_wrong(self, images):
        return self.encode_image(images).roll(1, dims=1)


def test_image_method_picks_the_image_path():
    images = torch.eye(3)
    batch = {"image": images, "label": torch.tensor([0, 1, 2])}
    model = TwoPathModel()
    for method, expected in ((None, 1.0), ("encode_image_wrong", 0.0)):
        zeroshot = ZeroShotAccuracy(classnames=list(AXES), templates=["a {}"], topk=[1], image_method=method)
        zeroshot.begin(model, None)
        zeroshot.process(batch, {"image_features": model.encode_image(images)})
        assert zeroshot.end()["accuracy"] == expected
        retrieval = Retrieval(ks=[1], image_method=method)
        retrieval.begin(model, None)
        retrieval.process(batch, {"image_features": model.encode_image(images), "text_features": model.encode_image(images)})
        assert retrieval.end()["i2t_r1"] == expected
    zeroshot = ZeroShotAccuracy(classnames=list(AXES), image_method="encode_image_c")
    zeroshot.begin(model, None)
    with pytest.raises(ConfigError, match="has no method 'encode_image_c'"):
        zeroshot.process(batch, {})
