"""Pattern tables: the default table loads; bad tables name the file and the entry."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import qatir
from qatir.errors import TableError
from qatir.pipeline import list_tables
from qatir.quantizers import Quantizer, register_quantizer
from qatir.table import builtin_tables, load_table

DEFAULT = Path(builtin_tables()["int8_default"]).read_text()


def _write(tmp_path: Path, text: str, name: str = "my.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _edit(old: str, new: str, text: str = DEFAULT) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_default_table_contents():
    t = load_table()
    assert t.name == "int8_default"
    assert t.weight_axis("CONV_2D") == 0
    assert t.weight_axis("DEPTHWISE_CONV_2D") == 3
    assert t.weight_axis("TRANSPOSE_CONV") == 0
    assert t.weight_axis("FULLY_CONNECTED") == 0  # per-channel FC (issue 16)
    assert t.fixed_output == {"LOGISTIC": (1 / 256, -128), "SOFTMAX": (1 / 256, -128),
                              "TANH": (1 / 128, 0)}
    kinds = [f["kind"] for f in t.data["fusions"]]
    assert {"batch_norm", "activation", "clip", "hard_swish"} <= set(kinds)
    for f in t.data["fusions"]:
        assert f["note"]  # every rule states its math
    assert "int8_default" in list_tables()
    assert load_table("int8_default").data == t.data


def test_unknown_op_names_file_and_entry(tmp_path):
    text = _edit('ops = ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"]\nnote = "w\'',
                 'ops = ["CONVV", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"]\nnote = "w\'')
    path = _write(tmp_path, text)
    with pytest.raises(TableError, match=re.escape(f"{path}: fusions[0].ops: unknown op 'CONVV'")):
        load_table(path)


def test_unknown_op_in_later_fusion(tmp_path):
    text = DEFAULT.replace('"ADD", "SUB", "MUL"', '"ADD", "SUBB", "MUL"')
    with pytest.raises(TableError, match=r"my\.toml: fusions\[9\]\.ops: unknown op 'SUBB'"):
        load_table(_write(tmp_path, text))


def test_bad_regex(tmp_path):
    text = DEFAULT + '\n[[exclude]]\nname = "head/("\n'
    with pytest.raises(TableError, match=r"my\.toml: exclude\[0\]\.name: bad regex 'head/\('"):
        load_table(_write(tmp_path, text))


def test_wrong_type(tmp_path):
    text = _edit("bits = 8\nsymmetric = true", 'bits = "eight"\nsymmetric = true')
    with pytest.raises(TableError, match=r"my\.toml: weights\.bits: 'eight' is not of type 'integer'"):
        load_table(_write(tmp_path, text))


def test_unknown_key_and_missing_field(tmp_path):
    text = _edit('kind = "clip"\nmin = 0.0\nmax = 6.0', 'kind = "clip"\nmin = 0.0\nmaxx = 6.0')
    with pytest.raises(TableError, match=r"my\.toml: fusions\[2\]"):
        load_table(_write(tmp_path, text))


def test_unknown_quantizer_then_registered_custom_one(tmp_path):
    text = _edit('activation = "minmax"', 'activation = "my_quantizer_for_table_test"')
    path = _write(tmp_path, text)
    with pytest.raises(TableError, match=r"my\.toml: calibration\.activation: unknown quantizer "
                                         r"'my_quantizer_for_table_test'"):
        load_table(path)

    @register_quantizer("my_quantizer_for_table_test")
    class _Mine(Quantizer):
        """A user's quantizer."""

    assert load_table(path).calibration["activation"] == "my_quantizer_for_table_test"


def test_activation_fusion_needs_an_op_with_fused_activation(tmp_path):
    text = DEFAULT.replace('"ADD", "SUB", "MUL"', '"ADD", "SUB", "MAXIMUM"')
    with pytest.raises(TableError, match=r"fusions\[9\]\.ops: op 'MAXIMUM' has no fused_activation"):
        load_table(_write(tmp_path, text))


