"""The README and the docs it links: short, the two commands CI runs, links that resolve, commands that exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bnlab.lab.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, ROOT / "docs" / "index.md", ROOT / "docs" / "lab.md", ROOT / "docs" / "defects.md",
        ROOT / "docs" / "variants.md"]
INSTALL_RUN = 'pip install torch==2.13.0 -e ".[lab]" && bnlab reproduce'
INSTALL_TEST = 'pip install torch==2.13.0 -e ".[test]" && python -m pytest'


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    first = _code_blocks(text)[0].strip().splitlines()
    assert first == [INSTALL_RUN, INSTALL_TEST]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci == INSTALL_TEST  # CI runs the README's test command verbatim
    assert "runs/reproduce/report.html" in text and "--preset tiny" in text


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_speak_about_the_project_only(doc):
    text = doc.read_text(encoding="utf-8")
    assert not re.search(r"\bissue\s*#?\d|(?<![\w/])#\d+\b|shared/seed\.md", text, flags=re.I), doc


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{doc.name} links to {target}, which does not exist"


def _commands_in(text: str) -> set[str]:
    found = set()
    for block in _code_blocks(text):
        for line in block.splitlines():
            m = re.search(r"(?:^|&& |-m )bnlab ([a-z]+)", line.strip())
            if m:
                found.add(m.group(1))
    return found


@pytest.mark.parametrize("doc", [README, ROOT / "docs" / "lab.md"], ids=lambda p: p.name)
def test_every_command_shown_exists(doc, capsys):
    commands = _commands_in(doc.read_text(encoding="utf-8"))
    assert {"reproduce", "run"} <= commands or doc.name == "lab.md"
    for cmd in sorted(commands - {"bench", "data"}):  # those two parse their own arguments
        try:
            main([cmd, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, cmd
        assert "usage: bnlab" in capsys.readouterr().out


def test_the_library_in_15_lines_runs():
    """The README's library block, executed as written (with a small model and data for its names)."""
    import torch
    from torch import nn

    text = README.read_text(encoding="utf-8")
    block = text.split("## The library in 15 lines")[1].split("```python\n")[1].split("```")[0]
    assert len(block.strip().splitlines()) <= 15
    torch.manual_seed(0)
    names = {
        "torchvision_model": nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
        "x": torch.randn(4, 8, 5, 5), "running_mean": torch.zeros(8), "running_var": torch.ones(8),
        "weight": torch.ones(8), "bias": torch.zeros(8),
        "train_batches": [torch.randn(4, 3, 9, 9) for _ in range(3)],
    }
    previous = __import__("bnlab").get_backend()
    try:
        exec(compile(block, "README.md", "exec"), names)
    finally:
        __import__("bnlab").set_backend(previous)
    assert names["y"].shape == names["x"].shape and isinstance(names["bn"], nn.BatchNorm2d)
    probe = torch.randn(2, 3, 9, 9)
    model = names["model"].eval()
    torch.testing.assert_close(names["fused"](probe), model(probe), rtol=1e-4, atol=1e-5)  # folding is exact
