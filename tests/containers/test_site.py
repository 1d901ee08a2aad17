"""A site user runs a built image from a Slurm job: sciuser1, over SSH, `sbatch --wait`, with the
stack's `apptainer` (the rootless wrapper into the builder tree, no setuid)."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import pytest

from hpcwaas.ssh import SiteEndpoint, SSHSession, connect, generate_keypair
from hpcwaas.stack.info import SiteInfo, StackInfo
from hpcwaas.stack.site_users import authorize_key, revoke_key
from tests.containers.conftest import BuiltImage

pytestmark = [pytest.mark.slow, pytest.mark.site]


@pytest.fixture
def sciuser1(site: SiteInfo) -> Iterator[SSHSession]:
    pair = generate_keypair()
    authorize_key("sciuser1", pair.public.line)
    try:
        with connect(SiteEndpoint(site.host, site.port, site.host_key), "sciuser1", pair.private_key) as ssh:
            yield ssh
    finally:
        revoke_key("sciuser1", pair.public.line)


def test_slurm_job_runs_apptainer_exec_as_a_site_user(sciuser1: SSHSession, hello_image: BuiltImage,
                                                      stack: StackInfo, unique: str) -> None:
    assert stack.apptainer is not None
    folder = f"hpcwaas-images-test-{unique}"
    sciuser1.run(["mkdir", "-p", folder], check=True)
    try:
        with sciuser1.sftp() as sftp:  # as the image-transfer pipeline would put it on the site
            sftp.put(str(hello_image.ref.path), f"{folder}/hello.sif")
        command = f"{stack.apptainer.site_command} exec hello.sif greet.sh from slurm job $SLURM_JOB_ID"
        result = sciuser1.run(
            f"cd {shlex.quote(folder)} && sbatch --wait --quiet -o job.out --wrap {shlex.quote(command)}"
            " && cat job.out",
            timeout=600,
        )
        assert result.exit_code == 0, result.stdout + result.stderr
        assert "hello from hpcwaas on Debian 12" in result.stdout
        assert "from slurm job " in result.stdout
        whoami = sciuser1.run(["apptainer", "exec", f"{folder}/hello.sif", "id", "-un"], timeout=300)
        assert whoami.stdout.strip() == "sciuser1", whoami.stderr
    finally:
        sciuser1.run(["rm", "-rf", folder])
