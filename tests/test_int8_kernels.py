"""benchmarks/int8_kernels.py: the exactness probe it prints agrees with the runtime's choice of kernel."""
import importlib.util
from pathlib import Path

from quala.runtime import u8s8_exact

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_kernels.py"
spec = importlib.util.spec_from_file_location("int8_kernels", SCRIPT)
int8_kernels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(int8_kernels)


def test_u8u8_is_exact_and_u8s8_exactly_where_the_runtime_says():
    assert int8_kernels.matmul_errors("u8u8") == (0.0, 0)
    share, worst = int8_kernels.matmul_errors("u8s8")
    assert (share == 0 and worst == 0) == u8s8_exact()


def test_bad_kernel_names_are_refused(capsys):
    assert int8_kernels.main(["--kernels", "s8s8"]) == 2
    assert "--kernels 's8s8'" in capsys.readouterr().err
