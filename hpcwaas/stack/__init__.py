"""The local stack: real OpenBao, sshd, Slurm and PostgreSQL on loopback, run by the project.

``python -m hpcwaas.stack up`` starts it; :func:`load_stack_info` tells tests and the demo where
everything is. State lives under ``Settings.stack_dir`` (``HPCWAAS_STACK_DIR``).
"""

from hpcwaas.stack.info import PostgresInfo, SiteInfo, SiteUser, StackInfo, VaultInfo, load_stack_info
from hpcwaas.stack.process import StackError

__all__ = [
    "PostgresInfo",
    "SiteInfo",
    "SiteUser",
    "StackError",
    "StackInfo",
    "VaultInfo",
    "load_stack_info",
]
