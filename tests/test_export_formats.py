"""The export-format table (eagle_ext.serve.formats): light to import, consistent with the algorithm registry,
and the one source the writer, reader, checker, recipe config and `eagle-ext export` read (the size rules of
issue #21 are in tests/test_structure.py)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from eagle_ext.algorithms import ALGORITHM_NAMES, algorithm_spec
from eagle_ext.serve import export_cli
from eagle_ext.serve.export import EXPORT_DTYPES, EXPORT_FORMATS, check_algorithm_format
from eagle_ext.serve.formats import (
    DTYPE_NAMES,
    FEATURES,
    FORMAT_NAMES,
    FORMATS,
    detect_format,
    export_format,
    format_problem,
    formats_holding,
)
from eagle_ext.train.config import ConfigError, load_config

SERVE = pathlib.Path(__file__).resolve().parents[1] / "eagle_ext" / "serve"


def test_the_table_imports_without_torch():
    code = "import sys, eagle_ext.serve.formats; print(json.dumps(sorted(m for m in sys.modules if m == 'torch'" \
           " or m.startswith(('torch.', 'transformers', 'safetensors')))))"
    proc = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_the_table_agrees_with_the_algorithm_registry():
    assert EXPORT_FORMATS == FORMAT_NAMES == tuple(export_cli.FORMAT_NAMES)
    assert tuple(EXPORT_DTYPES) == tuple(DTYPE_NAMES) == export_cli.DTYPES
    for fmt in FORMATS.values():
        assert fmt.algorithms and set(fmt.algorithms) <= set(ALGORITHM_NAMES), fmt.name
        assert {a for a, _ in fmt.architectures} == set(fmt.algorithms), fmt.name
        assert set(fmt.refuses) <= set(FEATURES), fmt.name
        assert callable(fmt.function("build_config")) and callable(fmt.function("check_config"))
    for algorithm in ALGORITHM_NAMES:
        assert "speculators" in formats_holding(algorithm)  # vLLM serves every algorithm


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_tensor_renames_round_trip(name):
    fmt = FORMATS[name]
    for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight", "model.fc.weight",
                "model.embed_tokens.weight", "lm_head.weight", "d2t", "t2d", "mask_hidden"):
        exported = fmt.export_name(key)
        assert not exported.startswith("model.") and fmt.internal_name(exported) == key
    assert (fmt.export_name("model.layers.0.input_layernorm.weight") == "midlayer.input_layernorm.weight") == (
        name == "sglang")
    with pytest.raises(ValueError, match="unexpected draft state-dict key 'layers.0.x'"):
        fmt.export_name("layers.0.x")


def test_detect_format_from_each_record():
    for fmt in FORMATS.values():
        for algorithm, arch in fmt.architectures:
            config = {"architectures": [arch]} if fmt.kind_key is None else {fmt.kind_key: algorithm}
            assert detect_format(config) == (fmt, algorithm)
    with pytest.raises(ValueError, match="speculators_model_type must be 'eagle3' or 'peagle', got 'medusa'"):
        detect_format({"speculators_model_type": "medusa"})
    with pytest.raises(ValueError, match=r"none of the export formats: .* got architectures \['LlamaForCausalLM'\]"):
        detect_format({"architectures": ["LlamaForCausalLM"]})


def test_format_errors_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"format must be one of \('speculators', 'sglang', 'specforge_peagle'\), "
                                         r"got 'vllm'"):
        export_format("vllm")
    assert format_problem("speculators", "peagle") is None
    assert format_problem("sglang", "peagle") == ("'speculators' or 'specforge_peagle' for P-EAGLE "
                                                  "(sglang holds EAGLE-3 drafts)")
    with pytest.raises(ValueError, match="format='sglang' cannot hold the peagle draft of 'SRC'; use speculators or "
                                         "specforge_peagle"):
        check_algorithm_format("peagle", "sglang", "SRC")
    with pytest.raises(ValueError, match="meta.json algorithm must be 'eagle3' or 'peagle', got None"):
        check_algorithm_format(None, "sglang", "SRC")


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_recipe_config_reads_the_table(algorithm):
    base = [f"algorithm={algorithm}", "output_dir=/tmp/x", "target.name_or_path=org/model", "data.train_path=chat"]
    if algorithm_spec(algorithm).parallel_drafting:
        base.append(f"{algorithm}.mask_token_id=5")
    held = formats_holding(algorithm)
    assert load_config(None, [*base, f"checkpoint.export_formats=[{','.join(held)}]"]).checkpoint.export_formats \
        == list(held)
    for name in (n for n in FORMAT_NAMES if n not in held):
        with pytest.raises(ConfigError, match=rf"checkpoint.export_formats\[1\] must be .* for "
                                              rf"{algorithm_spec(algorithm).label} .*, got '{name}'"):
            load_config(None, [*base, f"checkpoint.export_formats=[{held[0]},{name}]"])
    with pytest.raises(ConfigError, match=r"checkpoint.export_formats\[0\] must be one of .*, got 'vllm'"):
        load_config(None, [*base, "checkpoint.export_formats=[vllm]"])


def test_export_help_lists_every_format(capsys):
    from eagle_ext import cli

    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for fmt in FORMATS.values():
        assert f"{fmt.name} ({fmt.serves};" in out