def test_unfusable_activation_and_bad_bn_producer(tmp_path):
    text = DEFAULT.replace('activations = ["RELU", "RELU6"', 'activations = ["LOGISTIC", "RELU6"')
    with pytest.raises(TableError, match=r"fusions\[9\]\.activations: 'LOGISTIC'"):
        load_table(_write(tmp_path, text))
    text = DEFAULT.replace('ops = ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"]\nnote',
                           'ops = ["ADD"]\nnote', 1)
    with pytest.raises(TableError, match=r"fusions\[0\]\.ops: cannot fold a batch norm into 'ADD'"):
        load_table(_write(tmp_path, text))


def test_bad_fixed_output_and_range(tmp_path):
    text = DEFAULT.replace("TANH = { scale = 0.0078125, zero_point = 0 }",
                           "TANH = { scale = 0.0078125, zero_point = 300 }")
    with pytest.raises(TableError, match=r"constraints\.fixed_output\.TANH\.zero_point: 300"):
        load_table(_write(tmp_path, text))
    text = DEFAULT.replace("initial_range = [-6.0, 6.0]", "initial_range = [1.0, 6.0]")
    with pytest.raises(TableError, match=r"activations\.initial_range"):
        load_table(_write(tmp_path, text))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(TableError, match=r"broken\.toml: invalid TOML"):
        load_table(_write(tmp_path, "name = [", "broken.toml"))
    with pytest.raises(TableError, match=r"nope\.toml: no such table file"):
        load_table(tmp_path / "nope.toml")


def test_strings_are_never_code(tmp_path):
    # an expression where a number or name is expected is rejected, not evaluated
    text = _edit("bits = 8\nsymmetric = false", 'bits = "__import__(\'os\').getcwd()"\nsymmetric = false')
    with pytest.raises(TableError, match=r"activations\.bits"):
        load_table(_write(tmp_path, text))


def test_plain_data_table():
    import tomllib

    data = tomllib.loads(DEFAULT)
    data["weights"]["bits"] = 4
    assert load_table(data).weights["bits"] == 4
    data["weights"]["per_channel_axis"]["CONVV"] = 0
    with pytest.raises(TableError, match=r"<table>: weights\.per_channel_axis: unknown op 'CONVV'"):
        load_table(data)


# ------------------------------------------------------------ plug-in fusion kinds
def _plugin_kind():
    from qatir.table import register_fusion_kind

    def check(i, entry, source):
        if entry["factor"] <= 0:
            raise TableError(f"{source}: fusions[{i}].factor: must be positive")

    register_fusion_kind("scale_fold_test", {"ops": {"$ref": "#/$defs/oplist"},
                                             "factor": {"type": "number"}},
                         required=["factor"], check=check, replace=True)


def _with_fusion(body: str) -> str:
    return DEFAULT + f'\n[[fusions]]\nname = "mine"\n{body}\n'


def test_a_plugin_fusion_kind_with_its_own_fields_loads(tmp_path):
    _plugin_kind()
    t = load_table(_write(tmp_path, _with_fusion('kind = "scale_fold_test"\nfactor = 2.0\n'
                                                 'ops = ["CONV_2D"]')))
    (_, entry), = t.fusions("scale_fold_test")
    assert entry["factor"] == 2.0 and entry["ops"] == ["CONV_2D"]


@pytest.mark.parametrize("body, message", [
    ('kind = "scale_fold_test"', r"fusions\[\d+\]: 'factor' is a required property"),
    ('kind = "scale_fold_test"\nfactor = 1\nfactr = 2',
     r"fusions\[\d+\]: Additional properties.*'factr'.*scale_fold_test"),
    ('kind = "scale_fold_test"\nfactor = "two"', r"fusions\[\d+\]\.factor: 'two' is not of type"),
    ('kind = "scale_fold_test"\nfactor = -1', r"fusions\[\d+\]\.factor: must be positive"),
    ('kind = "no_such_kind"', r"fusions\[\d+\]\.kind: unknown fusion kind 'no_such_kind'.*"
                              r"register_fusion_kind"),
    ('kind = "clip"\nfactor = 2.0', r"fusions\[\d+\]: .*'factor'.*fusion kind 'clip'"),
])
def test_plugin_and_builtin_fusion_kinds_check_their_fields(tmp_path, body, message):
    _plugin_kind()
    with pytest.raises(TableError, match=rf"my\.toml: {message}"):
        load_table(_write(tmp_path, _with_fusion(body)))


