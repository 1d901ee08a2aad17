"""``python -m hpcwaas.stack``."""

from hpcwaas.stack.cli import main

main()
