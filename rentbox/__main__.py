"""`python -m rentbox` runs the CLI."""

from rentbox.cli import main

main()