def test_fusion_kinds_cannot_be_registered_twice_by_accident():
    from qatir.errors import QatirError
    from qatir.table import register_fusion_kind

    with pytest.raises(QatirError, match="already registered"):
        register_fusion_kind("clip", {})
    with pytest.raises(QatirError, match="required field"):
        register_fusion_kind("broken_kind_test", {}, required=["x"])


# ------------------------------------------------------------ policy vs op facts
@pytest.mark.parametrize("old, new, message", [
    ("SOFTMAX = { scale = 0.00390625, zero_point = -128 }",
     "SOFTMAX = { scale = 0.0078125, zero_point = -128 }",
     r"constraints\.fixed_output\.SOFTMAX: scale 0\.0078125.*contradicts LiteRT's fixed output"),
    ('inherit = ["MAX_POOL_2D",', 'inherit = ["ADD", "MAX_POOL_2D",',
     r"constraints\.inherit: 'ADD' does not keep its input's grid"),
    ('same_scale = ["AVERAGE_POOL_2D",', 'same_scale = ["TANH", "AVERAGE_POOL_2D",',
     r"constraints\.same_scale: 'TANH' has a fixed output"),
    ("per_channel_axis = { CONV_2D = 0,", "per_channel_axis = { CONV_2D = 3,",
     r"weights\.per_channel_axis\.CONV_2D: axis 3 contradicts the op's TFLite per-channel axis 0"),
    ("FULLY_CONNECTED = 0 }", "FULLY_CONNECTED = 1 }",
     r"weights\.per_channel_axis\.FULLY_CONNECTED: axis 1 contradicts the op's TFLite "
     r"per-channel axis 0"),
])
def test_a_table_entry_that_contradicts_an_op_fact_is_refused_by_name(tmp_path, old, new, message):
    with pytest.raises(TableError, match=rf"my\.toml: {message}"):
        load_table(_write(tmp_path, _edit(old, new)))


def test_fixed_outputs_come_from_the_op_facts_when_a_table_omits_them(tmp_path):
    text = _edit("LOGISTIC = { scale = 0.00390625, zero_point = -128 }\n", "")
    assert load_table(_write(tmp_path, text)).fixed_output["LOGISTIC"] == (1 / 256, -128)


def test_register_fusion_kind_is_exported_beside_register_pass():
    import qatir
    from qatir.table import register_fusion_kind

    assert qatir.register_fusion_kind is register_fusion_kind
    assert {"register_fusion_kind", "register_pass"} <= set(qatir.__all__)


def test_graph_inputs_take_the_input_quantizer_when_the_table_names_one(tmp_path):
    from qatir.ir import Graph

    g = Graph("fc")
    x = g.add_input("x", [1, 4])
    w = g.const(np.eye(4, dtype=np.float32))
    g.outputs = [g.add_node("FULLY_CONNECTED", [x, w, g.const(np.zeros(4, np.float32))]).output]

    def quantizers(table) -> dict[str, str]:
        q = qatir.quantize(g, table=table)
        return {n.inputs[0].name: n.attrs["quantizer"] for n in q.nodes
                if n.op == "FAKE_QUANT" and n.attrs["kind"] == "activation"}

    assert load_table(None).calibration["input"] == "minmax"
    assert set(quantizers(None).values()) == {"minmax"}
    path = _write(tmp_path, _edit('activation = "minmax"',
                                  'activation = "minmax"\ninput = "moving_average"'))
    got = quantizers(str(path))
    assert got.pop("x") == "moving_average" and set(got.values()) == {"minmax"} and got
    bad = _write(tmp_path, _edit('activation = "minmax"', 'activation = "minmax"\ninput = "nope"'),
                 "bad.toml")
    with pytest.raises(TableError, match=r"calibration\.input: unknown quantizer 'nope'"):
        load_table(bad)
