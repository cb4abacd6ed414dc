"""The docs cannot drift from the code: every `catnet ...` command shown in README.md and docs/
runs, every flag they name exists, and docs/results.md states each measurement once, beside the
command that reproduces it.

The convention the docs follow (so that their commands run here on drawn pictures):
- `photos/` is a tagged folder (cats/, dogs/), `new/` untagged pictures, `odd.jpg` one picture,
  `configs/` the repository's;
  `DIR` stands for `photos`, `<stamp>` for a run folder's name;
- a checkpoint (`*.pt`) that no earlier command of the same file wrote is a tiny trained CNN
  (an MLP where its name starts with `mlp`);
- train, finetune and tune are run with `--epochs 2` (tune: `--time-budget 10`) so they finish
  in seconds;
- a command that needs what a test cannot have ends in `# needs: REASON` (one of NEEDS) and is
  skipped with that reason.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, TrainedRun, make_dataset, tiny_config, write_class

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NEEDS = {
    "dev-photos": "the cats-vs-dogs dev photos",
    "gpu": "a CUDA GPU",
    "cluster": "a Ray cluster",
    "browser": "a person at a browser (it serves a page until Ctrl-C)",
    "minutes": "minutes of training (tests/test_demo.py covers it)",
}
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
NEEDS_MARK = re.compile(r"#\s*needs:\s*([\w-]+)")
FLAG = re.compile(r"^(--[a-z][a-z0-9-]*|-[a-z])$")


@dataclass(frozen=True)
class DocCommand:
    """One `catnet ...` line of a fenced block: where it is, its words, and why it is skipped."""

    where: str  # "docs/x.md:12"
    argv: tuple[str, ...]  # without the leading "catnet"
    needs: str | None

    @property
    def command(self) -> str:
        """The command's name as --help knows it: "train", or "cache info"."""
        return " ".join(self.argv[:2]) if self.argv[0] == "cache" else self.argv[0]

    def flags(self) -> list[str]:
        return [w.split("=")[0] for w in self.argv if FLAG.match(w.split("=")[0])]


def doc_commands(path: Path) -> list[DocCommand]:
    text = path.read_text(encoding="utf-8")
    found = []
    for block in FENCE.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        for offset, line in enumerate(block.group(1).splitlines()):
            line = line.strip()
            if not line.startswith("catnet "):
                continue
            mark = NEEDS_MARK.search(line)
            words = shlex.split(line, comments=True)
            where = f"{path.relative_to(REPO)}:{first_line + offset}"
            found.append(DocCommand(where, tuple(words[1:]), mark.group(1) if mark else None))
    return found


def all_commands() -> list[DocCommand]:
    return [c for path in DOC_FILES for c in doc_commands(path)]


@cache
def help_flags() -> dict[str, set[str]]:
    """Every command's flags, read from the same click objects that print its --help."""
    import typer

    from catnet.cli.main import app

    def walk(cmd: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), cmd

    return {
        name: {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}
        | {"--help"}
        for name, cmd in walk(typer.main.get_command(app), [])
    }


# -- fast: parsing and --help ---------------------------------------------------------------------


def test_docs_show_commands_and_every_mark_is_known() -> None:
    commands = all_commands()
    assert len(commands) > 25, "the docs show fewer catnet commands than expected: parsing broke"
    for c in commands:
        assert c.command in help_flags(), f"{c.where}: no command `catnet {c.command}`"
        assert c.needs is None or c.needs in NEEDS, f"{c.where}: unknown mark `needs: {c.needs}`"
        if any("shared/data" in w for w in c.argv):
            assert c.needs == "dev-photos", f"{c.where}: reads the dev photos, mark it"


def test_every_flag_the_docs_name_exists_in_its_commands_help() -> None:
    """Fenced commands, inline `catnet X ... --flag` spans, and the flag tables of configs.md:
    a flag renamed in the code (or in the docs) fails here."""
    known = help_flags()
    wrong = []
    for c in all_commands():
        wrong += [
            f"{c.where}: catnet {c.command} {f}" for f in c.flags() if f not in known[c.command]
        ]
    inline = re.compile(r"`catnet ((?:cache )?[a-z]+)([^`]*)`")
    for path in DOC_FILES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name, rest in inline.findall(line):
                flags = [w.split("=")[0] for w in rest.split() if FLAG.match(w.split("=")[0])]
                where = f"{path.relative_to(REPO)}:{number}"
                if name not in known:
                    wrong.append(f"{where}: no command `catnet {name}`")
                    continue
                wrong += [f"{where}: catnet {name} {f}" for f in flags if f not in known[name]]
    assert not wrong, "flags the docs name that --help does not have:\n" + "\n".join(wrong)


