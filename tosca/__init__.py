"""The hpcwaas TOSCA profile, its playbooks, and example topologies.

``PROFILE_PATH`` is always available to templates the deployer loads: they may import it as
``hpcwaas`` or not import it at all.
"""

from __future__ import annotations

from pathlib import Path

TOSCA_DIR = Path(__file__).resolve().parent
PROFILE_PATH = TOSCA_DIR / "profile" / "hpcwaas.yaml"
PLAYBOOKS_DIR = TOSCA_DIR / "playbooks"
EXAMPLES_DIR = TOSCA_DIR / "examples"

__all__ = ["EXAMPLES_DIR", "PLAYBOOKS_DIR", "PROFILE_PATH", "TOSCA_DIR"]
