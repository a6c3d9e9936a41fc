"""Unit tests for vfm/registry.py: registration, building, signature validation, plug-ins.

Every test uses a private `Registry("test_...")` so the global registries stay untouched. This file
deliberately has no `from __future__ import annotations`: builders annotated with a module-level
registry must keep resolvable hints for the nested-node checks.
"""

import importlib.metadata
import sys
import textwrap
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import pytest

import vfm.registry as registry_module
from vfm.errors import ConfigError, RegistryError
from vfm.registry import (
    OPTIMIZERS,
    SCHEDULERS,
    Registry,
    close_matches,
    import_custom_modules,
    load_entry_point_plugins,
)

PARTS = Registry("test_parts")


@PARTS.register("leaf")
def leaf(
    size: int,
    mode: Literal["a", "b"] = "a",
    scale: float = 1.0,
    flag: bool = False,
    label: str = "x",
    limit: int | None = None,
    items: list[int] = (),
) -> dict[str, Any]:
    """Echo the arguments, so tests can see what the builder received."""
    return {"size": size, "mode": mode, "scale": scale, "flag": flag, "label": label, "limit": limit, "items": items}


@PARTS.register("tree")
def tree(
    child: Annotated[dict, PARTS],
    children: list[Annotated[dict, PARTS]] = (),
    maybe: Optional[Annotated[dict, PARTS]] = None,  # noqa: UP045 - typing.Union, unlike `int | None` above
) -> dict[str, Any]:
    """A node holding nested PARTS nodes (built by the caller, as real builders do)."""
    return {"child": child, "children": list(children), "maybe": maybe}


# ------------------------------------------------------------------------------------ registration
def test_register_uses_name_or_function_name_and_list_is_sorted():
    reg = Registry("test_names")

    @reg.register()
    def zeta() -> int:
        return 1

    @reg.register("alpha")
    def some_function() -> int:
        return 2

    assert reg.list() == ["alpha", "zeta"]
    assert "zeta" in reg and "some_function" not in reg
    assert reg.get("alpha") is some_function
    assert reg.build({"type": "zeta"}) == 1


def test_duplicate_registration_is_an_error_unless_forced():
    reg = Registry("test_dupes")

    @reg.register("thing")
    def first() -> str:
        return "first"

    reg.register("thing")(first)  # the same builder again is harmless (e.g. a module imported twice)

    def second() -> str:
        return "second"

    with pytest.raises(RegistryError, match=r"test_dupes: 'thing' is already registered by .*first; pass force=True"):
        reg.register("thing")(second)
    assert reg.build({"type": "thing"}) == "first"

    reg.register("thing", force=True)(second)
    assert reg.build({"type": "thing"}) == "second"


def test_build_passes_node_keys_and_extra_arguments():
    reg = Registry("test_build")

    @reg.register("scaled")
    class Scaled:
        def __init__(self, model: Any, factor: float = 2.0) -> None:
            self.model, self.factor = model, factor

    sentinel = object()
    built = reg.build({"type": "scaled", "factor": 3}, "optim", model=sentinel)
    assert isinstance(built, Scaled)
    assert built.model is sentinel and built.factor == 3
    # `model` is required; it is only accepted because the caller provides it.
    with pytest.raises(RegistryError, match=r"^optim: missing required argument 'model' for test_build type 'scaled'$"):
        reg.build({"type": "scaled"}, "optim")
    reg.validate({"type": "scaled"}, "optim", provided=["model"])  # no error


def test_build_accepts_omegaconf_nodes_with_interpolation():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"width": 7, "node": {"type": "leaf", "size": "${width}"}})
    assert PARTS.build(cfg.node)["size"] == 7


def test_unknown_type_names_registry_path_and_close_matches():
    with pytest.raises(RegistryError) as info:
        PARTS.build({"type": "leef", "size": 1}, "model.backbone")
    message = str(info.value)
    assert message.startswith("model.backbone.type: unknown test_parts type 'leef'")
    assert "(did you mean 'leaf'?)" in message
    assert message.endswith("registered: leaf, tree")


