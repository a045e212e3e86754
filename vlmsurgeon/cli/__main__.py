"""`python -m vlmsurgeon.cli`: the same as the `vlmsurgeon` command."""

from vlmsurgeon.cli.app import main

main()
