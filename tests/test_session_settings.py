"""benchmarks/session_settings.py on a tiny exported model: every setting timed at every batch size and length
configuration, quala's own setting first, and bad options named."""
from tests.conftest import load_script

session_settings = load_script("benchmarks/session_settings.py")


def test_table_has_every_setting_and_counts_paired_wins(onnx_dir, capsys):
    assert session_settings.main(["--model", str(onnx_dir), "--features", "3", "--repeats", "2",
                                  "--batch-sizes", "1,2", "--length-configs", "full;1,0.5,0.3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CPU: ")
    rows = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 * 2 * 3  # batch sizes x length configs x settings
    quala_rows = [r for r in rows if "| quala: SkipLayerNormFusion off, 2 threads, u8" in r]
    assert len(quala_rows) == 4 and all(r.endswith("| 1.00x |  |") for r in quala_rows)
    assert sum("| 1,0.5,0.3 | SkipLayerNormFusion on, 2 threads |" in r and r.endswith(" of 2 |") for r in rows) == 2


def test_kernels_add_quala_setting_with_each_kernel(onnx_dir, capsys):
    assert session_settings.main(["--model", str(onnx_dir), "--features", "2", "--repeats", "1",
                                  "--batch-sizes", "1", "--length-configs", "full", "--kernels", "u8u8,u8s7"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 5
    assert [r.split(" | ")[2] for r in rows[-2:]] == ["quala's setting, int8 kernel u8u8",
                                                      "quala's setting, int8 kernel u8s7"]
    assert session_settings.main(["--model", str(onnx_dir), "--kernels", "s8s8"]) == 2
    assert "--kernels 's8s8'" in capsys.readouterr().err


def test_table_rows_compare_with_the_first_setting():
    rows = session_settings.table_rows(1, "full", {"a": [2.0, 2.0, 2.0], "b": [1.0, 3.0, 1.0]})
    assert rows == ["| 1 | full | a | 2.00 | 1.00x |  |", "| 1 | full | b | 1.00 | 2.00x | 2 of 3 |"]


def test_errors_name_the_problem(onnx_dir, tiny_model_dir, capsys):
    assert session_settings.main(["--model", str(tiny_model_dir)]) == 2  # no INT8 graph there
    assert "model.int8.onnx: no such file" in capsys.readouterr().err
    assert session_settings.main(["--model", str(onnx_dir), "--batch-sizes", "one"]) == 2
    assert "--batch-sizes 'one'" in capsys.readouterr().err
    assert session_settings.main(["--model", str(onnx_dir), "--repeats", "0"]) == 2
    assert session_settings.main(["--model", str(onnx_dir), "--length-configs", "1,0.5"]) == 2
    assert "the model has 3 layers" in capsys.readouterr().err
