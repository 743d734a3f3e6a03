"""Run-config validation: every shipped config loads; mistakes fail with the key's path and a hint."""

from pathlib import Path

import pytest
import yaml

from harmgate.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent
MINIMAL = {
    "name": "t",
    "model": {"base": "x"},
    "data": {"sources": [{"id": "a", "format": "hh"}]},
    "evals": {"suites": [{"name": "advbench_refusal"}]},
    "policy": {"kpis": [{"name": "k", "metric": "advbench_refusal.compliance_rate", "direction": "lower", "max": 0.5}]},
}


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_pass_preflight(path):
    from harmgate.pipeline import preflight

    config = load_config(path)
    preflight(config)


RECIPES = sorted(p for p in (REPO / "configs" / "recipes").glob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_load_and_pass_preflight(path):
    """Every recipe loads; one that starts from another recipe's run (model.init_from) is refused, naming the
    folder, until that run exists."""
    from harmgate.pipeline import PreflightError, preflight

    config = load_config(path)
    if config.model.init_from and not Path(config.model.init_from).exists():
        with pytest.raises(PreflightError, match=f"model.init_from: {config.model.init_from} is not a model folder"):
            preflight(config)
    else:
        preflight(config)


def test_production_default_is_llama31_on_hh_golden():
    config = load_config(REPO / "configs" / "llama31-8b.yaml")
    assert config.model.base == "meta-llama/Llama-3.1-8B-Instruct"
    assert any(s.id == "Unified-Language-Model-Alignment/Anthropic_HH_Golden" for s in config.data.sources)
    assert config.quantization.quant_type == "nf4" and config.quantization.double_quant


def test_production_default_trains_with_the_measured_fast_setting():
    # docs/PERFORMANCE.md documents this setting and its numbers; packing is only allowed because the method is sft.
    config = load_config(REPO / "configs" / "llama31-8b.yaml")
    t = config.training
    assert (t.method, t.packing, t.packing_layout, t.use_liger_kernel, t.optimizer, t.attn_implementation) == (
        "sft", "padding_free", "rows", True, "adamw_torch_fused", None)
    assert (t.per_device_batch_size, t.gradient_accumulation_steps, t.max_seq_length) == (16, 1, 1024)
    assert config.lora.dropout == 0.0


def _with(path: tuple, value):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    node = data
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
    node[path[-1]] = value
    return data


def test_typo_names_the_path_and_suggests():
    with pytest.raises(ConfigError) as err:
        parse_config(_with(("training", "lerning_rate"), 1e-4), "cfg.yaml")
    msg = str(err.value)
    assert "cfg.yaml" in msg and "training.lerning_rate" in msg and "did you mean 'learning_rate'" in msg


def test_typo_inside_a_list_item():
    data = _with(("data", "sources"), [{"id": "a", "format": "hh", "wieght": 2}])
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.wieght: unknown key \(did you mean 'weight'\?\)"):
        parse_config(data)


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="modle: unknown key .did you mean 'model'"):
        parse_config(_with(("modle",), {"base": "y"}))


def test_wrong_type_and_missing_section():
    with pytest.raises(ConfigError, match=r"training\.max_seq_length: Input should be a valid integer"):
        parse_config(_with(("training", "max_seq_length"), "long"))
    data = dict(MINIMAL)
    del data["policy"]
    with pytest.raises(ConfigError, match="policy: Field required"):
        parse_config(data)


def test_kpi_without_bound_and_bad_metric():
    with pytest.raises(ConfigError, match="has no bound"):
        parse_config(_with(("policy", "kpis"), [{"name": "k", "metric": "a.b", "direction": "lower"}]))
    with pytest.raises(ConfigError, match="metric must look like"):
        parse_config(_with(("policy", "kpis"), [{"name": "k", "metric": "nodot", "direction": "lower", "max": 1}]))


def test_not_yaml_and_not_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_preflight_catches_kpi_on_unconfigured_suite_and_unknown_suite():
    from harmgate.pipeline import PreflightError, preflight

    cfg = parse_config(_with(("evals", "suites"), [{"name": "xstest_over_refusal"}, {"name": "advbench_refusl"}]))
    with pytest.raises(PreflightError) as err:
        preflight(cfg)
    assert "did you mean 'advbench_refusal'" in str(err.value)
    assert "reads suite 'advbench_refusal', which is not in evals.suites" in str(err.value)


def test_include_merges_a_shared_base_file(tmp_path):
    """`include:` reads the shared file first; the including file's keys win, mappings merge key by key."""
    from harmgate.config import load_config

    base = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny-test.yaml").read_text())
    base["training"]["learning_rate"] = 1e-3
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(
        {"include": "shared/base.yaml", "name": "recipe-x", "training": {"method": "ulma", "beta": 0.5}}))
    config = load_config(tmp_path / "recipe.yaml")
    assert config.name == "recipe-x"
    assert config.training.method == "ulma" and config.training.beta == 0.5
    assert config.training.learning_rate == 1e-3          # kept from the included file
    assert config.model.base == base["model"]["base"]


def test_include_errors_name_the_file(tmp_path):
    from harmgate.config import ConfigError, load_config

    (tmp_path / "a.yaml").write_text("include: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("include: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing\.yaml \(included from .*c\.yaml\)"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("include: {x: 1}\n")
    with pytest.raises(ConfigError, match="include: must be a file name"):
        load_config(tmp_path / "d.yaml")
