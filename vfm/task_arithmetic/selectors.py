"""Parameter selection by rule (all, attn_linear, attn_linear+bias, mlp, norm, head) per backbone family.

Rules match parameter *names*, so they work on a model, on a state dict and on a model built on the meta device.
The patterns are anchored on a dot, so a prefix (``encoder.``, ``visual.``, ``module.``) does not matter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from vfm.errors import ConfigError

# Per family: the pattern that identifies it, and one pattern per rule part. attn_linear is the paper's
# selection (Jin et al. 2025): the q, k, v and output projection weights of every attention, no biases.
_FAMILIES: dict[str, dict[str, str]] = {
    "open_clip": {  # nn.MultiheadAttention: packed in_proj_weight (3d x d), out_proj; open_clip's resblocks
        "detect": r"(?:^|\.)(?:in_proj_weight|q_proj_weight)$",
        "attn_weight": r"(?:^|\.)(?:in_proj_weight|[qkv]_proj_weight|out_proj\.weight)$",
        "attn_bias": r"(?:^|\.)(?:in_proj_bias|out_proj\.bias)$",
        "mlp": r"(?:^|\.)(?:mlp\.(?:c_fc|c_proj|fc1|fc2)|linear1|linear2)\.(?:weight|bias)$",
        "norm": r"(?:^|\.)(?:ln_\d|ln_pre|ln_post|ln_final|norm\d?)\.(?:weight|bias)$",
        "head": r"(?:^|\.)(?:proj|text_projection|head\.(?:weight|bias))$",
    },
    "hf_clip": {  # transformers CLIPVisionModel / CLIPModel
        "detect": r"(?:^|\.)self_attn\.q_proj\.weight$",
        "attn_weight": r"(?:^|\.)self_attn\.(?:q_proj|k_proj|v_proj|out_proj)\.weight$",
        "attn_bias": r"(?:^|\.)self_attn\.(?:q_proj|k_proj|v_proj|out_proj)\.bias$",
        "mlp": r"(?:^|\.)mlp\.(?:fc1|fc2)\.(?:weight|bias)$",
        "norm": r"(?:^|\.)(?:layer_norm\d|pre_layrnorm|post_layernorm|final_layer_norm)\.(?:weight|bias)$",
        "head": r"(?:^|\.)(?:visual_projection|text_projection|classifier)\.(?:weight|bias)$",
    },
    "hf_vit": {  # transformers ViTModel / ViTForImageClassification: 4.x (attention.attention.query) and 5.x layouts
        "detect": r"(?:^|\.)attention\.(?:attention\.query|q_proj)\.weight$",
        "attn_weight": r"(?:^|\.)attention\.(?:attention\.(?:query|key|value)|output\.dense|[qkvo]_proj)\.weight$",
        "attn_bias": r"(?:^|\.)attention\.(?:attention\.(?:query|key|value)|output\.dense|[qkvo]_proj)\.bias$",
        # 4.x: the layer's own output.dense is the MLP's second linear (attention.output.dense is W_o).
        "mlp": r"(?:^|\.)(?:intermediate\.dense|layer\.\d+\.output\.dense|mlp\.fc1|mlp\.fc2)\.(?:weight|bias)$",
        "norm": r"(?:^|\.)(?:layernorm_before|layernorm_after|layernorm)\.(?:weight|bias)$",
        "head": r"(?:^|\.)classifier\.(?:weight|bias)$",
    },
    "timm_vit": {  # timm VisionTransformer and relatives (blocks.N.attn.qkv / proj)
        "detect": r"(?:^|\.)attn\.qkv\.weight$",
        "attn_weight": r"(?:^|\.)attn\.(?:qkv|proj|q|k|v)\.weight$",
        "attn_bias": r"(?:^|\.)attn\.(?:(?:qkv|proj|q|k|v)\.bias|[qkv]_bias)$",
        "mlp": r"(?:^|\.)mlp\.(?:fc1|fc2|fc1_g|fc1_x|norm)\.(?:weight|bias)$",
        "norm": r"(?:^|\.)(?:norm\d?|norm_pre|fc_norm|q_norm|k_norm)\.(?:weight|bias)$",
        "head": r"(?:^|\.)head(?:\.fc)?\.(?:weight|bias)$",
    },
}
_RULE_PARTS: dict[str, tuple[str, ...]] = {
    "attn_linear": ("attn_weight",),
    "attn_linear+bias": ("attn_weight", "attn_bias"),
    "mlp": ("mlp",),
    "norm": ("norm",),
    "head": ("head",),
}
RULES: tuple[str, ...] = ("all", *_RULE_PARTS)
FAMILIES: tuple[str, ...] = tuple(_FAMILIES)


def detect_family(names: Iterable[str]) -> str | None:
    """The backbone family whose attention layout the parameter names show (None when none fits)."""
    names = list(names)
    for family, patterns in _FAMILIES.items():
        detect = re.compile(patterns["detect"])
        if any(detect.search(n) for n in names):
            return family
    return None


def select_names(names: Iterable[str], rule: str, family: str | None = None, what: str = "model") -> list[str]:
    """The names among `names` that `rule` selects (in their order); nothing selected is a ConfigError."""
    names = list(names)
    if rule not in RULES:
        raise ConfigError(f"parameter rule {rule!r} is unknown; expected one of {', '.join(RULES)}")
    if rule == "all":
        if not names:
            raise ConfigError(f"parameter rule 'all' selects nothing: the {what} has no parameters")
        return names
    family = family or detect_family(names)
    if family is None:
        raise ConfigError(f"parameter rule {rule!r}: the {what}'s parameter names match no known family "
                          f"({', '.join(FAMILIES)}), e.g. {names[0] if names else 'none'!r}")
    if family not in _FAMILIES:
        raise ConfigError(f"parameter family {family!r} is unknown; expected one of {', '.join(FAMILIES)}")
    patterns = [re.compile(_FAMILIES[family][part]) for part in _RULE_PARTS[rule]]
    selected = [n for n in names if any(p.search(n) for p in patterns)]
    if not selected:
        raise ConfigError(f"parameter rule {rule!r} selects nothing on this {what} (family {family})")
    return selected


def select_parameters(model: nn.Module, rule: str) -> list[str]:
    """Names of `model`'s parameters that `rule` selects; a rule that selects nothing is a ConfigError."""
    names = [n for n, _ in model.named_parameters()]
    return select_names(names, rule, what=type(model).__name__)


def count_parameters(model: nn.Module, names: Iterable[str] | None = None) -> int:
    """Elements in the named parameters of `model` (all of them when `names` is None)."""
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in (params if names is None else names))


def selection_table(model: nn.Module) -> list[dict[str, object]]:
    """For every rule: the tensors and elements it selects, the total, and the fraction (rules selecting nothing
    report zero with the reason)."""
    total = count_parameters(model)
    rows: list[dict[str, object]] = []
    for rule in RULES:
        try:
            names = select_parameters(model, rule)
        except ConfigError as error:
            rows.append({"rule": rule, "tensors": 0, "trainable": 0, "total": total, "fraction": 0.0, "note": str(error)})
            continue
        count = count_parameters(model, names)
        rows.append({"rule": rule, "tensors": len(names), "trainable": count, "total": total,
                     "fraction": count / total if total else 0.0, "note": ""})
    return rows


__all__ = ["FAMILIES", "RULES", "count_parameters", "detect_family", "select_names", "select_parameters",
           "selection_table"]