def configs_md_flags() -> dict[str, set[str]]:
    """docs/configs.md's tables: `### catnet NAME` then rows whose first cell lists the flags."""
    tables: dict[str, set[str]] = {}
    name = ""
    for line in (REPO / "docs" / "configs.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("### catnet "):
            name = line.removeprefix("### catnet ").strip()
            tables[name] = {"--help"}
        elif name and line.startswith("| `-"):
            tables[name] |= set(re.findall(r"`(-[-a-z0-9]+)`", line.split("|")[1]))
    return tables


def test_configs_md_lists_every_flag_of_every_command() -> None:
    assert configs_md_flags() == help_flags()


def test_finetune_help_says_where_the_run_goes() -> None:
    """Rich used to swallow "[default: ...]" as markup: the help read "Run folder ."."""
    from typer.testing import CliRunner

    from catnet.cli.main import app

    result = CliRunner().invoke(app, ["finetune", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Run folder [default: runs/<timestamp>]" in result.output


def test_architecture_names_every_module_and_only_real_ones() -> None:
    """ARCHITECTURE.md matches the code module by module: each catnet/ module is named (as
    `catnet/dir/x.py`, `dir/x.py`, or `x.py` in its folder's row), and each path it names exists."""
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1]: line for line in text.splitlines() if line.startswith("| ")}
    unnamed = []
    for path in sorted((REPO / "catnet").rglob("*.py")):
        rel = path.relative_to(REPO / "catnet").as_posix()
        folder = rel.rpartition("/")[0]
        if path.name == "__init__.py" and folder:
            continue
        in_row = any(f"{folder}/" in row and f"`{path.name}`" in row for row in rows.values())
        if f"`{rel}`" not in text and f"`catnet/{rel}`" not in text and not in_row:
            unnamed.append(rel)
    assert not unnamed, f"ARCHITECTURE.md does not name: {unnamed}"
    for named in re.findall(r"`(?:catnet/)?((?:[a-z_]+/)+[a-z_]+\.py)`", text):
        assert (REPO / "catnet" / named).exists() or (REPO / named).exists(), named


# -- docs/results.md: each number once, beside its command ----------------------------------------

# a mean ± spread with its unit, if any: "99.1 ± 0.5 %" and a table cell "99.1 ± 0.5" (its unit in
# the header) are told apart
MEAN_SPREAD = re.compile(r"\d[\d,.]*\s*±\s*\d[\d.]*(?:\s*(?:%|x|s|points))?")


def results_sections() -> list[tuple[str, str]]:
    text = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.M)
    return [(p.splitlines()[0], p) for p in parts[1:]]


def test_every_result_sits_beside_the_command_that_reproduces_it() -> None:
    for title, body in results_sections():
        if not re.search(r"\d\s*%|\d\s*x\b|±|images/s|\d s\b", body):
            continue
        blocks = FENCE.findall(body)
        assert blocks, f"results.md section {title!r} has numbers but no command"
        table = body.find("\n|")
        assert body.find("```") < (table if table >= 0 else len(body)), (
            f"results.md section {title!r}: its commands come after its table"
        )
        commands = [
            line for b in blocks for line in b.splitlines() if re.match(r"(catnet|python) ", line)
        ]
        assert commands, f"results.md section {title!r}: its code block runs nothing"


def test_no_mean_and_spread_is_given_twice_in_results() -> None:
    """A measurement stated in two places drifts apart (issue 26 found four such numbers). Within
    one table a value may repeat (a plateau over rounds, two rows that tie); a value in prose, or
    in two tables, is stated twice."""
    seen: dict[str, str] = {}
    doubles = []
    table = 0
    text = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    previous = ""
    for number, line in enumerate(text.splitlines(), 1):
        in_table = line.startswith("|")
        if in_table and not previous.startswith("|"):
            table += 1
        place = f"table {table}" if in_table else f"line {number}"
        for value in set(MEAN_SPREAD.findall(line)):
            if seen.setdefault(value, place) != place:
                doubles.append(f"{value!r} on line {number} and in {seen[value]}")
        previous = line
    assert not doubles, "results.md states these twice:\n" + "\n".join(doubles)


# -- slow: run every command on drawn pictures ----------------------------------------------------


def substitute(argv: tuple[str, ...]) -> list[str]:
    """The docs' placeholders, and short training (see the module's docstring)."""
    words = [{"DIR": "photos"}.get(w, w.replace("<stamp>", "first")) for w in argv]
    if words[0] in ("train", "finetune") and "--epochs" not in words:
        words += ["--epochs", "2"]
    if words[0] == "tune":
        if "--time-budget" in words:
            at = words.index("--time-budget")
            del words[at : at + 2]
        words += ["--time-budget", "10"]
    return words


def build_workspace(root: Path) -> None:
    make_dataset(root / "photos", n_per_class=12, size=24)
    write_class(root / "new", "cats", 2, 24)
    write_class(root / "new", "dogs", 2, 24)
    shutil.copy(root / "new" / "cats_0.png", root / "odd.jpg")  # read by content, not extension
    shutil.copytree(REPO / "configs", root / "configs")


@pytest.fixture(scope="module")
def mlp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from catnet.training.loop import train

    base = tmp_path_factory.mktemp("mlp")
    data = make_dataset(base / "data", n_per_class=8, size=24)
    return train(tiny_config(data, base / "run", base / "cache", model="mlp")).best_checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_doc_commands_run(
    doc: Path, tmp_path: Path, trained: TrainedRun, mlp_checkpoint: Path
) -> None:
    from typer.testing import CliRunner

    from catnet.cli.main import app

    commands = doc_commands(doc)
    runnable = [c for c in commands if c.needs is None]
    if not runnable:
        pytest.skip("; ".join(sorted({NEEDS[c.needs] for c in commands if c.needs})) or "none")
    build_workspace(tmp_path)
    for c in runnable:
        words = substitute(c.argv)
        for w in words:
            if w.endswith(".pt") and not (tmp_path / w).exists() and w not in ("-o", "--output"):
                is_output = words.index(w) > 0 and words[words.index(w) - 1] in ("-o", "--output")
                if not is_output:
                    (tmp_path / w).parent.mkdir(parents=True, exist_ok=True)
                    mlp = Path(w).name.startswith("mlp")
                    shutil.copy(mlp_checkpoint if mlp else trained.best, tmp_path / w)
        result = CliRunner().invoke(app, words)
        assert result.exit_code == 0, f"{c.where}: catnet {' '.join(words)}\n{result.output}"
