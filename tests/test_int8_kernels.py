"""benchmarks/int8_kernels.py: the exactness probe it prints agrees with the runtime's choice of kernel."""

from quala.runtime import u8s8_exact
from tests.conftest import load_script

int8_kernels = load_script("benchmarks/int8_kernels.py")


def test_u8u8_is_exact_and_u8s8_exactly_where_the_runtime_says():
    assert int8_kernels.matmul_errors("u8u8") == (0.0, 0)
    share, worst = int8_kernels.matmul_errors("u8s8")
    assert (share == 0 and worst == 0) == u8s8_exact()


def test_bad_kernel_names_are_refused(capsys):
    assert int8_kernels.main(["--kernels", "s8s8"]) == 2
    assert "--kernels 's8s8'" in capsys.readouterr().err
