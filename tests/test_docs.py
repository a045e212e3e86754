"""README.md and docs/*.md stay true to the code: every documented command line names a real
command and real options, every `make` target exists, every relative link and every repository
path resolves, every module named exists. Fast: no torch, no model loads."""

from __future__ import annotations

import re
import shlex
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

# fenced blocks whose lines are shell commands (or console transcripts)
SHELL_LANGS = {"", "bash", "console", "sh", "shell"}


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _blocks(text: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """Fenced code blocks: (language, [(line number, line)])."""
    blocks, current, lang = [], None, ""
    for no, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            if current is None:
                lang, current = line.lstrip()[3:].strip().lower(), []
            else:
                blocks.append((lang, current))
                current = None
        elif current is not None:
            current.append((no, line))
    return blocks


def _prose(text: str) -> str:
    """The text outside fenced code blocks (fenced lines blanked, so line numbers stay)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def _joined(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Backslash-continued lines joined into one."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for no, line in lines:
        if pending is not None:
            no, line = pending[0], pending[1] + " " + line.strip()
            pending = None
        if line.rstrip().endswith("\\"):
            pending = (no, line.rstrip()[:-1])
        else:
            out.append((no, line))
    if pending is not None:
        out.append(pending)
    return out


# `vlmsurgeon …` at the start of a line (after an optional `$ ` prompt, also `.venv/bin/vlmsurgeon`),
# or `python -m vlmsurgeon.cli …` / `accelerate launch … -m vlmsurgeon.cli …` anywhere in it
_PROGRAM = re.compile(r"^\s*(?:\$\s+)?(?:\S*/)?vlmsurgeon(?=\s|$)|(?:^|\s)-m\s+vlmsurgeon\.cli(?=\s|$)")


def _command_lines() -> list[tuple[str, str]]:
    """(where, command line from `vlmsurgeon` on) for every documented command line."""
    found = []
    for page in _pages():
        for lang, lines in _blocks(page.read_text(encoding="utf-8")):
            if lang not in SHELL_LANGS:
                continue
            for no, line in _joined(lines):
                m = _PROGRAM.search(line)
                if m:
                    found.append((f"{_rel(page)}:{no}", "vlmsurgeon" + line[m.end() :]))
    return found


def _tokens(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in a transcript: fall back to words before a comment
        return line.split(" #")[0].split()


@lru_cache(maxsize=1)
def _cli():
    import typer

    from vlmsurgeon.cli.app import app

    return typer.main.get_command(app)


def _options(command) -> set[str]:
    opts = {"--help"}
    opts.update((command.context_settings or {}).get("help_option_names", ()))
    opts.update((_cli().context_settings or {}).get("help_option_names", ()))
    for param in command.params:
        opts.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("-"))
    return opts


def _is_option(token: str) -> bool:
    return token.startswith("-") and token != "-" and not re.match(r"^-\d", token)


def _check_command(line: str) -> list[str]:
    """What is wrong with one documented command line (empty: nothing)."""
    args = _tokens(line)[1:]
    node, path, problems = _cli(), ["vlmsurgeon"], []
    i = 0
    while i < len(args):  # the subcommand path, with any options given to the groups on it
        token = args[i]
        if _is_option(token):
            if not hasattr(node, "commands"):
                break
            if token.split("=", 1)[0] not in _options(node):
                problems.append(f"{' '.join(path)}: no such option {token}")
            i += 1
            continue
        if not hasattr(node, "commands"):
            break
        if token not in node.commands:
            problems.append(f"{' '.join(path)}: no such command {token!r}")
            return problems
        node = node.commands[token]
        path.append(token)
        i += 1
    allowed = _options(node)
    for token in args[i:]:
        if _is_option(token) and token.split("=", 1)[0] not in allowed:
            problems.append(f"{' '.join(path)}: no such option {token}")
    return problems


def test_documented_commands_and_options_exist():
    lines = _command_lines()
    assert len(lines) > 20, f"expected the docs to show command lines, found {len(lines)}"
    bad = [f"{where}: {problem}\n    {line}" for where, line in lines for problem in _check_command(line)]
    assert not bad, f"{len(bad)} documented command line(s) the CLI does not accept:\n" + "\n".join(bad)


def _make_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9_.%/$()-][A-Za-z0-9_.%/$() -]*?)\s*::?(?!=)", line)
        if m and not line.startswith("\t"):
            targets.update(m.group(1).split())
        if line.startswith(".PHONY:"):
            targets.update(line.split(":", 1)[1].split())
    targets.discard(".PHONY")
    return targets


def test_documented_make_targets_exist():
    targets = _make_targets()
    bad = []
    for page in _pages():
        for _lang, lines in _blocks(page.read_text(encoding="utf-8")):
            for no, line in lines:
                for m in re.finditer(r"(?:^|[\s`(;&|])make((?: [a-z][\w-]*)+)", line):
                    bad.extend(f"{_rel(page)}:{no}: make {t}" for t in m.group(1).split() if t not in targets)
    assert not bad, "make targets the Makefile does not have:\n" + "\n".join(bad)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in _prose(page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            if n:
                seen[f"{slug}-{n}"] = 1
    return set(seen)


def test_relative_links_resolve():
    bad = []
    for page in _pages():
        for no, line in enumerate(_prose(page.read_text(encoding="utf-8")).splitlines(), 1):
            for m in re.finditer(r"\]\(([^)\s]+)\)", line):
                target = m.group(1)
                if re.match(r"^[a-z][a-z+.-]*:", target):  # https:, mailto:, …
                    continue
                file_part, _, anchor = target.partition("#")
                path = (page.parent / file_part).resolve() if file_part else page
                if not path.exists():
                    bad.append(f"{_rel(page)}:{no}: {target}: no such file")
                elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                    bad.append(f"{_rel(page)}:{no}: {target}: no heading #{anchor} in {_rel(path)}")
    assert not bad, "links that do not resolve:\n" + "\n".join(bad)


def test_every_docs_page_is_in_the_index():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "README.md" and f"({p.name})" not in index]
    assert not missing, f"docs/README.md does not link: {missing}"
    assert "(docs/README.md)" in README.read_text(encoding="utf-8"), "README.md does not link the docs index"


def test_named_repository_paths_exist():
    bad = []
    pattern = re.compile(r"(?<![\w./-])((?:tests|bench|examples)/[\w./-]*[\w/])")
    for page in _pages():
        for no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for m in pattern.finditer(line):
                if not (ROOT / m.group(1)).exists():
                    bad.append(f"{_rel(page)}:{no}: {m.group(1)}")
    assert not bad, "paths that do not exist:\n" + "\n".join(bad)


def _defines(module: Path, name: str) -> bool:
    text = module.read_text(encoding="utf-8")
    return bool(
        re.search(
            rf"^(?:(?:async\s+)?def|class)\s+{name}\b|^{name}\s*[:=]|^from\s+\S+\s+import\s.*\b{name}\b", text, re.M
        )
    )


def test_named_modules_exist():
    """`vlmsurgeon/x/y.py`, `vlmsurgeon.x.y[.name]` and `python -m vlmsurgeon.x` point at real code."""
    bad = []
    for page in _pages():
        for no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{_rel(page)}:{no}"
            for m in re.finditer(r"(?<![\w/.-])(vlmsurgeon/[\w/]+\.py)\b", line):
                if not (ROOT / m.group(1)).is_file():
                    bad.append(f"{where}: {m.group(1)}: no such file")
            for m in re.finditer(r"(?<![\w/.-])vlmsurgeon((?:\.[A-Za-z_]\w*)+)", line):
                parts = m.group(1)[1:].split(".")
                if parts[-1] in {"json", "yaml", "yml"}:  # vlmsurgeon.json, vlmsurgeon.yaml: files
                    continue
                base, rest = ROOT / "vlmsurgeon", list(parts)
                while rest and ((base / rest[0]).is_dir() or (base / f"{rest[0]}.py").is_file()):
                    base = base / rest.pop(0)
                module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
                name = m.group(0)
                if len(rest) > 1 or (rest and not (module.is_file() and _defines(module, rest[0]))):
                    bad.append(f"{where}: {name}: not found")
                elif line[: m.start()].rstrip().endswith("-m") and not (
                    base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()
                ):
                    bad.append(f"{where}: -m {name}: not runnable (no __main__.py)")
    assert not bad, "modules named that do not exist:\n" + "\n".join(bad)


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move reference text to docs/"
    )
