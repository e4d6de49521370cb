"""The README's commands against the real CLI, so the README cannot drift from it.

Two layers:

1. Every ``mlpi ...`` command line of every README code block parses: it is split as a shell
   splits it (``\\`` continuations, ``#`` comments, ``&&``/``|``/``;`` chains, ``$`` prompts,
   ``NAME=value`` prefixes, redirections) and resolved through click down to its subcommand
   without running it, so an unknown option, a wrong choice or a missing argument fails,
   naming the README line. The option table's options, and the options that inline
   ``mlpi ...`` mentions name, exist on the command they document.
2. The commands that can run on a CPU-only machine without network or official data run, in
   the README's order, each one's output feeding the next (a run's id into ``--plan``,
   ``score``, ``results show``, ``--against``; the runs into ``results``, ``compare`` and
   ``submission build``), with the smallest substitutions that keep their meaning, each listed
   with its step: a tiny model where the README names a model file, a ResNet50-signature
   classifier and ten images it classifies right where it names ``--model resnet50``, short
   durations, ``~`` as a test folder. Every other command is in :data:`NOT_RUN` with the
   reason, and a test fails on a README command that is in neither, so a new one is decided on.

The README's first code block (install, then ``mlpi run``; ``python -m pytest``) is run as
written, in a fresh environment, by ``.ci/run``: it is not run from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_cli

from mlpi.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
MLCOMMONS = Path(__file__).resolve().parents[2] / "shared" / "mlcommons-inference"

# --------------------------------------------------------------------------- the README, read as a shell reads it

#: Fence languages whose every line is shell. A fence without a language holds commands only
#: on lines that start with one (its other lines are file trees and layouts).
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "zsh", "console"})
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<language>[\w+-]*)")
PLACEHOLDER = re.compile(r"<([A-Za-z][\w.:-]*)>")
#: ``2>&1``, ``2> err.txt``: redirections of streams other than stdout, dropped.
OTHER_STREAMS = re.compile(r"\s(?:[0-9]*[<>]&[0-9-]+|[02-9]>>?\s*[^\s;&|]+)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
#: What starts an ``mlpi`` command, after any ``NAME=value`` prefixes.
LAUNCHERS = (("mlpi",), ("python", "-m", "mlpi"), ("python3", "-m", "mlpi"))
SEPARATORS = frozenset({"&&", "||", "|", "|&", ";", "&", "(", ")"})
REDIRECTIONS = frozenset({">", ">>", ">|", "&>", "<", "<<", "<<<", ">&", "<&"})
STDOUT_REDIRECTIONS = frozenset({">", ">>", ">|", "&>"})


@dataclass(frozen=True)
class CodeBlock:
    """One fenced block: its position among the README's blocks, language and lines."""

    number: int
    language: str
    first_line: int  # the README line number of its first content line
    lines: tuple[str, ...]


@dataclass(frozen=True)
class ReadmeCommand:
    """One ``mlpi`` command of a code block, as the shell would run it."""

    line: int  # the README line it starts on
    block: int  # CodeBlock.number
    text: str  # its words as written, comments dropped: the key of RUN and NOT_RUN
    argv: tuple[str, ...]  # after ``mlpi``, redirections removed
    env: tuple[tuple[str, str], ...] = ()
    stdout_to: str | None = None

    @property
    def id(self) -> str:
        return f"L{self.line} {' '.join(self.argv)[:48]}"


def code_blocks(text: str) -> list[CodeBlock]:
    """Every fenced block, indented ones (inside a list item) included."""
    lines = text.splitlines()
    blocks: list[CodeBlock] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = tuple(line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[index + 1:end])
        blocks.append(CodeBlock(len(blocks), opening["language"].lower(), index + 2, body))
        index = end + 1
    return blocks


def logical_lines(block: CodeBlock) -> Iterator[tuple[int, str]]:
    """(README line number, line) with ``\\`` continuations joined and ``$`` prompts removed;
    in a ``console`` block only prompted lines (and their continuations) are commands."""
    pending: str | None = None
    start = 0
    for offset, raw in enumerate(block.lines):
        if pending is None:
            stripped = raw.lstrip()
            if stripped.startswith("$ "):
                raw = stripped[2:]
            elif block.language == "console":
                continue
            start, pending = block.first_line + offset, ""
        raw = raw.rstrip()
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        yield start, pending + raw
        pending = None
    if pending is not None:
        yield start, pending


def without_comment(line: str) -> str:
    """``line`` up to a ``#`` that starts a word outside quotes, as the shell reads it."""
    quote = ""
    escaped = False
    for position, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position]
    return line


