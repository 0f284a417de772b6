"""What the README and the docs show runs as shown: the README's Python examples execute, every
`adt-fast train|eval` line of a fenced block parses, and the docs list what the commands take.
Each check reads the Markdown itself, so an example cannot rot without a test failing."""

import argparse
import ast
import importlib
import inspect
import re
import shlex
from dataclasses import fields
from pathlib import Path

import pytest

from adt_fast.cli import build_parser, parse
from adt_fast.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
FLAG = re.compile(r"--[a-z][a-z0-9-]*")
COMMAND = re.compile(r"(adt-fast|-m adt_fast) (train|eval)\b")
CALL = re.compile(r"`([A-Za-z_][\w.]*)\(([^`]*)\)`")
# Where a bare name the docs write out with its arguments (`generator_inputs(model, x, ...)`) lives.
MODULES = ["adt_fast", "adt_fast.amortized", "adt_fast.attacks", "adt_fast.data", "adt_fast.data.small_datasets",
           "adt_fast.models", "adt_fast.models.generators", "adt_fast.ops.reference", "adt_fast.train"]


def fenced(path: Path) -> list:
    """The fenced blocks of a Markdown file, as (language, text)."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text(encoding="utf-8"))]


def command_lines() -> list:
    """Each `adt-fast train|eval` line of a fenced block (also `python -m adt_fast` and torchrun's
    `-m adt_fast`), continuations joined and comments dropped, as (where, argv from the command
    on). Synopses (blocks with `[--`) are test_synopsis_lists_every_flag's."""
    found = []
    for path in DOCS:
        for _, block in fenced(path):
            if "[--" in block:
                continue
            for line in block.replace("\\\n", " ").splitlines():
                if not COMMAND.search(line):
                    continue
                words = shlex.split(line, comments=True)
                start = next(i for i, word in enumerate(words[:-1]) if word in ("adt-fast", "adt_fast")
                             and words[i + 1] in ("train", "eval"))
                argv = words[start + 1:]
                found.append(pytest.param(argv, id=f"{path.name}: {' '.join(argv)[:70]}"))
    return found


def written_calls() -> list:
    """Each backticked `name(arg, key=value)` of the docs whose name is one of adt_fast's functions
    or classes, as (callable, the call parsed): a parameter list or a call written out. Those with
    `...` (arguments left out) or no positional argument are not; names after a bare `*` are
    keyword-only parameters."""
    found = []
    for path in DOCS:
        for name, args in CALL.findall(path.read_text(encoding="utf-8")):
            target = _resolve(name)
            if target is None or "..." in args:
                continue
            before, _, after = args.partition("*,")
            keyword_only = [a if "=" in a else f"{a.strip()}={a.strip()}" for a in after.split(",") if a.strip()]
            parts = [p for p in (before.strip().rstrip(","), *keyword_only) if p]
            try:
                call = ast.parse(f"f({', '.join(parts)})", mode="eval").body
            except SyntaxError:  # a description in a table: `PGD(CEInner, uniform start)`
                continue
            if not call.args:  # `evaluate(precision="bf16")` shows one setting, not the call
                continue
            found.append(pytest.param(target, call, id=f"{path.name}: {name}({args})"[:80]))
    return found


def _resolve(name: str):
    """The adt_fast callable a documented name means, or None (torch's, a method, a formula)."""
    module, _, attr = name.rpartition(".")
    if module:
        places = [module] if module.startswith("adt_fast") else []  # torch.load, attacks.eval_mode
    else:
        places = MODULES
    for where in places:
        target = getattr(importlib.import_module(where), attr, None)
        if callable(target):
            try:
                inspect.signature(target)
            except ValueError:  # a C++ function
                return None
            return target
    return None


def subcommand(name: str) -> argparse.ArgumentParser:
    return build_parser().commands.choices[name]


def options(name: str) -> set:
    return {s for a in subcommand(name)._actions for s in a.option_strings} - {"-h", "--help"}


@pytest.mark.parametrize("block", [b for language, b in fenced(README) if language == "python"])
def test_readme_python_example_runs(block):
    exec(compile(block, str(README), "exec"), {"__name__": "readme_example"})


@pytest.mark.parametrize("argv", command_lines())
def test_documented_command_parses(argv):
    parse(argv)  # a flag (by its full name only) or value the command does not take exits with 2


@pytest.mark.parametrize("command, doc", [("train", "training.md"), ("eval", "evaluation.md")])
def test_synopsis_lists_every_flag(command, doc):
    synopsis = next(b for _, b in fenced(ROOT / "docs" / doc) if b.startswith(f"adt-fast {command}") and "[--" in b)
    shown, taken = set(FLAG.findall(synopsis)), options(command)
    assert shown == taken, f"docs/{doc}'s synopsis lacks {sorted(taken - shown)}, names {sorted(shown - taken)}"


def test_every_eval_flag_has_a_row():
    rows = [line.split("|")[1] for line in (ROOT / "docs" / "evaluation.md").read_text().splitlines()
            if line.startswith("| `--")]
    missing = options("eval") - {flag for row in rows for flag in FLAG.findall(row)}
    assert not missing, f"docs/evaluation.md's flag table has no row for {sorted(missing)}"


def test_fields_named_as_left_at_their_defaults_are_defaults():
    """docs/training.md, "Resuming from Python": the fields it names as defaults are the defaults."""
    text = (ROOT / "docs" / "training.md").read_text()
    listed = re.search(r"every `TrainConfig` field left at its\s+default \((.*?)\) counts as", text, re.S).group(1)
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    named = re.findall(r"`(\w+)=([^`]+)`", listed)
    assert named
    for name, value in named:
        assert defaults[name] == ast.literal_eval(value), f"TrainConfig.{name} defaults to {defaults[name]!r}"


@pytest.mark.parametrize("target, call", written_calls())
def test_written_calls_bind_with_their_defaults(target, call):
    """A call the docs write out takes those arguments, and in a parameter list (names only before
    the keywords) a literal, `hinge=0.9`, is that parameter's default."""
    signature = inspect.signature(target)
    keywords = {k.arg: k.value for k in call.keywords}
    signature.bind(*call.args, **keywords)
    if not all(isinstance(arg, ast.Name) for arg in call.args):  # a call with values: `pgd(model, x, y, 8 / 255)`
        return
    for name, node in keywords.items():
        if isinstance(node, (ast.Constant, ast.UnaryOp)):
            written = ast.literal_eval(node)
            assert signature.parameters[name].default == written, f"{name}: the doc says {written!r}"
