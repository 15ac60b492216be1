"""Every code block of the README runs: Python blocks as they are, `quala` commands through the real CLI (long ones
parsed with the real argument parser, or run on a small slice), benchmark commands' options checked against their
--help. A README that drifts from the code fails here."""
import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from quala.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)
RUN = {"answer", "eval", "report"}  # fast enough to run for real (eval on a small slice)


def commands(lang: str) -> list[str]:
    """The shell commands of every block in this language: continuation lines joined, comments dropped, && split."""
    out = []
    for block_lang, body in BLOCKS:
        if block_lang != lang:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            out += [c.strip() for c in line.split("&&") if c.strip()]
    return out


def test_readme_has_blocks_and_stays_short():
    assert len(README.splitlines()) < 200
    assert any(lang == "python" for lang, _ in BLOCKS) and len(commands("bash")) > 15


@pytest.mark.parametrize("code", [body for lang, body in BLOCKS if lang == "python"])
def test_python_blocks_run(code):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert "William Shakespeare" in out.getvalue()


def substitute(argv: list[str], data_dir: Path, tmp_path: Path) -> list[str]:
    """README placeholders -> real files: a user's SQuAD file -> a small real slice; outputs -> a temp folder."""
    names = {"my-squad.json": str(data_dir / "dev.json"), "predictions.json": str(tmp_path / "predictions.json")}
    argv = [names.get(a, a) for a in argv]
    if "--limit" in argv:
        argv[argv.index("--limit") + 1] = "20"
    return argv


@pytest.mark.parametrize("command", [c for c in commands("bash") if c.startswith("quala ")])
def test_quala_commands_parse_and_fast_ones_run(command, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = substitute(shlex.split(command)[1:], data_dir, tmp_path)
    if '"..."' in command or "runs/mine" in command:  # the second line of the fine-tuning example needs its output
        argv = [a if a not in ("...", "runs/mine/finetune") else "x" for a in argv]
    args = build_parser().parse_args(argv)  # every option exists and every value is valid
    if args.command in RUN and "runs/" not in command:
        assert main(argv) == 0, capsys.readouterr().err


BENCHMARKS = [c for c in commands("bash") if c.startswith("python benchmarks/")] + re.findall(
    r"`(python benchmarks/[^`]+)`", README.replace("\n", " "))


def test_the_readme_names_its_benchmark_commands():
    assert len(BENCHMARKS) >= 4


@pytest.mark.parametrize("command", BENCHMARKS)
def test_benchmark_commands_exist_with_their_options(command):
    script, *options = shlex.split(command)[1:]
    help_text = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                               timeout=120, cwd=ROOT).stdout
    assert "usage" in help_text
    for option in (o for o in options if o.startswith("--")):
        assert option in help_text, option


def test_every_file_the_readme_links_or_reads_exists():
    for path in re.findall(r"\]\(((?:docs|quala)/[^)]+)\)", README) + re.findall(r"--context-file (\S+)", README):
        assert (ROOT / path).exists(), path