def test_unknown_type_without_close_match_lists_registered_names():
    with pytest.raises(RegistryError) as info:
        PARTS.get("zzzzzz")
    assert "did you mean" not in str(info.value)
    assert "registered: leaf, tree" in str(info.value)


def test_close_matches_formatting():
    assert close_matches("adamw", ["adam", "adamw", "sgd"]) == " (did you mean 'adamw', 'adam'?)"
    assert close_matches("qqq", ["adam", "sgd"]) == ""


def test_node_must_be_a_mapping_with_type():
    with pytest.raises(ConfigError, match=r"^root: missing 'type' key; registered test_parts: leaf, tree$"):
        PARTS.validate({"size": 1}, "root")
    with pytest.raises(
        ConfigError, match=r"^root: expected a mapping with a 'type' key for a test_parts node, got \[1\]$"
    ):
        PARTS.validate([1], "root")


# ------------------------------------------------------------------------------ signature checks
def test_unknown_argument_names_key_path_and_close_matches():
    with pytest.raises(RegistryError) as info:
        PARTS.build({"type": "leaf", "sise": 3}, "backbone")
    assert str(info.value) == (
        "backbone.sise: unknown argument 'sise' for test_parts type 'leaf' (did you mean 'size'?);"
        " accepted: size, mode, scale, flag, label, limit, items"
    )


def test_missing_required_argument():
    with pytest.raises(RegistryError, match=r"^backbone: missing required argument 'size' for test_parts type 'leaf'$"):
        PARTS.build({"type": "leaf"}, "backbone")


def test_builder_with_var_kwargs_accepts_any_key():
    reg = Registry("test_kwargs")

    @reg.register("open")
    def open_builder(depth: int, **kwargs: Any) -> dict[str, Any]:
        return {"depth": depth, **kwargs}

    assert reg.build({"type": "open", "depth": 2, "anything": [1]}) == {"depth": 2, "anything": [1]}
    with pytest.raises(ConfigError, match=r"expected int, got str"):
        reg.build({"type": "open", "depth": "2"})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("size", "3", "root.size: expected int, got str '3'"),
        ("size", True, "root.size: expected int, got bool True"),  # bool is an int subclass, not an int here
        ("size", 3.0, "root.size: expected int, got float 3.0"),
        ("scale", "x", "root.scale: expected float, got str 'x'"),
        ("flag", 1, "root.flag: expected bool, got int 1"),
        ("label", 3, "root.label: expected str, got int 3"),
        ("mode", "c", "root.mode: expected one of 'a', 'b', got str 'c'"),
        ("limit", "x", "root.limit: expected int or null, got str 'x'"),
        ("items", 5, "root.items: expected list[int], got int 5"),
        ("items", [1, "2"], "root.items.1: expected int, got str '2'"),
    ],
)
def test_wrong_value_type_is_an_error_naming_the_key(key, value, expected):
    with pytest.raises(ConfigError) as info:
        PARTS.build({"type": "leaf", "size": 1, key: value}, "root")
    assert str(info.value) == expected


def test_values_that_fit_their_hints_are_passed_through():
    built = PARTS.build(
        {"type": "leaf", "size": 4, "mode": "b", "scale": 2, "flag": True, "label": "y", "limit": None, "items": [1, 2]}
    )
    # an int is a valid float; None fits Optional[int]; the builder sees the values unchanged
    assert built == {"size": 4, "mode": "b", "scale": 2, "flag": True, "label": "y", "limit": None, "items": [1, 2]}
    assert PARTS.build({"type": "leaf", "size": 4, "limit": 9})["limit"] == 9


# --------------------------------------------------------------------------------- nested nodes
def test_nested_node_is_validated_recursively():
    with pytest.raises(ConfigError, match=r"^root\.child\.size: expected int, got str 'a'$"):
        PARTS.build({"type": "tree", "child": {"type": "leaf", "size": "a"}}, "root")
    with pytest.raises(RegistryError, match=r"^root\.child\.type: unknown test_parts type 'lef'"):
        PARTS.build({"type": "tree", "child": {"type": "lef"}}, "root")
    with pytest.raises(ConfigError, match=r"^root\.child: missing 'type' key"):
        PARTS.build({"type": "tree", "child": {"size": 1}}, "root")


