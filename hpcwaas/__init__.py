"""hpcwaas: HPC Workflows as a Service.

This package holds the primitives every component shares (settings, errors, Vault access,
SSH to a site, Slurm over SSH), the local stack scripts and the `waas` command line.
"""

__version__ = "0.1.0"
