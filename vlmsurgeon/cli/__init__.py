"""The command line, thin: each module parses one group of commands' flags, calls one library
function and hands the result to `render.py` (rich for people, `--json` for machines). The entry
point is `app.main`; `python -m vlmsurgeon.cli` runs it.

May import: everything. Nothing imports `cli/`. Torch and transformers are imported inside the
commands that need them, so `--help` stays fast."""


def main() -> None:
    """The `vlmsurgeon` command (`vlmsurgeon.cli:main`, kept for scripts that call it)."""
    from vlmsurgeon.cli.app import main as run

    run()
