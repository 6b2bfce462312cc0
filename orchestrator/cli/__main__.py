"""`python -m orchestrator.cli`: the `orchestrator` command."""

from orchestrator.cli.main import main

main()