def shell_words(line: str) -> list[str]:
    """The words of ``line`` with ``;&|<>()`` runs as words of their own (``&&``, ``>``).
    A ``<placeholder>`` (``results/<run-id>``) stays inside its word: the reader replaces it."""
    held = PLACEHOLDER.sub(lambda m: f"\x02{m.group(1)}\x03", without_comment(line))
    held = OTHER_STREAMS.sub(" ", held).replace(" 1>", " >")
    lexer = shlex.shlex(held, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    lexer.commenters = ""
    return [word.replace("\x02", "<").replace("\x03", ">") for word in lexer]


def split_commands(words: Sequence[str]) -> Iterator[list[str]]:
    """The simple commands of a chain (``a && b | c; d``)."""
    current: list[str] = []
    for word in words:
        if word in SEPARATORS:
            yield current
            current = []
        else:
            current.append(word)
    yield current


def as_mlpi_command(words: list[str], line: int, block: int) -> ReadmeCommand | None:
    """The ``mlpi`` command in ``words``, or None for any other program."""
    argv: list[str] = []
    stdout_to = None
    position = 0
    while position < len(words):
        word = words[position]
        if word in REDIRECTIONS:
            target = words[position + 1] if position + 1 < len(words) else None
            if word in STDOUT_REDIRECTIONS:
                stdout_to = target
            position += 2
            continue
        argv.append(word)
        position += 1
    env: list[tuple[str, str]] = []
    while argv and ASSIGNMENT.match(argv[0]):
        name, _, value = argv.pop(0).partition("=")
        env.append((name, value))
    for launcher in LAUNCHERS:
        if tuple(argv[:len(launcher)]) == launcher:
            return ReadmeCommand(line, block, " ".join(words), tuple(argv[len(launcher):]), tuple(env), stdout_to)
    return None


def commands_in(text: str) -> tuple[list[ReadmeCommand], list[tuple[int, str]]]:
    """The ``mlpi`` commands of every code block, and the lines naming ``mlpi`` that could not
    be split (an unclosed quote): those are reported, never skipped."""
    commands: list[ReadmeCommand] = []
    unreadable: list[tuple[int, str]] = []
    for block in code_blocks(text):
        if block.language not in SHELL_LANGUAGES and block.language != "":
            continue
        for number, line in logical_lines(block):
            if block.language == "" and not starts_a_command(line):
                continue
            try:
                words = shell_words(line)
            except ValueError as exc:
                if re.search(r"(^|[\s;&|(])mlpi\s", without_comment(line)):
                    unreadable.append((number, f"{line.strip()} ({exc})"))
                continue
            for simple in split_commands(words):
                command = as_mlpi_command(simple, number, block.number)
                if command is not None:
                    commands.append(command)
    return commands, unreadable


def starts_a_command(line: str) -> bool:
    words = line.split()
    while words and ASSIGNMENT.match(words[0]):
        words.pop(0)
    return any(tuple(words[:len(launcher)]) == launcher for launcher in LAUNCHERS)


README_TEXT = README.read_text(encoding="utf-8")
COMMANDS, UNREADABLE = commands_in(README_TEXT)
FIRST_BLOCK = code_blocks(README_TEXT)[0].number

# --------------------------------------------------------------------------- the CLI, asked without running anything


def resolve(argv: Sequence[str]) -> click.Context:
    """Parse ``mlpi ARGV`` down to its subcommand as the CLI would, converting every value,
    without invoking anything: a ``click.UsageError`` is what the user would be told."""
    context = main.make_context("mlpi", list(argv))
    command: click.Command = main
    while isinstance(command, click.Group):
        # click 8 keeps the subcommand's name apart from the other words it has not parsed
        rest = [*vars(context).get("_protected_args", ()), *context.args]
        if not rest:
            raise click.UsageError("Missing command.", context)
        name, sub, rest = command.resolve_command(context, rest)
        assert name is not None and sub is not None
        context = sub.make_context(name, rest, parent=context)
        command = sub
    return context


def leaf_command(words: Sequence[str]) -> tuple[click.Command, list[str]]:
    """The command that ``mlpi WORDS`` names (following subcommand names only) and the rest."""
    command: click.Command = main
    rest = list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            raise LookupError(f"'{' '.join(words)}': '{rest[0]}' is no subcommand of 'mlpi {command.name}'")
        command, rest = sub, rest[1:]
    return command, rest


def option_names(command: click.Command) -> dict[str, click.Parameter]:
    """Every spelling of every option of ``command`` (``--device``, ``-d``), to its parameter."""
    names: dict[str, click.Parameter] = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                names[name] = param
    return names


def command_path(command: ReadmeCommand) -> str:
    """``run``, ``results list``: the subcommand a README command runs."""
    _, rest = leaf_command(command.argv)
    return " ".join(command.argv[:len(command.argv) - len(rest)])


# --------------------------------------------------------------------------- layer 1: every command parses


def test_the_extractor_splits_lines_as_a_shell_does() -> None:
    readme = textwrap.dedent("""\
        text `mlpi run --not-a-command` in prose
        ```bash
        python -m venv v && . v/bin/activate && mlpi run -s Offline   # a comment; with a ' quote
        mlpi run --model-path m.onnx \\
            --quick
        MLPI_STORE=/tmp/s.sqlite mlpi results list | head -3; mlpi models --json > models.json
        echo 'mlpi run --inside quotes' && mlpi datasets foo#bar
        mlpi score results/<run-id>/x.json 2> err.txt >> log.txt 2>&1
        ```
          ```console
          $ mlpi backends
          mlpi output line, not a command
          ```
        ```
        mlpi/cli.py            a layout line (mlpi score) is no command
        mlpi sysinfo
        ```
        ```toml
        mlpi = "run"
        ```
        """)
    commands, unreadable = commands_in(readme)
    assert unreadable == []
    assert [(c.line, c.argv, c.env, c.stdout_to) for c in commands] == [
        (3, ("run", "-s", "Offline"), (), None),
        (4, ("run", "--model-path", "m.onnx", "--quick"), (), None),
        (6, ("results", "list"), (("MLPI_STORE", "/tmp/s.sqlite"),), None),
        (6, ("models", "--json"), (), "models.json"),
        (7, ("datasets", "foo#bar"), (), None),
        (8, ("score", "results/<run-id>/x.json"), (), "log.txt"),
        (11, ("backends",), (), None),
        (16, ("sysinfo",), (), None),
    ]
    assert commands[3].text == "mlpi models --json > models.json"
    assert commands[0].block == 0 and commands[-1].block == 2


def test_a_line_naming_mlpi_that_cannot_be_split_is_reported() -> None:
    commands, unreadable = commands_in("```bash\nmlpi run --model 'resnet50\n```\n")
    assert commands == [] and [line for line, _ in unreadable] == [2]


def test_the_readme_holds_a_plausible_number_of_commands_and_all_could_be_read() -> None:
    assert UNREADABLE == []
    assert len(COMMANDS) >= 40, [c.text for c in COMMANDS]
    paths = Counter(command_path(c) for c in COMMANDS)
    for path in ("run", "fetch", "score", "models", "datasets", "tune", "results list", "results show",
                 "results import", "sysinfo", "compare", "submission build", "submission check", "sweep", "backends"):
        assert paths[path] >= 1, (path, paths)
    assert paths["run"] >= 20, paths


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_readme_command_parses(command: ReadmeCommand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths in the command name nothing of the tree
    for name, value in command.env:
        monkeypatch.setenv(name, value)
    try:
        resolve(command.argv)
    except click.exceptions.Exit as exc:  # --help, --version: they print and end there
        assert exc.exit_code == 0
    except click.UsageError as exc:
        message = f"README.md line {command.line}: `{command.text}` does not parse: {exc.format_message()}"
        if NOT_RUN.get(command.text) == IN_PROGRESS:
            pytest.xfail(message)
        pytest.fail(message)


def test_the_parser_check_fails_what_the_cli_would_refuse() -> None:
    for argv, words in [
        (["run", "--store", "x.sqlite"], "No such option"),
        (["run", "--weights", "fake"], "'fake' is not one of"),
        (["score"], "Missing argument 'TARGET'"),
        (["results"], "Usage: mlpi results"),  # a group without its subcommand: its help, as a usage error
        (["results", "lst"], "No such command"),
        (["compare", "--format", "markdown", "--latest", "extra"], None),  # compare takes any selection words
        (["submission", "build", "--output", "t"], "Missing option"),
    ]:
        if words is None:
            resolve(argv)
            continue
        with pytest.raises(click.UsageError) as refused:
            resolve(argv)
        assert words in refused.value.format_message(), (argv, refused.value.format_message())


def option_tables(text: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """(subcommand documented, [(line, first cell)]) for each table whose first column is
    ``option``: it documents the subcommand most commands of the code block before it run."""
    lines = text.splitlines()
    blocks = code_blocks(text)
    commands, _ = commands_in(text)
    tables = []
    for index, line in enumerate(lines[:-1]):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if not cells or cells[0].lower() != "option" or not lines[index + 1].lstrip().startswith("|-"):
            continue
        block = [b for b in blocks if b.first_line <= index and b.language in SHELL_LANGUAGES][-1].number
        documented = Counter(command_path(c) for c in commands if c.block == block).most_common(1)[0][0]
        rows = []
        for number in range(index + 2, len(lines)):
            if not lines[number].lstrip().startswith("|"):
                break
            rows.append((number + 1, re.split(r"(?<!\\)\|", lines[number].strip())[1].strip()))
        tables.append((documented, rows))
    return tables


def option_table_problems(text: str) -> list[str]:
    """Options of the option tables that the documented command lacks, spellings of two
    different options joined as one (``--device/-b``), choices other than the command's."""
    problems = []
    for documented, rows in option_tables(text):
        names = option_names(leaf_command(documented.split())[0])
        for line, cell in rows:
            spans = re.findall(r"`([^`]+)`", cell)
            if not spans:
                problems.append(f"line {line}: no `--option` in {cell!r}")
            for span in spans:
                spelling, _, metavar = span.replace("\\|", "|").partition(" ")
                params = {names.get(name) for name in spelling.split("/")}
                if None in params or len(params) != 1:
                    problems.append(f"line {line}: `{span}` is not one option of 'mlpi {documented}'")
                    continue
                kind = params.pop().type  # type: ignore[union-attr]
                if isinstance(kind, click.Choice) and "|" in metavar and set(metavar.split("|")) != set(kind.choices):
                    problems.append(f"line {line}: `{span}`: the command's choices are {', '.join(kind.choices)}")
    return problems


def test_the_option_table_names_options_the_command_has() -> None:
    tables = option_tables(README_TEXT)
    assert [documented for documented, _ in tables] == ["run"]
    assert len(tables[0][1]) >= 20, tables
    assert option_table_problems(README_TEXT) == []


def test_the_option_table_check_finds_what_is_wrong() -> None:
    readme = textwrap.dedent("""\
        ```bash
        mlpi fetch resnet50
        mlpi run --model resnet50
        mlpi run --model-path m.onnx
        ```

        | option | meaning |
        |---|---|
        | `--device/-d DEV` | right |
        | `--store FILE` | mlpi run has none |
        | `--device/-b DEV` | two options as one |
        | `--weights official\\|random\\|fake` | a choice too many |
        | `--quick`, `--durations S` | the second is misspelt |
        | no option here | |
        """)
    assert [p.split(":")[0] for p in option_table_problems(readme)] == [
        "line 10", "line 11", "line 12", "line 13", "line 14"]


def inline_commands(text: str) -> list[tuple[int, str]]:
    """``mlpi ...`` code spans in the prose (outside code blocks), with their line numbers."""
    inside = set()
    for block in code_blocks(text):
        inside.update(range(block.first_line - 1, block.first_line + len(block.lines) + 1))
    return [(number, span) for number, line in enumerate(text.splitlines(), 1) if number not in inside
            for span in re.findall(r"`(mlpi [^`]+)`", line)]


def inline_problems(text: str) -> list[str]:
    """Subcommands and options that prose mentions (`mlpi tune --resume DIR`, fragments
    allowed) name but the CLI lacks."""
    problems = []
    for line, span in inline_commands(text):
        words = [w.strip("[],") for w in span.split()[1:]]
        try:
            command, rest = leaf_command(words)
        except LookupError as exc:
            problems.append(f"line {line}: {exc}")
            continue
        known = {**option_names(command), **option_names(main)}
        for word in rest:
            if word.startswith("-") and word.strip("-.") and word.partition("=")[0] not in known:
                problems.append(f"line {line}: `{span}`: 'mlpi {command.name}' has no option {word}")
    return problems


def test_inline_mentions_name_subcommands_and_options_that_exist() -> None:
    assert len(inline_commands(README_TEXT)) >= 20
    assert inline_problems(README_TEXT) == []


def test_the_inline_check_finds_what_is_wrong() -> None:
    readme = textwrap.dedent("""\
        `mlpi tune --resume DIR` and `mlpi sweep --executor ray --address HEAD:6379 ...` are fine;
        `mlpi run --store FILE` is not, nor `mlpi results lst`, nor `mlpi compare --format=html --latst`.
        ```bash
        mlpi run --not-checked-here
        ```
        """)
    assert inline_problems(readme) == [
        "line 2: `mlpi run --store FILE`: 'mlpi run' has no option --store",
        "line 2: 'results lst': 'lst' is no subcommand of 'mlpi results'",
        "line 2: `mlpi compare --format=html --latst`: 'mlpi compare' has no option --latst",
    ]


# --------------------------------------------------------------------------- which commands run here, and why not the others

IN_PROGRESS = "in progress: the section is being written"
CI_RUNS_IT = ".ci/run runs the README's first code block exactly as written, in a fresh venv with an empty cache"
NETWORK = "downloads the official file from zenodo: needs the network"
OFFICIAL_DATA = ("needs the official data set, and the official weights (an accuracy run refuses random ones); "
                 "tests/test_{}.py tests that data set on small files made for it")
SERVER_SEARCH = ("a Server search: about 12 trials of process start, calibration and LoadGen, 80 s on two cores "
                 "even at 1 s trials; tests/test_tune.py runs searches")

CALIBRATION_IMAGES = ("needs the 500 ImageNet images of MLPerf's calibration list, and quantising ResNet50 on 500 "
                      "images takes over a minute on two cores; tests/test_precision.py quantises the random-weights "
                      "ResNet50 from a folder of images named as the list names them")

#: README commands that do not run here, with the reason. Keyed by the command as written.
NOT_RUN: dict[str, str] = {
    "mlpi fetch resnet50": NETWORK,
    "mlpi run --model resnet50 --dataset imagenet --dataset-path ~/imagenet-val --mode accuracy":
        OFFICIAL_DATA.format("imagenet"),
    "mlpi run --model retinanet --weights random -s Offline --quick":
        "RetinaNet's graph takes ~9 s an image on two CPU cores: minutes per scenario even with --quick",
    "mlpi run --model retinanet --dataset openimages --dataset-path ~/openimages --mode accuracy":
        OFFICIAL_DATA.format("retinanet"),
    "mlpi run --model bert-99 --weights random -s Offline -s SingleStream --quick":
        "BERT-large: 1.34 GB of random weights to build, then seconds a sample (~9 s a batch of 4, the README's "
        "benchmark says): minutes; tests/test_bert_graph.py and tests/test_squad.py test BERT",
    "mlpi run --model bert-99 --dataset squad --dataset-path ~/squad --mode accuracy": OFFICIAL_DATA.format("squad"),
    "mlpi run --model 3d-unet-99 --weights random -s SingleStream -s Offline --quick":
        "3D-UNet takes ~11 s a window on two CPU cores: minutes per scenario even with --quick",
    "mlpi run --model 3d-unet-99 --dataset kits19 --dataset-path ~/kits19 --mode accuracy": OFFICIAL_DATA.format("unet3d"),
    "mlpi run --model rnnt --weights random -s SingleStream -s Offline --quick":
        "90 s a scenario even at --duration 1 and --count 4 on two cores (the encoder's LSTMs of 1,024 over 6.25 s "
        "of audio a sample); tests/test_rnnt.py runs RNN-T",
    "mlpi run --model rnnt --dataset librispeech --dataset-path ~/librispeech --mode accuracy":
        OFFICIAL_DATA.format("rnnt"),
    "mlpi run --model dlrm-v2-99 --weights random -s Offline -s Server --quick":
        "30 s even at --duration 1 and --count 16 (26 embedding tables built and loaded per test); "
        "tests/test_dlrm.py runs DLRM-v2",
    "mlpi run --model dlrm-v2-99 --weights random -M shards=4 -b qaic -d qaic:0-3 -o max_batch_size=1024 --quick":
        "two minutes even at --duration 1 and --count 16 (four table shards on four simulated cards); "
        "tests/test_dlrm.py runs sharded DLRM-v2 on qaic",
    "mlpi tune --model resnet50 -b onnxruntime -s Offline -s Server": SERVER_SEARCH,
    "mlpi tune --model resnet50 -b onnxruntime -s Server --batch-sizes 1,8,32 --instances 1,2":
        SERVER_SEARCH + ", and each of the 6 grid cells searches",
    "mlpi tune --model resnet50 -b onnxruntime -s Server --confirm-duration 60": SERVER_SEARCH,
    "mlpi run --profile PROFILE -s Server --batch-size 4":
        "needs a profile with Server settings, which only a Server search makes (see the tunes above)",
    "mlpi sweep -b onnxruntime,openvino -d cpu --batch-size 1,8 --instances 1,2 -s Offline,Server --model resnet50 --quick":
        "16 cells, each a run of its own: minutes even on a tiny model; tests/test_sweep.py runs sweeps",
    "mlpi quantize --model resnet50 --precision int8 --calibration-path ~/imagenet-calibration": CALIBRATION_IMAGES,
    "mlpi run --model resnet50 --precision int8 --calibration-path ~/imagenet-calibration -b openvino":
        CALIBRATION_IMAGES,
    "mlpi run --backend tensorrt --device cuda --model resnet50 --precision fp16 -s Offline":
        "needs an NVIDIA GPU with TensorRT; tests/test_tensorrt_backend.py runs the backend against a fake",
}

# --------------------------------------------------------------------------- layer 2: how the commands in RUN run


@dataclass
class Outcome:
    """What one command gave back, and the run directory it reported (``results: DIR``)."""

    rc: int
    stdout: str
    stderr: str
    argv: list[str]
    run_dir: Path | None = None
    skipped: str | None = None
    seconds: float = 0.0

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def result(self) -> dict[str, Any]:
        assert self.run_dir is not None, f"no 'results: DIR' line in:\n{self.output}"
        return json.loads((self.run_dir / "result.json").read_text())

    def tests(self) -> list[tuple[str, str]]:
        return sorted((t["scenario"], t["mode"]) for t in self.result()["tests"])


@dataclass
class Chain:
    """A folder the commands run in (also ``~``), and what they gave back."""

    work: Path
    facts: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)


Expectation = Callable[[Outcome, Chain], None]


@dataclass(frozen=True)
class Step:
    """How a README command runs here: ``swap`` replaces whole words, ``fill`` replaces text
    inside a word (a ``{fact}`` is an earlier step's run id), ``add`` appends words; ``why``
    says why, ``remember`` names the run directory for later steps."""

    chain: str
    expect: Expectation
    swap: tuple[tuple[str, tuple[str, ...]], ...] = ()
    fill: tuple[tuple[str, str], ...] = ()
    add: tuple[str, ...] = ()
    why: str = ""
    remember: str | None = None
    needs: Callable[[], str | None] | None = None  # why the step cannot run here (a module missing), or None
    known_failure: str | None = None  # a CLI bug that makes it fail today: the test is expected to fail, strictly


def module_missing(name: str) -> str | None:
    try:
        __import__(name)
    except ImportError:
        return f"{name} is not installed"
    return None


def mlcommons_missing() -> str | None:
    return None if MLCOMMONS.is_dir() else f"no MLCommons checkout at {MLCOMMONS}"


def passed_or_invalid(out: Outcome) -> None:
    """Exit 0; or 3 where LoadGen judged a shortened test INVALID or an audit's timing check
    failed (a second-long run on a shared two-core machine can miss either by noise)."""
    assert "Traceback" not in out.output, out.output
    assert out.rc in (0, 3), out.output
    if out.rc == 3:
        assert "INVALID" in out.stdout or "FAIL" in out.stdout, out.output


def ran(*tests: tuple[str, str]) -> Expectation:
    def expect(out: Outcome, chain: Chain) -> None:
        passed_or_invalid(out)
        assert out.tests() == sorted(tests)
        assert out.run_dir is not None and out.run_dir.parent == chain.work / "results"
    return expect


EVERY_SCENARIO = ("MultiStream", "Offline", "Server", "SingleStream")


def readme_run_layout() -> dict[str, str]:
    """The README's picture of a run folder ("### Results"): each entry's name to what it says."""
    block = next(b for b in code_blocks(README_TEXT) if b.lines and b.lines[0] == "results/<run-id>/")
    entries: dict[str, str] = {}
    name = ""
    for line in block.lines[1:]:
        if line[2:3].strip():  # an entry starts at the left column; what it holds may go on below
            name, _, line = line.strip().partition(" ")
            entries[name] = ""
        entries[name] += " " + line.strip()
    return entries


def expect_all_scenarios_both_modes(out: Outcome, chain: Chain) -> None:
    """Eight tests, each folder holding the files the README's picture of a run shows, and
    result.json the fields it names."""
    ran(*((s, m) for s in EVERY_SCENARIO for m in ("performance", "accuracy")))(out, chain)
    assert out.run_dir is not None
    layout = readme_run_layout()
    assert {"plan.json", "result.json", "<Scenario>/<performance|accuracy>/"} <= set(layout), layout
    test_files = re.findall(r"[\w.]+\.(?:txt|json|conf|log)", layout["<Scenario>/<performance|accuracy>/"])
    assert len(test_files) >= 6, test_files
    for scenario in EVERY_SCENARIO:
        for mode in ("performance", "accuracy"):
            folder = out.run_dir / scenario / mode
            assert [f for f in test_files if not (folder / f).is_file()] == [], folder
    fields = [f.strip(" []") for f in re.sub(r"\([^)]*\)", "", layout["result.json"]).split(",")]
    assert len(fields) >= 10 and set(fields) - set(out.result()) == set(), fields
    assert (out.run_dir / "plan.json").is_file()


def expect_server_with_given_target(out: Outcome, chain: Chain) -> None:
    ran(("Server", "performance"))(out, chain)
    assert out.run_dir is not None
    user_conf = (out.run_dir / "Server" / "performance" / "user.conf").read_text()
    assert re.search(r"\.Server\.target_qps = 2000(\.0*)?$", user_conf, re.MULTILINE), user_conf
    result = out.result()
    assert result["settings"]["instances"] == 2 and result["settings"]["target_qps"] == 2000, result["settings"]
    assert result["tests"][0]["batch_size"] == 8 and result["tests"][0]["sessions"] == 2, result["tests"][0]


def expect_null_backend_elsewhere(out: Outcome, chain: Chain) -> None:
    passed_or_invalid(out)
    assert out.tests() == [("SingleStream", "performance")]
    assert out.result()["backend"]["name"] == "null"
    assert out.run_dir is not None and out.run_dir.parent == chain.work / "from-server" / "results"


def expect_fixed_shape(out: Outcome, chain: Chain) -> None:
    ran(("Offline", "performance"))(out, chain)
    assert out.run_dir is not None
    inputs = json.loads((out.run_dir / "plan.json").read_text())["model"]["inputs"]
    assert [(i["name"], i["shape"]) for i in inputs] == [("images", [None, 3, 640, 640])]
    assert out.result()["settings"]["shapes"] == {"images": "?x3x640x640"}


def expect_plan_rerun(out: Outcome, chain: Chain) -> None:
    ran(("Offline", "performance"))(out, chain)
    assert out.run_dir is not None and out.run_dir.name != chain.facts["plain"]  # a new directory
    original = json.loads((chain.work / "results" / chain.facts["plain"] / "plan.json").read_text())
    again = json.loads((out.run_dir / "plan.json").read_text())
    assert again["model"] == original["model"]


USER_CONF_QPS = 20000  # what the user.conf of the README's --user-conf line sets (mlpi would calibrate)


def expect_user_conf_won(out: Outcome, chain: Chain) -> None:
    """The user's line replaced mlpi's under the model's exact key, and LoadGen took it."""
    ran(("Offline", "performance"))(out, chain)
    result = out.result()
    assert Path(result["settings"]["user_conf"]["path"]) == chain.work / "user.conf", result["settings"]
    assert out.run_dir is not None
    written = (out.run_dir / "Offline" / "performance" / "user.conf").read_text()
    assert written.rstrip().endswith(f"resnet50.Offline.target_qps = {USER_CONF_QPS}"), written
    assert float(result["tests"][0]["loadgen_settings"]["target_qps"]) == USER_CONF_QPS


def expect_mlperf_conf_applied(out: Outcome, chain: Chain) -> None:
    ran(("Offline", "performance"))(out, chain)
    result = out.result()
    assert Path(result["settings"]["mlperf_conf"]["path"]) == chain.work / "mlperf.conf", result["settings"]
    assert out.run_dir is not None
    assert (out.run_dir / "Offline" / "performance" / "user.conf").read_text().startswith("# from --mlperf-conf")


def lists_runs(*listed: str, absent: Sequence[str] = ()) -> Expectation:
    def expect(out: Outcome, chain: Chain) -> None:
        assert out.rc == 0, out.output
        for fact in listed:
            assert chain.facts[fact] in out.stdout, (fact, out.stdout)
        for fact in absent:
            assert chain.facts[fact] not in out.stdout, (fact, out.stdout)
    return expect


def expect_show(out: Outcome, chain: Chain) -> None:
    assert out.rc == 0, out.output
    assert chain.facts["plain"] in out.stdout and "Offline" in out.stdout


def expect_one_import(out: Outcome, chain: Chain) -> None:
    assert out.rc == 0, out.output
    counts = [line for line in out.stdout.splitlines() if " imported, " in line]
    assert len(counts) == 1 and counts[0].startswith("1 imported, 0 already in the store, 0 skipped"), out.stdout
    assert (chain.work / "results" / chain.facts["elsewhere"] / "result.json").is_file()


def names_in_table(heading: str) -> list[str]:
    """The backticked names in the first column of the README table under ``| heading |``."""
    lines = README_TEXT.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^\|\s*{heading}\s*\|", line))
    names = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        names += re.findall(r"`([^`]+)`", line.split("|")[1])
    return names


def expect_every_readme_model(out: Outcome, chain: Chain) -> None:
    assert out.rc == 0, out.output
    models = names_in_table("model")
    assert len(models) >= 10, models
    assert [m for m in models if m not in out.stdout] == []


def expect_every_readme_dataset(out: Outcome, chain: Chain) -> None:
    assert out.rc == 0, out.output
    datasets = re.findall(r"^- `([a-z0-9]+)`:", README_TEXT, re.MULTILINE)
    assert len(datasets) >= 8, datasets
    assert [d for d in datasets if d not in out.stdout] == []


def expect_every_readme_backend(out: Outcome, chain: Chain) -> None:
    assert out.rc == 0, out.output
    backends = [name for name in names_in_table("backend") if " " not in name]
    assert "onnxruntime" in backends and "null" in backends, backends
    assert [b for b in backends if b not in out.stdout] == []


def expect_backend_options(out: Outcome, chain: Chain) -> None:
    """The JSON lists each backend's options: the ones the README names ("ONNX Runtime
    options: ...", and every ``-o key=...``) among them."""
    assert out.rc == 0, out.output
    options = {b["name"]: set(b["options"]) for b in json.loads(out.stdout)}
    for backend, runtime in (("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO")):
        sentence = re.search(rf"{runtime} options: (.*?)\.\s", README_TEXT, re.DOTALL)
        assert sentence is not None, runtime
        named = re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", sentence.group(1)))
        assert len(named) >= 4 and set(named) - options[backend] == set(), (backend, named)
    given = set(re.findall(r"-o ([a-z_]+)[=` ]", README_TEXT)) - {"key"}  # `-o key=value`: the syntax
    assert {"max_batch_size", "performance_hint"} <= given
    assert given - set().union(*options.values()) == set()


def expect_system_description(out: Outcome, chain: Chain) -> None:
    assert out.rc == 0, out.output
    written = json.loads((chain.work / "my-system.json").read_text())
    assert {"division", "submitter", "system_name", "host_processor_core_count", "accelerators_per_node"} <= set(written)


def expect_retinanet_map(out: Outcome, chain: Chain) -> None:
    assert out.rc == 0, out.output
    assert out.stdout.splitlines()[0] == chain.facts["retinanet_line"], out.stdout


def expect_accuracy_score(out: Outcome, chain: Chain) -> None:
    assert out.rc == 0, out.output
    assert out.stdout.splitlines()[0] == "accuracy=100.000%, good=10, total=10", out.stdout


def expect_score_written(out: Outcome, chain: Chain) -> None:
    expect_accuracy_score(out, chain)
    written = chain.work / "results" / chain.facts["audited"] / "Offline" / "accuracy" / "accuracy.txt"
    assert written.read_text().splitlines()[0] == "accuracy=100.000%, good=10, total=10"


def expect_audited(out: Outcome, chain: Chain) -> None:
    ran(("Offline", "accuracy"), ("Offline", "performance"))(out, chain)
    audits = {(a["test"], a["scenario"]) for a in out.result()["audits"]}
    assert audits == {("TEST01", "Offline"), ("TEST04", "Offline")}
    assert out.run_dir is not None
    for test, names in {"TEST01": ("verify_accuracy.txt", "verify_performance.txt"),
                        "TEST04": ("verify_performance.txt",)}.items():
        for name in names:  # the folders the README shows
            assert (out.run_dir / "Offline" / test / name).is_file()
        assert (out.run_dir / "Offline" / test / "performance" / "run_1" / "mlperf_log_summary.txt").is_file()


def expect_audit_only(out: Outcome, chain: Chain) -> None:
    passed_or_invalid(out)
    result = out.result()
    assert result["tests"] == []  # only the audit runs
    assert [(a["test"], a["reference_run"]) for a in result["audits"]] == [("TEST01", chain.facts["audited"])]


def expect_markdown_comparison(out: Outcome, chain: Chain) -> None:
    """One markdown row per resnet50 Offline performance run, the baseline's among them."""
    assert out.rc == 0, out.output
    table = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.stdout.splitlines()
             if line.startswith("|")]
    header, rule, rows = table[0], table[1], table[2:]
    assert header[:2] == ["model", "scenario"] and set(rule[0]) == {"-"}, out.stdout
    assert {row[header.index("run")] for row in rows} == {chain.facts["resnet50"], chain.facts["audited"]}, out.stdout
    assert {row[header.index("backend")] for row in rows} == {"onnxruntime"}
    assert "baseline" in {row[header.index("speedup")] for row in rows}, out.stdout


def expect_submission_tree(out: Outcome, chain: Chain) -> None:
    assert out.rc == 0, out.output
    base = Path("submission") / "open" / "ACME"
    assert f"wrote {base}" in out.stdout, out.stdout
    base = chain.work / base
    assert (base / "systems" / "acme_box_onnxruntime.json").is_file()
    folders = list((base / "results" / "acme_box_onnxruntime").iterdir())
    assert len(folders) == 1 and json.loads((base / "model_mapping.json").read_text()) == {folders[0].name: "resnet"}
    for name in ("performance/run_1/mlperf_log_summary.txt", "accuracy/accuracy.txt", "accuracy/mlperf_log_accuracy.json",
                 "measurements.json", "user.conf", "README.md"):  # the layout the README shows
        assert (folders[0] / "Offline" / name).is_file(), name


def expect_checker_verdict(out: Outcome, chain: Chain) -> None:
    """MLCommons' checker ran, unpatched, and refused what it must (1 s tests, ten images);
    a development tree is never called ready; the log and CSV lie beside the tree."""
    assert "Traceback" not in out.output and out.rc == 3, out.output
    assert "development tree" in out.stdout and "Test duration less than 600s" in out.stdout, out.stdout
    assert "checker: SUMMARY: submission has errors" in out.stdout and "verdict: NOT READY" in out.stdout, out.stdout
    assert (chain.work / "submission.checker.log").is_file() and (chain.work / "submission.summary.csv").is_file()


def expect_tuned_profile(out: Outcome, chain: Chain) -> None:
    assert "Traceback" not in out.output and out.rc in (0, 3), out.output
    profile = chain.work / "results" / "tunes" / "resnet50-onnxruntime-cpu" / "profile.json"  # where the README says
    assert f"profile: {profile}" in out.stdout, out.stdout
    scenarios = json.loads(profile.read_text())["scenarios"]
    assert sorted(scenarios) == ["MultiStream", "Offline", "SingleStream"]  # the edge category's


def expect_profile_run(out: Outcome, chain: Chain) -> None:
    ran(("MultiStream", "performance"), ("Offline", "performance"), ("SingleStream", "performance"))(out, chain)
    assert out.run_dir is not None
    recorded = json.loads((out.run_dir / "plan.json").read_text())["extra"]["profile"]
    assert Path(recorded["path"]) == chain.work / "results" / "tunes" / "resnet50-onnxruntime-cpu" / "profile.json"


SHORT = ("--duration", "0.3")
CLASSIFIER = ("--model-path", "classifier.onnx", "--dataset", "numpy", "--dataset-path", "images.npz")
AS_RESNET50 = "a ResNet50-signature classifier and ten images it classifies right stand in for the official file and ImageNet"
AUDIT_LENGTH = "; 1 s tests (an audit compares its timing with the run's)"

#: How the README commands that run here run. Their order is the order they run in.
RUN: dict[str, Step] = {
    # -- basics: the listings, runs of a model file, and what reads the results root
    "mlpi models": Step("basics", expect_every_readme_model),
    "mlpi datasets": Step("basics", expect_every_readme_dataset),
    "mlpi backends": Step("basics", expect_every_readme_backend),
    "mlpi backends --json": Step("basics", expect_backend_options),
    "mlpi run --model-path model.onnx": Step(
        "basics", ran(("Offline", "performance")), add=SHORT, remember="plain", why="0.3 s tests"),
    "mlpi run --model-path model.onnx -s all --mode both": Step(
        "basics", expect_all_scenarios_both_modes, add=(*SHORT, "--count", "8"), why="0.3 s tests on 8 samples"),
    "mlpi run --model-path model.onnx -s Server --target-qps 2000 --batch-size 8 --instances 2": Step(
        "basics", expect_server_with_given_target, add=SHORT, remember="server", why="0.3 s tests"),
    "mlpi run --backend null --model-path model.onnx -s SingleStream --quick": Step(
        "basics", expect_null_backend_elsewhere, swap=(("--quick", SHORT),), add=("--output", "~/from-server/results"),
        remember="elsewhere", why="0.3 s instead of 10 s; written where 'results import' below finds it"),
    "mlpi run --model-path detector.onnx --shape images=?x3x640x640 --quick": Step(
        "basics", expect_fixed_shape, swap=(("--quick", SHORT),), add=("--count", "8"),
        why="detector.onnx takes images [batch, 3, h, w]; 0.3 s instead of 10 s; 8 samples (4.9 MB each)"),
    "mlpi run --model-path model.onnx --precision fp16": Step(
        "basics", ran(("Offline", "performance")), add=SHORT, why="0.3 s tests"),
    "mlpi run --model-path model.onnx --precision int8 --calibration dataset": Step(
        "basics", ran(("Offline", "performance")), add=(*SHORT, "-P", "calibration_count=8"),
        why="0.3 s tests; 8 calibration samples instead of 500"),
    "mlpi run --plan results/<run-id>/plan.json": Step(
        "basics", expect_plan_rerun, fill=(("<run-id>", "{plain}"),)),
    "mlpi run --model resnet50 -s Offline --user-conf user.conf": Step(
        "basics", expect_user_conf_won, add=(*CLASSIFIER, *SHORT),
        why=AS_RESNET50 + "; 0.3 s tests; user.conf sets *.Offline.target_qps"),
    "mlpi run --model resnet50 -s Offline --mlperf-conf mlperf.conf": Step(
        "basics", expect_mlperf_conf_applied, add=(*CLASSIFIER, *SHORT), needs=mlcommons_missing,
        why=AS_RESNET50 + "; 0.3 s tests; mlperf.conf is the pinned MLCommons checkout's loadgen/mlperf.conf"),
    "mlpi results list --backend openvino --scenario Offline --since 2025-01-01": Step(
        "basics", lists_runs("plain", absent=("server",)), swap=(("openvino", ("onnxruntime",)),),
        why="the runs here are onnxruntime's"),
    "mlpi results show 20250101-1200": Step(
        "basics", expect_show, swap=(("20250101-1200", ("{plain}",)),), why="the id of the first run above"),
    "mlpi results import ~/from-server/results": Step("basics", expect_one_import),
    "mlpi score --model retinanet --dataset openimages --dataset-path ~/openimages mlperf_log_accuracy.json": Step(
        "basics", expect_retinanet_map, needs=lambda: module_missing("pycocotools"),
        why="~/openimages is an OpenImages-layout set and the log answers it with a mAP known by construction"),
    # -- resnet50: runs of the registered model, audits, scoring, compare, a submission tree
    "mlpi run --model resnet50 -s all": Step(
        "resnet50", ran(*((s, "performance") for s in EVERY_SCENARIO)), add=(*CLASSIFIER, *SHORT),
        remember="resnet50", why=AS_RESNET50 + "; 0.3 s tests"),
    "mlpi run -m resnet50 -s Offline --mode both --audit TEST01 --audit TEST04": Step(
        "resnet50", expect_audited, add=(*CLASSIFIER, "--duration", "1"), remember="audited",
        why=AS_RESNET50 + AUDIT_LENGTH),
    "mlpi run -m resnet50 -s Offline --audit TEST01 --against 20261130-1209": Step(
        "resnet50", expect_audit_only, swap=(("20261130-1209", ("{audited}",)),), add=(*CLASSIFIER, "--duration", "1"),
        why=AS_RESNET50 + AUDIT_LENGTH + "; against the audited run above"),
    "mlpi score results/<run-id>": Step("resnet50", expect_accuracy_score, fill=(("<run-id>", "{audited}"),)),
    "mlpi score results/<run-id> --write": Step("resnet50", expect_score_written, fill=(("<run-id>", "{audited}"),)),
    "mlpi compare model=resnet50 scenario=Offline --baseline backend=onnxruntime --format markdown": Step(
        "resnet50", expect_markdown_comparison),
    "mlpi sysinfo --json > my-system.json": Step("resnet50", expect_system_description),
    "mlpi submission build --output submission --division closed --submitter ACME --system acme_box_onnxruntime "
    "--category edge --system-file system.json --model resnet50": Step(
        "resnet50", expect_submission_tree, swap=(("closed", ("open",)),),
        add=("-s", "Offline", "--allow-short-runs", "--allow-subset", "--measurements-file", "measurements.json"),
        why="the open division and Offline: a closed edge tree needs accuracy runs and both audits in SingleStream "
            "and MultiStream too, which the README's runs make for Offline only; short runs of ten images make a "
            "development tree; the classifier is not the official file, so its measurements file is given"),
    "mlpi submission check submission --mlcommons ~/inference": Step(
        "resnet50", expect_checker_verdict, needs=mlcommons_missing,
        why="~/inference is the pinned MLCommons checkout"),
    # -- tune: the edge category (no Server search), then a run with its profile
    "mlpi tune --model resnet50 -b onnxruntime --category edge": Step(
        "tune", expect_tuned_profile, add=(*CLASSIFIER, "--trial-duration", "1", "--confirm-duration", "1"),
        why=AS_RESNET50 + "; 1 s trials and confirming runs"),
    "mlpi run --profile results/tunes/resnet50-onnxruntime-cpu/profile.json": Step(
        "tune", expect_profile_run, add=("--duration", "1"), why="1 s tests"),
}


def why_not_run(command: ReadmeCommand) -> str | None:
    """The reason a README command is not run here, or None where RUN runs it."""
    return CI_RUNS_IT if command.block == FIRST_BLOCK else NOT_RUN.get(command.text)


def test_every_readme_command_is_run_here_or_says_why_not() -> None:
    """A new README command fails here until it is run above or listed in NOT_RUN."""
    undecided, twice = [], []
    for command in COMMANDS:
        decisions = (command.text in RUN) + (why_not_run(command) is not None)
        if decisions != 1:
            (undecided if decisions == 0 else twice).append(f"README.md line {command.line}: {command.text}")
    assert undecided == [] and twice == []
    written = {c.text for c in COMMANDS if c.block != FIRST_BLOCK}
    assert [text for text in (*RUN, *NOT_RUN) if text not in written] == []  # no stale entries
    assert [c.text for c in COMMANDS if c.block == FIRST_BLOCK] == ["mlpi run"]
    assert sum(c.text in RUN for c in COMMANDS) >= 20
    # a substitution says why: the README's command is what a reader runs
    assert [text for text, step in RUN.items() if (step.swap or step.add) and not step.why] == []


# --------------------------------------------------------------------------- layer 2: the chains

#: Commands that start LoadGen run in a process of their own, as a user's shell runs them;
#: the others run in this process (the same click code, without a Python start each).
OWN_PROCESS = frozenset({"run", "tune", "sweep"})


def readme_command(text: str) -> ReadmeCommand:
    """The README command written ``text`` (a RUN key no longer in the README fails the
    coverage test above; here it runs as if still there)."""
    return next((c for c in COMMANDS if c.text == text), ReadmeCommand(0, -1, text, tuple(shell_words(text))[1:]))


def argv_here(command: ReadmeCommand, step: Step, chain: Chain) -> list[str]:
    """The README's words with the step's substitutions, each of which must apply."""
    words = list(command.argv)
    for old, new in step.swap:
        assert old in words, f"README.md line {command.line}: '{old}' is gone from `{command.text}`: update RUN"
        position = words.index(old)
        words[position:position + 1] = [w.format(**chain.facts) for w in new]
    for old, new in step.fill:
        assert any(old in w for w in words), f"README.md line {command.line}: no '{old}' in `{command.text}`"
        words = [w.replace(old, new.format(**chain.facts)) for w in words]
    words += step.add
    # ``~`` is the chain's folder, expanded as the shell expands it
    return [str(chain.work / w[2:]) if w.startswith("~/") else w for w in words]


@contextlib.contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    """``contextlib.chdir``, which Python 3.10 lacks."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def execute(command: ReadmeCommand, step: Step, chain: Chain) -> Outcome:
    try:
        argv = argv_here(command, step, chain)
    except KeyError as missing:
        return Outcome(-1, "", "", [], skipped=f"needs {missing} from a step that failed")
    missing = step.needs() if step.needs else None
    if missing:
        return Outcome(-1, "", "", argv, skipped=missing)
    target = chain.work / command.stdout_to if command.stdout_to else None
    if target is not None and not target.parent.is_dir():  # the shell opens it before mlpi starts
        return Outcome(1, "", f"{command.stdout_to}: No such file or directory", argv)
    env = dict(command.env)
    started = time.monotonic()
    if argv[0] in OWN_PROCESS:
        proc = run_cli(argv, cwd=chain.work, env=env, timeout=300)
        out = Outcome(proc.returncode, proc.stdout, proc.stderr, argv)
    else:
        with working_directory(chain.work):
            result = CliRunner().invoke(main, argv, env={**env, "MLPI_PLUGINS": None, "COLUMNS": "400"})
        out = Outcome(result.exit_code, result.stdout, result.stderr, argv)
    out.seconds = time.monotonic() - started
    if target is not None:
        target.write_text(out.stdout)
    reported = re.findall(r"^results: (.+)$", out.stdout, re.MULTILINE)
    if reported:
        out.run_dir = (chain.work / reported[-1]).resolve()
        if step.remember:
            chain.facts[step.remember] = out.run_dir.name
    return out


def run_chain(name: str, chain: Chain, before: dict[str, Callable[[Path], None]] | None = None) -> Chain:
    """Run chain ``name``'s steps in order; ``before[text]`` prepares what the user would
    have made by hand before that command."""
    for text, step in RUN.items():
        if step.chain == name:
            if before and text in before:
                before[text](chain.work)
            chain.outcomes[text] = execute(readme_command(text), step, chain)
    return chain


def write_detector(path: Path) -> None:
    """``images [batch, 3, h, w]`` -> its per-channel mean: an image model whose size the file leaves open."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("ReduceMean", ["images"], ["scores"], axes=[2, 3], keepdims=0)], "detector",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def write_classifier_files(work: Path) -> None:
    """``classifier.onnx`` (ResNet50's signature) and ``images.npz``: ten images it gets right."""
    from mlpi.testing.tiny_models import resnet_signature_classifier

    resnet_signature_classifier(work / "classifier.onnx")
    labels = np.arange(0, 1000, 100)
    images = np.zeros((len(labels), 3, 224, 224), np.float32)
    images.reshape(len(labels), -1)[np.arange(len(labels)), labels + 1] = 1.0  # the model's class k+1 is ImageNet's k
    np.savez(work / "images.npz", input_tensor_0=images, labels=labels.astype(np.int64))


@pytest.fixture(scope="module")
def basics(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    from mlpi.testing import openimages_fixture
    from mlpi.testing.tiny_models import matmul_model

    work = tmp_path_factory.mktemp("readme-basics")
    matmul_model(work / "model.onnx")
    write_detector(work / "detector.onnx")
    write_classifier_files(work)
    (work / "user.conf").write_text(f"# my settings\n*.Offline.target_qps = {USER_CONF_QPS}\n")
    if MLCOMMONS.is_dir():
        shutil.copyfile(MLCOMMONS / "loadgen" / "mlperf.conf", work / "mlperf.conf")
    dataset = openimages_fixture.write_openimages(work / "openimages")
    case = openimages_fixture.known_map_case(dataset)
    openimages_fixture.write_accuracy_log(work / "mlperf_log_accuracy.json", case.entries)
    return run_chain("basics", Chain(work, facts={"retinanet_line": case.line}))


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    work = tmp_path_factory.mktemp("readme-resnet50")
    write_classifier_files(work)
    (work / "measurements.json").write_text(json.dumps({"retraining": "No", "weight_transformations": "No"}))
    if MLCOMMONS.is_dir():
        (work / "inference").symlink_to(MLCOMMONS)
    build = next(text for text in RUN if text.startswith("mlpi submission build"))
    return run_chain("resnet50", Chain(work), before={
        build: lambda folder: fill_system_description(folder / "my-system.json", folder / "system.json")})


def fill_system_description(detected: Path, filled: Path) -> None:
    """What the README asks of the user: 'mlpi sysinfo --json' output with the empty fields
    filled (a machine without accelerators); division, submitter and type come from options."""
    from mlpi.submission.system import FILLED_FIELDS

    description = json.loads(detected.read_text()) if detected.is_file() else {}
    for key in ("division", "submitter", "system_type"):
        description.pop(key, None)
    # mlpi's own detail beside MLPerf's fields (the accelerator list, package versions) stays:
    # --system-file takes sysinfo's output as it is
    for key in FILLED_FIELDS:
        if key in ("division", "submitter", "system_type") or description.get(key) not in ("", None):
            continue
        description[key] = (0 if key == "accelerators_per_node" else "N/A" if key.startswith("accelerator")
                            else "available" if key == "status" else "1" if key == "host_network_card_count"
                            else "unknown")
    filled.write_text(json.dumps(description, indent=2))


@pytest.fixture(scope="module")
def tune(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    work = tmp_path_factory.mktemp("readme-tune")
    write_classifier_files(work)
    return run_chain("tune", Chain(work))


SLOW_CHAINS = frozenset({"resnet50", "tune"})


@pytest.mark.parametrize("text", [
    pytest.param(text, marks=([pytest.mark.slow] if step.chain in SLOW_CHAINS else [])
                 + ([pytest.mark.xfail(strict=True, reason=step.known_failure)] if step.known_failure else []),
                 id=f"{step.chain} L{readme_command(text).line} {text.removeprefix('mlpi ')[:40]}")
    for text, step in RUN.items()])
def test_readme_command_runs(text: str, request: pytest.FixtureRequest) -> None:
    step = RUN[text]
    chain: Chain = request.getfixturevalue(step.chain)
    out = chain.outcomes[text]
    if out.skipped:
        pytest.skip(f"`{text}`: {out.skipped}")
    print(f"README.md line {readme_command(text).line}: {text}\nran here as: mlpi {shlex.join(out.argv)}"
          + (f"\n({step.why})" if step.why else "") + f"\nexit code {out.rc} after {out.seconds:.1f} s")
    step.expect(out, chain)
