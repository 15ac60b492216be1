"""benchmarks/train_throughput.py on a tiny model: paired rows, the attention dropout asked for, clear errors."""
from tests.conftest import load_script

train_throughput = load_script("benchmarks/train_throughput.py")


def test_rows_take_turns_on_the_same_sub_models(tiny_model_dir, capsys):
    assert train_throughput.main(["--model", str(tiny_model_dir), "--stages", "lengthdrop", "--dtypes", "fp32",
                                  "--attention-dropouts", "config,0", "--steps", "2", "--batch-size", "4",
                                  "--questions", "40"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CPU: ")
    rows = [line for line in out.splitlines() if line.startswith("| lengthdrop |")]
    assert [r.split(" | ")[2] for r in rows] == ["0.1", "0"] and rows[0].endswith("| 1.00x |")


def test_errors_name_the_problem(tiny_model_dir, capsys):
    assert train_throughput.main(["--model", str(tiny_model_dir), "--attention-dropouts", "none"]) == 2
    assert "--attention-dropouts 'none'" in capsys.readouterr().err
    assert train_throughput.main(["--model", str(tiny_model_dir), "--dtypes", "fp16", "--questions", "20"]) == 2
    assert "dtype 'fp16'" in capsys.readouterr().err
    assert train_throughput.main(["--model", str(tiny_model_dir), "--stages", "lengthdrop", "--dtypes", "fp32",
                                  "--scorer-loss", "0.1", "--questions", "20"]) == 2
    assert "does not rank tokens with learned scorers" in capsys.readouterr().err