def test_nested_nodes_in_a_list_are_validated_with_their_index():
    node = {
        "type": "tree",
        "child": {"type": "leaf", "size": 1},
        "children": [{"type": "leaf", "size": 1}, {"type": "leaf"}],
    }
    with pytest.raises(RegistryError, match=r"^root\.children\.1: missing required argument 'size'"):
        PARTS.build(node, "root")


def test_optional_nested_node_allows_null_and_validates_a_value():
    built = PARTS.build({"type": "tree", "child": {"type": "leaf", "size": 1}, "maybe": None}, "root")
    assert built["maybe"] is None
    with pytest.raises(RegistryError, match=r"^root\.maybe\.siz: unknown argument 'siz'.*did you mean 'size'"):
        PARTS.build({"type": "tree", "child": {"type": "leaf", "size": 1}, "maybe": {"type": "leaf", "siz": 1}}, "root")


def test_deeply_nested_error_path():
    node = {
        "type": "tree",
        "child": {
            "type": "tree",
            "child": {"type": "leaf", "size": 1},
            "children": [{"type": "leaf", "size": 1, "flag": "yes"}],
        },
    }
    with pytest.raises(ConfigError, match=r"^root\.child\.children\.0\.flag: expected bool, got str 'yes'$"):
        PARTS.validate(node, "root")


# ---------------------------------------------------------------------------------- check hooks
def test_check_hook_runs_before_the_builder():
    reg = Registry("test_checks")
    calls: list[tuple[dict[str, Any], str]] = []

    def check(kwargs: dict[str, Any], path: str) -> None:
        calls.append((dict(kwargs), path))
        if kwargs.get("name") != "ok":
            raise ConfigError(f"{path}.name: {kwargs.get('name')!r} is not ok")

    built: list[dict[str, Any]] = []

    @reg.register("checked", check=check)
    def checked(name: str, **kwargs: Any) -> str:
        built.append({"name": name, **kwargs})
        return name

    assert reg.build({"type": "checked", "name": "ok", "extra": 1}, "node") == "ok"
    assert calls == [({"name": "ok", "extra": 1}, "node")]
    with pytest.raises(ConfigError, match=r"^node\.name: 'bad' is not ok$"):
        reg.build({"type": "checked", "name": "bad"}, "node")
    assert built == [{"name": "ok", "extra": 1}]  # the failing node never reached the builder


# ------------------------------------------------------------------------------------- plug-ins
@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path for throwaway plug-in modules; they are unloaded afterwards."""
    sink = types.ModuleType("vfmunit_sink")
    sink.REGISTRY = Registry("test_plugins")
    monkeypatch.setitem(sys.modules, "vfmunit_sink", sink)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("vfmunit_"):
            del sys.modules[name]


def _write_module(folder, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


GOOD_PLUGIN = """
    import vfmunit_sink

    @vfmunit_sink.REGISTRY.register("plugged")
    def plugged(value: int = 5):
        return value * 2
"""


def test_import_custom_modules_registers_components(plugin_dir):
    _write_module(plugin_dir, "vfmunit_good_plugin", GOOD_PLUGIN)
    import_custom_modules(["vfmunit_good_plugin"])
    registry = sys.modules["vfmunit_sink"].REGISTRY
    assert registry.list() == ["plugged"]
    assert registry.build({"type": "plugged", "value": 4}) == 8


def test_import_custom_modules_bad_module_names_the_list_index(plugin_dir):
    with pytest.raises(ConfigError, match=r"^custom_imports\.0: cannot import module 'vfmunit_does_not_exist'"):
        import_custom_modules(["vfmunit_does_not_exist"])
    _write_module(plugin_dir, "vfmunit_good_plugin", GOOD_PLUGIN)
    # a module that exists but fails on a missing dependency is reported the same way, at its index
    _write_module(plugin_dir, "vfmunit_broken_dep", "import vfmunit_missing_dependency\n")
    with pytest.raises(
        ConfigError,
        match=r"^custom_imports\.1: cannot import module 'vfmunit_broken_dep'.*vfmunit_missing_dependency",
    ):
        import_custom_modules(["vfmunit_good_plugin", "vfmunit_broken_dep"])


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Replace the installed `vfm.plugins` entry points with a list the test fills in.

    Only vfm.registry's view of importlib.metadata is replaced, so other libraries that read entry
    points (torch, triton) are unaffected; the built-in modules are loaded first so that loading
    them cannot run into the fake.
    """
    registry_module._load_builtins()
    advertised: list[importlib.metadata.EntryPoint] = []
    groups: list[str] = []

    def entry_points(group: str):
        groups.append(group)
        return [ep for ep in advertised if ep.group == group]

    monkeypatch.setattr(registry_module, "metadata", types.SimpleNamespace(entry_points=entry_points))
    monkeypatch.setattr(registry_module, "_loaded_entry_points", False)
    return advertised, groups


