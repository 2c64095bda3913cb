"""Tests of glta_cli.config: coercion, TOML round trip, overrides, presets."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from glta_cli.config import (
    PRESETS,
    SECTION_NAMES,
    ConfigError,
    DataConfig,
    EvalConfig,
    LLMConfig,
    RunConfig,
    coerce_value,
    dump_toml,
    field_help,
    load_config,
    parse_overrides,
    read_toml,
    section_types,
    write_config,
)


@dataclass
class Toy:
    """A toy section with every supported field type."""

    n: int = field(default=3, metadata={"help": "an integer"})
    x: float = field(default=0.5, metadata={"help": "a float"})
    name: str = field(default="a \"quoted\" \\ name\nwith newline", metadata={"help": "text"})
    flag: bool = field(default=False, metadata={"help": "a flag"})
    maybe: int | None = field(default=None, metadata={"help": "optional"})
    opt_text: str | None = field(default="x", metadata={"help": "optional text"})
    ks: tuple[int, ...] = field(default=(5, 10), metadata={"help": "ints"})
    ratios: tuple[float, float, float] = field(default=(0.7, 0.1, 0.2), metadata={"help": "3"})
    words: list[str] = field(default_factory=lambda: ["a", "b"], metadata={"help": "words"})
    mode: Literal["first", "ar"] = field(default="first", metadata={"help": "a literal"})
    table: dict[str, typing.Any] = field(default_factory=dict, metadata={"help": "a table"})
    seed: int = field(default=7, metadata={"help": "seed"})

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")


TYPES = {"run": RunConfig, "toy": Toy}


@pytest.mark.parametrize(
    ("value", "tp", "expected"),
    [
        ("5", int, 5),
        (5.0, int, 5),
        ("1e-3", float, 1e-3),
        (2, float, 2.0),
        ("true", bool, True),
        ("off", bool, False),
        ("none", int | None, None),
        ("NONE", typing.Optional[float], None),  # noqa: UP045
        ("4", int | None, 4),
        ("5,10,20", tuple[int, ...], (5, 10, 20)),
        ("[5, 10]", list[int], [5, 10]),
        ([1, 2, 3], tuple[float, float, float], (1.0, 2.0, 3.0)),
        ("ar", Literal["first", "ar"], "ar"),
        ("p", Path, Path("p")),
        ('{a = 1, b = "x"}', dict[str, typing.Any], {"a": 1, "b": "x"}),
        (12, str, "12"),
    ],
)
def test_coerce_value(value, tp, expected):
    assert coerce_value(value, tp, "[s] k") == expected


@pytest.mark.parametrize(
    ("value", "tp", "fragment"),
    [
        ("abc", int, "not an integer"),
        (True, int, "not an integer"),
        ("x", float, "not a number"),
        ("maybe", bool, "not a boolean"),
        ("1,2", tuple[float, float, float], "expected 3 values"),
        ("zz", Literal["first", "ar"], "is not one of"),
        (None, int, "required"),
        ("a,b", list[int], "[s] k[0]"),
    ],
)
def test_coerce_value_errors_name_the_key(value, tp, fragment):
    with pytest.raises(ConfigError) as info:
        coerce_value(value, tp, "[s] k")
    assert "[s] k" in str(info.value)
    assert fragment in str(info.value)


def test_toml_round_trip_preserves_every_value():
    toy = Toy(n=0, x=-1.25e-7, maybe=None, opt_text=None, flag=True, words=["x y", "ü"],
              table={"user_col": "uid", "n": 2, "nested": [1, 2]}, mode="ar")
    text = dump_toml({"toy": toy}, header="head\nline two")
    parsed = tomllib.loads(text)["toy"]
    hints = typing.get_type_hints(Toy)
    back = Toy(**{k: coerce_value(v, hints[k], k) for k, v in parsed.items()})
    assert back == toy
    assert "# an integer" in text and text.startswith("# head\n# line two")


def test_toml_special_floats_and_keys():
    text = dump_toml({"s": {"inf": float("inf"), "neg": float("-inf"), "odd key": 1}})
    parsed = tomllib.loads(text)["s"]
    assert parsed["inf"] == float("inf") and parsed["neg"] == float("-inf")
    assert parsed["odd key"] == 1


def test_parse_overrides_forms():
    got = parse_overrides(["--graph.epochs", "5", "--llm.model=x/y", "--toy.flag",
                           "--item-text.batch-size", "4"])
    assert got == {"graph": {"epochs": "5"}, "llm": {"model": "x/y"},
                   "toy": {"flag": "true"}, "item_text": {"batch_size": "4"}}
    with pytest.raises(ConfigError, match=r"--section\.key"):
        parse_overrides(["stray"])


def test_load_config_layers_and_seed_follow(tmp_path):
    cfg = load_config(types_=TYPES)
    assert cfg.toy.seed == 0  # follows [run] seed (default 0)
    path = tmp_path / "c.toml"
    path.write_text('[run]\nseed = 11\n[toy]\nn = 4\nks = [1, 2]\n', encoding="utf-8")
    cfg = load_config("default", path, ["--toy.x", "2.5", "--toy.maybe", "9"], types_=TYPES)
    assert (cfg.toy.n, cfg.toy.ks, cfg.toy.x, cfg.toy.maybe) == (4, (1, 2), 2.5, 9)
    assert cfg.toy.seed == 11
    cfg = load_config("default", path, ["--toy.seed", "3"], types_=TYPES)
    assert cfg.toy.seed == 3 and cfg.run.seed == 11


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["--toy.nn", "1"], types_=TYPES)
    msg = str(info.value)
    assert "--toy.nn" in msg and "valid keys of [toy]" in msg and "ratios" in msg
    path = tmp_path / "bad.toml"
    path.write_text("[toy]\nbogus = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.toml.*\[toy\] bogus"):
        load_config("default", path, types_=TYPES)


def test_unknown_section_preset_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[nope\]"):
        load_config(overrides=["--nope.x", "1"], types_=TYPES)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config("huge", types_=TYPES)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("default", tmp_path / "missing.toml", types_=TYPES)
    bad = tmp_path / "broken.toml"
    bad.write_text("[toy\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid TOML"):
        read_toml(bad)


def test_dataclass_check_failure_is_config_error():
    with pytest.raises(ConfigError, match=r"\[toy\] n must be >= 0"):
        load_config(overrides=["--toy.n", "-1"], types_=TYPES)


def test_front_end_sections_validate():
    with pytest.raises(ConfigError, match="dtype"):
        LLMConfig(dtype="int3")
    with pytest.raises(ConfigError, match="ks"):
        EvalConfig(ks=[0])
    with pytest.raises(ConfigError, match="max_users"):
        DataConfig(max_users=0)
    assert LLMConfig().model_name_or_path is None
    assert LLMConfig(model="org/m").model_name_or_path == "org/m"


def test_compile_is_off_by_default_and_set_per_stage():
    cfg = load_config("default")
    assert cfg.user_item.compile is False and cfg.item_text.compile is False
    cfg = load_config("default", overrides=["--user_item.compile", "true"])
    assert cfg.user_item.compile is True and cfg.item_text.compile is False
    with pytest.raises(ConfigError, match="compile"):
        load_config("default", overrides=["--user_item.compile", "sometimes"])


def test_every_key_documented_in_every_section():
    for name, cls in section_types().items():
        for f in dataclasses.fields(cls):
            assert field_help(f), f"[{name}] {f.name} has no help text"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_resolve_and_round_trip(preset, tmp_path):
    cfg = load_config(preset)
    assert list(cfg.sections) == list(SECTION_NAMES)
    path = write_config(cfg, tmp_path / "resolved-config.toml")
    again = load_config("default", path)
    assert again.to_dict() == cfg.to_dict()


def test_paper_preset_is_a_gpu_llama2_config():
    cfg = load_config("paper")
    assert cfg.llm.model_name_or_path == "meta-llama/Llama-2-7b-chat-hf"
    assert cfg.llm.device == "cuda" and cfg.llm.dtype == "bfloat16"
    assert cfg.graph.device == "cuda" and cfg.user_item.llm == cfg.llm.model
    assert cfg.data.source == "ml-1m"
    assert cfg.eval.ks == [5, 10, 20]
    # the paper's prompt; the default preset puts the text first ([choice])
    assert cfg.user_item.prompt_order == "paper"
    assert load_config("default").user_item.prompt_order == "text-first"
    # the paper's head and Adam step; the default preset adds the residual ([choice]) and
    # trains 32 instances per step at lr 2e-4
    assert cfg.user_item.residual is False and cfg.user_item.lr == 1e-3
    default = load_config("default").user_item
    assert default.residual is True and default.lr == 2e-4 and default.head == "projected"
    assert default.batch_size == 32
    assert load_config("smoke").user_item.residual is False


def test_plain_head_ablation_drops_the_residual():
    # the residual needs the projected head: --ablation plain-head on the default preset
    # must resolve (not fail on residual = true with head = plain)
    cfg = load_config("default", None, ["--run.ablation", "plain-head"]).user_item
    assert cfg.head == "plain" and cfg.residual is False and cfg.lr == 2e-4
    with pytest.raises(ConfigError, match="--ablation plain-head"):
        load_config("default", None, ["--run.ablation", "plain-head",
                                      "--user_item.residual", "true"])


def test_smoke_preset_is_small():
    smoke, default = load_config("smoke"), load_config("default")
    assert smoke.data.max_users is not None
    assert smoke.graph.epochs <= default.graph.epochs


def test_section_subset_avoids_other_sections():
    cfg = load_config(sections=("run", "data"))
    assert list(cfg.sections) == ["run", "data"]
    with pytest.raises(ConfigError, match="unknown section"):
        section_types(["bogus"])


def test_stage_sections_follow_llm_section():
    cfg = load_config(overrides=["--llm.model", "org/model", "--llm.dtype", "float32"])
    for section in (cfg.item_text, cfg.user_item):
        assert (section.llm, section.dtype) == ("org/model", "float32")
    assert load_config().item_text.llm is None  # `default` = the offline SmolLM2
    cfg = load_config(overrides=["--llm.dtype", "int8"])  # the CPU int8 path
    assert (cfg.llm.dtype, cfg.item_text.dtype, cfg.user_item.dtype) == ("int8",) * 3
    with pytest.raises(ConfigError, match=r"\[user_item\] llm .* differs from \[llm\] model"):
        load_config(overrides=["--user_item.llm", "other/model"])
    same = load_config(overrides=["--llm.device", "cpu", "--item_text.device", "cpu"])
    assert same.item_text.device == "cpu"


def test_preset_budget_keys_all_exist_and_apply():
    from glta_cli.config import _PRESET_BUDGETS

    types_ = section_types()
    for preset, sections in _PRESET_BUDGETS.items():
        cfg = load_config(preset)
        for section, values in sections.items():
            names = {f.name for f in dataclasses.fields(types_[section])}
            assert set(values) <= names, (preset, section, set(values) - names)
            for key, value in values.items():
                got = getattr(cfg.sections[section], key)
                assert got == value or list(got) == value, (preset, section, key)
