"""``python -m deployer``: the deployer's command line."""

from deployer.cli import main

main()
