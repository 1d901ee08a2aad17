"""``python -m hpcwaas.cli`` is ``waas``."""

from hpcwaas.cli import main

main()
