"""`glta config show`: resolved TOML on stdout, overrides, errors."""

from __future__ import annotations

import tomllib

from glta_cli.app import app
from glta_cli.config import load_config


def test_config_show_prints_loadable_documented_toml(runner, tmp_path):
    result = runner.invoke(app, ["config", "show", "--preset", "smoke", "--graph.epochs", "3",
                                 "--eval.ks", "5,10"])
    assert result.exit_code == 0, result.output
    parsed = tomllib.loads(result.stdout)
    assert parsed["graph"]["epochs"] == 3 and parsed["eval"]["ks"] == [5, 10]
    assert parsed["data"]["max_users"] == load_config("smoke").data.max_users
    assert "# maximum number of training epochs" in result.stdout
    path = tmp_path / "my.toml"
    path.write_text(result.stdout, encoding="utf-8")
    again = runner.invoke(app, ["config", "show", "--config", str(path)])
    assert again.exit_code == 0
    assert tomllib.loads(again.stdout) == parsed


def test_config_show_errors(runner, tmp_path):
    bad_key = runner.invoke(app, ["config", "show", "--user_item.slots", "3"])
    assert bad_key.exit_code == 2
    assert "--user_item.slots" in bad_key.stderr and "num_slots" in bad_key.stderr
    bad_value = runner.invoke(app, ["config", "show", "--graph.lr", "fast"])
    assert bad_value.exit_code == 2 and "[graph] lr" in bad_value.stderr
    bad_preset = runner.invoke(app, ["config", "show", "--preset", "huge"])
    assert bad_preset.exit_code == 2 and "smoke" in bad_preset.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[graph\n", encoding="utf-8")
    bad_file = runner.invoke(app, ["config", "show", "--config", str(broken)])
    assert bad_file.exit_code == 2 and "broken.toml" in bad_file.stderr


def test_bad_malloc_setting_exits_2_naming_the_variable(runner):
    result = runner.invoke(app, ["config", "show", "--preset", "smoke"],
                           env={"GLTA_MALLOC": "tcmalloc"})
    assert result.exit_code == 2
    assert "GLTA_MALLOC='tcmalloc'" in result.output and "system" in result.output
