"""Unit tests for vfm/config.py: `_base_` inheritance, YAML parsing, overrides, typed schema, dump."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vfm.config import (
    apply_overrides,
    dump_config,
    load_config,
    load_yaml_tree,
    merge_trees,
    parse_override,
    parse_yaml,
)
from vfm.engine.run_config import RunConfig
from vfm.errors import ConfigError


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


RUN_YAML = """
    objective: {type: classification, num_classes: 10}
    optim: {type: adamw, lr: 1e-3}
    data:
      train: {type: digits, split: train}
    train:
      max_steps: 5
"""


# ----------------------------------------------------------------------------------- inheritance
def test_base_relative_path_deep_merges_mappings_and_replaces_lists(tmp_path):
    write(
        tmp_path,
        "bases/model.yaml",
        """
        model: {type: vit, depth: 2, width: 8, extra: {a: 1, b: 2}}
        tags: [x, y, z]
        name: base
        """,
    )
    child = write(
        tmp_path,
        "configs/child.yaml",
        """
        _base_: ../bases/model.yaml
        model: {depth: 4, extra: {b: 3}}
        tags: [q]
        """,
    )
    tree = load_yaml_tree(child)
    assert tree == {
        "model": {"type": "vit", "depth": 4, "width": 8, "extra": {"a": 1, "b": 3}},
        "tags": ["q"],
        "name": "base",
    }


def test_list_of_bases_merges_in_order_then_the_file(tmp_path):
    write(tmp_path, "a.yaml", "x: 1\ny: a\nz: a\nnested: {from_a: 1, shared: a}\n")
    write(tmp_path, "b.yaml", "y: b\nz: b\nnested: {from_b: 1, shared: b}\n")
    child = write(tmp_path, "child.yaml", "_base_: [a.yaml, b.yaml]\nz: child\n")
    assert load_yaml_tree(child) == {
        "x": 1,
        "y": "b",  # the later base wins over the earlier one
        "z": "child",  # the file wins over its bases
        "nested": {"from_a": 1, "shared": "b", "from_b": 1},
    }


def test_base_chain_is_resolved_relative_to_each_file(tmp_path):
    write(tmp_path, "root.yaml", "level: root\nfrom_root: 1\n")
    write(tmp_path, "sub/mid.yaml", "_base_: ../root.yaml\nlevel: mid\n")
    leaf = write(tmp_path, "sub/deeper/leaf.yaml", "_base_: ../mid.yaml\n")
    assert load_yaml_tree(leaf) == {"level": "mid", "from_root": 1}


def test_changing_type_replaces_the_whole_node(tmp_path):
    write(tmp_path, "base.yaml", "optim: {type: adamw, lr: 0.1, betas: [0.9, 0.95], weight_decay: 0.05}\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\noptim: {type: sgd, lr: 0.5}\n")
    assert load_yaml_tree(child) == {"optim": {"type": "sgd", "lr": 0.5}}
    same = write(tmp_path, "same.yaml", "_base_: base.yaml\noptim: {type: adamw, lr: 0.5}\n")
    assert load_yaml_tree(same)["optim"] == {"type": "adamw", "lr": 0.5, "betas": [0.9, 0.95], "weight_decay": 0.05}


def test_merge_trees_does_not_mutate_its_inputs():
    base = {"a": {"b": [1, 2]}, "c": 1}
    override = {"a": {"d": 3}}
    merged = merge_trees(base, override)
    merged["a"]["b"].append(99)
    assert base == {"a": {"b": [1, 2]}, "c": 1}
    assert override == {"a": {"d": 3}}


def test_base_cycle_is_an_error(tmp_path):
    write(tmp_path, "one.yaml", "_base_: two.yaml\n")
    write(tmp_path, "two.yaml", "_base_: [one.yaml]\n")
    with pytest.raises(ConfigError, match=r"_base_ cycle: .*one\.yaml -> .*two\.yaml -> .*one\.yaml"):
        load_config(tmp_path / "one.yaml")


def test_missing_file_and_missing_base(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found$"):
        load_config(tmp_path / "nope.yaml")
    child = write(tmp_path, "child.yaml", "_base_: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"gone\.yaml: config file not found \(a _base_ of .*child\.yaml\)"):
        load_config(child)


def test_bad_base_value_and_non_mapping_file(tmp_path):
    with pytest.raises(ConfigError, match=r"_base_ must be a path or a list of paths, got 3"):
        load_config(write(tmp_path, "bad_base.yaml", "_base_: 3\n"))
    with pytest.raises(ConfigError, match=r"expected a mapping at the top level, got list"):
        load_config(write(tmp_path, "list.yaml", "- 1\n- 2\n"))


# ------------------------------------------------------------------------------------------ YAML
def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "broken.yaml", "a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:3:2: YAML syntax error:")


def test_yaml_syntax_error_in_a_base_names_the_base(tmp_path):
    write(tmp_path, "base.yaml", "ok: 1\n  bad indent: 2\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml:2:\d+: YAML syntax error"):
        load_config(child)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-3", 1e-3),
        ("2.5E+2", 250.0),
        ("-3e2", -300.0),
        ("1.0e-3", 1e-3),
        ("7", 7),
        ("'1e-3'", "1e-3"),
        ("true", True),
    ],
)
def test_scientific_notation_parses_as_float(text, expected):
    value = parse_yaml(f"v: {text}", "test")["v"]
    assert value == expected
    assert type(value) is type(expected)


def test_yaml_loader_is_safe():
    with pytest.raises(ConfigError, match="YAML"):
        parse_yaml("v: !!python/object/apply:os.system ['true']", "evil.yaml")


# -------------------------------------------------------------------------------- interpolation
def test_interpolation_across_bases_resolves_after_overrides(tmp_path):
    write(tmp_path, "base.yaml", "name: base\nwork_dir: runs/${name}\nsize: 8\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\nname: child\nmodel: {width: '${size}'}\n")
    cfg = load_config(child)
    assert cfg.work_dir == "runs/child"
    assert cfg.model.width == 8
    cfg = load_config(child, ["name=cli", "size=16"])
    assert cfg.work_dir == "runs/cli"
    assert cfg.model.width == 16


def test_broken_interpolation_is_a_config_error(tmp_path):
    path = write(tmp_path, "c.yaml", "a: ${does_not_exist}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: interpolation failed: .*'does_not_exist' not found"):
        load_config(path)


# ------------------------------------------------------------------------------------- overrides
@pytest.fixture
def cfg():
    return OmegaConf.create(
        {"model": {"type": "vit", "depth": 2}, "tags": ["a", "b"], "items": [{"b": 1}, {"b": 2}], "lr": 0.1}
    )


def test_override_scalar_and_typed_values(cfg):
    apply_overrides(cfg, ["model.depth=12", "lr=3e-4", "model.type=resnet"])
    assert cfg.model.depth == 12 and isinstance(cfg.model.depth, int)
    assert cfg.lr == pytest.approx(3e-4) and isinstance(cfg.lr, float)
    assert cfg.model.type == "resnet"


def test_override_replaces_a_list(cfg):
    apply_overrides(cfg, ["tags=[1,2,3]"])
    assert OmegaConf.to_container(cfg.tags) == [1, 2, 3]


def test_override_addresses_list_items_by_index(cfg):
    apply_overrides(cfg, ["items.1.b=20", "tags.0=z"])
    assert OmegaConf.to_container(cfg["items"]) == [{"b": 1}, {"b": 20}]
    assert OmegaConf.to_container(cfg.tags) == ["z", "b"]


def test_override_with_mapping_value(cfg):
    apply_overrides(cfg, ["model={type: resnet, layers: [1, 2]}"])
    assert OmegaConf.to_container(cfg.model) == {"type": "resnet", "layers": [1, 2]}


def test_overrides_apply_in_order(cfg):
    apply_overrides(cfg, ["lr=1", "lr=2"])
    assert cfg.lr == 2


def test_new_key_needs_plus(cfg):
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, ["model.new=1"])
    assert "unknown key 'model.new'" in str(info.value)
    assert str(info.value).endswith("to add a new key write +model.new=1")
    apply_overrides(cfg, ["+model.new=1", "+fresh.nested.key=x"])
    assert cfg.model.new == 1
    assert cfg.fresh.nested.key == "x"


def test_plus_on_an_existing_key_is_an_error(cfg):
    with pytest.raises(
        ConfigError, match=r"^override '\+model.depth=3': key 'model.depth' already exists; drop the leading '\+'$"
    ):
        apply_overrides(cfg, ["+model.depth=3"])


def test_unknown_key_suggests_close_matches(cfg):
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, ["model.deph=3"])
    assert "unknown key 'model.deph' (did you mean 'model.depth'" in str(info.value)
    with pytest.raises(ConfigError, match=r"unknown key 'tags\.5'"):
        apply_overrides(cfg, ["tags.5=x"])  # past the end of the list


@pytest.mark.parametrize("text", ["model", "=3", "a b=3", "model..depth=3", ".model=3", "model.depth"])
def test_malformed_override(cfg, text):
    with pytest.raises(ConfigError, match=r"^malformed override .*expected key\.path=value"):
        apply_overrides(cfg, [text])


def test_override_value_with_yaml_syntax_error(cfg):
    with pytest.raises(ConfigError, match=r"override 'tags=\[1'.*YAML syntax error"):
        apply_overrides(cfg, ["tags=[1"])


def test_parse_override():
    assert parse_override("a.b=1") == ("a.b", 1, False)
    assert parse_override("+a.new=[1, 2]") == ("a.new", [1, 2], True)
    assert parse_override("a=x=y") == ("a", "x=y", False)
    assert parse_override("a=") == ("a", "", False)
    assert parse_override("a=null") == ("a", None, False)


def test_mandatory_value_can_be_set_by_override(tmp_path):
    path = write(tmp_path, "m.yaml", "a: ???\nb: 1\n")
    with pytest.raises(ConfigError, match=r"mandatory keys without a value: a \(set them or override them\)"):
        load_config(path)
    assert load_config(path, ["a=2"]).a == 2


# --------------------------------------------------------------------------------- typed schema
def test_schema_fills_defaults_and_types(tmp_path):
    cfg = load_config(write(tmp_path, "run.yaml", RUN_YAML), ["train.max_steps=7", "optim.lr=0.5"], schema=RunConfig)
    assert cfg.train.max_steps == 7
    assert cfg.optim.lr == 0.5
    assert cfg.data.batch_size == RunConfig().data.batch_size  # a schema default
    assert cfg.train.grad_accum_steps == 1 and cfg.ema.enabled is False


def test_schema_wrong_type_in_file_and_override(tmp_path):
    bad = write(tmp_path, "bad.yaml", RUN_YAML + "    seed: many\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: seed: Value 'many' of type 'str' could not be converted to Integer"
    ):
        load_config(bad, schema=RunConfig)
    good = write(tmp_path, "run.yaml", RUN_YAML)
    with pytest.raises(
        ConfigError, match=r"^override 'train.max_steps=abc': train\.max_steps: .*could not be converted to Integer"
    ):
        load_config(good, ["train.max_steps=abc"], schema=RunConfig)
    with pytest.raises(ConfigError, match=r"^override 'deterministic=maybe': deterministic: .*not a valid bool"):
        load_config(good, ["deterministic=maybe"], schema=RunConfig)


def test_schema_unknown_key_in_file_is_an_error_with_close_matches(tmp_path):
    top = write(tmp_path, "top.yaml", RUN_YAML + "    trian: {max_steps: 3}\n")
    with pytest.raises(ConfigError) as info:
        load_config(top, schema=RunConfig)
    assert "unknown key 'trian' (did you mean 'train'?)" in str(info.value)
    assert "allowed here: objective, data, optim" in str(info.value)
    nested = write(tmp_path, "nested.yaml", RUN_YAML.replace("train: {type: digits, split: train}", "batch_sise: 3"))
    with pytest.raises(ConfigError, match=r"unknown key 'data\.batch_sise' \(did you mean 'batch_size'"):
        load_config(nested, schema=RunConfig)


def test_schema_mandatory_key_missing(tmp_path):
    path = write(tmp_path, "run.yaml", RUN_YAML.replace("objective: {type: classification, num_classes: 10}", ""))
    with pytest.raises(ConfigError, match=r"mandatory keys without a value: objective"):
        load_config(path, schema=RunConfig)
    cfg = load_config(path, ["objective={type: classification, num_classes: 3}"], schema=RunConfig)
    assert cfg.objective.num_classes == 3


# ------------------------------------------------------------------------------------------ dump
def test_dump_config_round_trip(tmp_path):
    write(tmp_path, "base.yaml", RUN_YAML + "    work_dir: runs/${optim.type}\n")
    child = write(tmp_path, "child.yaml", "_base_: base.yaml\noptim: {lr: 2e-4, betas: [0.9, 0.95]}\n")
    cfg = load_config(child, ["+optim.eps=1e-6", "train.max_steps=11"], schema=RunConfig)
    out = tmp_path / "out" / "config.yaml"
    dump_config(cfg, out)
    assert not list(out.parent.glob("*.tmp"))
    assert "work_dir: runs/adamw" in out.read_text()  # resolved, not `${optim.type}`
    again = load_config(out, schema=RunConfig)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert again.work_dir == "runs/adamw"  # written resolved
    assert again.optim.lr == pytest.approx(2e-4) and again.optim.eps == pytest.approx(1e-6)
    assert again.train.max_steps == 11


def test_plus_cannot_extend_typed_sections_or_empty_nodes(tmp_path):
    """`+` adds keys to free-form nodes only: schema sections are closed, null/??? nodes are set whole."""
    path = tmp_path / "run.yaml"
    path.write_text("objective: {type: classification, num_classes: 3}\noptim: {type: adamw, lr: 1}\ndata: {train: {type: digits}}\n")
    with pytest.raises(ConfigError, match=r"train has a fixed set of keys; 'max_stepz' is not one of them \(did you mean 'max_steps'"):
        load_config(path, ["+train.max_stepz=3"], RunConfig)
    with pytest.raises(ConfigError, match="the top level has a fixed set of keys"):
        load_config(path, ["+extra.key=1"], RunConfig)
    with pytest.raises(ConfigError, match="'data.val' has no value to add keys to; set it whole instead"):
        load_config(path, ["+data.val.type=digits"], RunConfig)
    cfg = load_config(path, ["+objective.extra.depth=2", "data.val={type: digits, split: val}"], RunConfig)
    assert cfg.objective.extra.depth == 2 and cfg.data.val.split == "val"


def test_aliases_rewrite_an_overrides_first_key(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("_aliases_: {task: objective.task, ft: objective.finetune}\n"
                      "objective: {type: x, task: identity, finetune: {mode: standard}}\n")
    cfg = load_config(config, ["task=rotated", "ft.mode=attn_only"])
    assert cfg.objective.task == "rotated" and cfg.objective.finetune.mode == "attn_only" and "_aliases_" not in cfg
    child = tmp_path / "child.yaml"
    child.write_text("_base_: c.yaml\n")  # aliases are inherited from a base file
    assert load_config(child, ["task=flipped"]).objective.task == "flipped"
    with pytest.raises(ConfigError, match="unknown key 'objective.tsk'"):
        load_config(config, ["objective.tsk=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("_aliases_: {task: objective.nothing}\nobjective: {type: x}\n")
    with pytest.raises(ConfigError, match="_aliases_.task: target key 'objective.nothing' does not exist"):
        load_config(bad)
