"""hpcwaas deployer: a TOSCA 1.3 orchestrator on tosca-parser and ansible-runner.

Use :mod:`deployer.api` from Python, ``python -m deployer`` (or ``waas tosca``) from a shell.
"""