def test_entry_point_plugins_are_imported_once(plugin_dir, fake_entry_points):
    advertised, groups = fake_entry_points
    _write_module(plugin_dir, "vfmunit_ep_plugin", GOOD_PLUGIN)
    advertised.append(importlib.metadata.EntryPoint(name="mine", value="vfmunit_ep_plugin", group="vfm.plugins"))
    advertised.append(importlib.metadata.EntryPoint(name="other", value="vfmunit_not_ours", group="other.group"))

    assert load_entry_point_plugins() == ["mine"]
    assert groups == ["vfm.plugins"]
    assert sys.modules["vfmunit_sink"].REGISTRY.build({"type": "plugged"}) == 10
    assert load_entry_point_plugins() == []  # loaded once per process
    assert groups == ["vfm.plugins"]


def test_entry_point_plugin_failure_is_a_config_error(plugin_dir, fake_entry_points):
    advertised, _ = fake_entry_points
    _write_module(plugin_dir, "vfmunit_ep_broken", "raise RuntimeError('boom at import')\n")
    advertised.append(importlib.metadata.EntryPoint(name="broken", value="vfmunit_ep_broken", group="vfm.plugins"))
    with pytest.raises(ConfigError, match=r"^plugin 'broken' \(vfmunit_ep_broken\) failed to load: boom at import$"):
        load_entry_point_plugins()


def test_builtin_registries_hold_the_foundation_components():
    assert {"adamw", "sgd"} <= set(OPTIMIZERS.list())
    assert {"cosine", "step", "constant"} <= set(SCHEDULERS.list())


def test_failed_plugin_load_is_retried_not_left_half_loaded(plugin_dir, fake_entry_points):
    advertised, _ = fake_entry_points
    advertised.append(importlib.metadata.EntryPoint(name="gone", value="vfmunit_no_such_builtin", group="vfm.plugins"))
    for _ in range(2):  # the second lookup fails the same way instead of reporting an empty registry
        with pytest.raises(ConfigError, match="vfmunit_no_such_builtin"):
            load_entry_point_plugins()


def test_registry_names_no_component_module():
    """The bottom layer lists no component: vfm's own packages arrive through the vfm.plugins entry points."""
    source = Path(registry_module.__file__).read_text()
    assert "vfm.objectives" not in source and "vfm.models" not in source and "BUILTIN_MODULES" not in source
    groups = {ep.value for ep in importlib.metadata.entry_points(group="vfm.plugins")}
    assert {"vfm.objectives", "vfm.models", "vfm.data", "vfm.evaluation", "vfm.engine"} <= groups


def test_a_package_plugin_registers_every_module_in_it(plugin_dir, fake_entry_points):
    advertised, _ = fake_entry_points
    package = plugin_dir / "vfmunit_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "mod.py").write_text(textwrap.dedent(GOOD_PLUGIN))
    (package / "_private.py").write_text("raise RuntimeError('private modules are not imported')\n")
    advertised.append(importlib.metadata.EntryPoint(name="pkg", value="vfmunit_pkg", group="vfm.plugins"))
    assert load_entry_point_plugins() == ["pkg"]
    assert sys.modules["vfmunit_sink"].REGISTRY.build({"type": "plugged"}) == 10
