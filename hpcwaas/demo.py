"""The main job of ``make demo``, run against the real local stack through the real gateway.

An operator bootstraps an admin and registers the local site (pinning its host key); the admin
creates a scientist and a token; the scientist creates an SSH key through the REST API and
installs its public half on the site; then, through the gateway, with the key fetched from
Vault, the scientist runs ``sinfo`` and a ``sbatch --wait`` job and reads its output.

Then the whole service: a developer registers the wordcount workflow and deploys it (its
Apptainer image is built and moved to the site by an Airflow pipeline run); the scientist
registers a text in the data catalogue and invokes the workflow: the text is staged in, counted
in the container by a Slurm job under her own site account, and the result is staged out and
registered in the catalogue, where the demo shows it.

Run it with ``make demo`` (which starts the stack first) or ``python -m hpcwaas.demo``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from hpcwaas.cli.workflows import log_line, shown
from hpcwaas.client import ApiError, Client
from hpcwaas.settings import get_settings
from hpcwaas.stack.info import StackInfo, load_stack_info
from hpcwaas.stack.process import port_open, read_pid, wait_until
from hpcwaas.stack.site_users import GATEWAY_USER

console = Console()
PORT = 18000
URL = f"http://127.0.0.1:{PORT}"
SITE_USER = "sciuser1"

JOB_SCRIPT = """#!/bin/bash
#SBATCH --ntasks=1
echo "job $SLURM_JOB_ID of $(whoami) on $(hostname), partition $SLURM_JOB_PARTITION"
# something real: the primes below 10,000, counted with a sieve in awk
awk 'BEGIN { n = 10000; for (i = 2; i <= n; i++) p[i] = 1
             for (i = 2; i * i <= n; i++) if (p[i]) for (j = i * i; j <= n; j += i) p[j] = 0
             c = 0; for (i = 2; i <= n; i++) c += p[i]; print "primes below " n ": " c }'
date -u +"finished at %Y-%m-%dT%H:%M:%SZ"
"""


def step(n: int, text: str) -> None:
    console.print(f"\n[bold cyan]{n}.[/bold cyan] [bold]{text}[/bold]")


def gateway_env(stack: StackInfo) -> dict[str, str]:
    """The demo gateway's settings: SQLite under its own folder, the persistent (raft) OpenBao."""
    vault = stack.vault("raft")
    home = stack.stack_dir / "demo-gateway"
    return {
        **os.environ,
        "HOME": str(home),
        "HPCWAAS_HOME": str(home),
        "HPCWAAS_VAULT_ADDR": vault.addr,
        "HPCWAAS_VAULT_TOKEN_FILE": str(home / "vault-token"),
        "HPCWAAS_VAULT_MOUNT": vault.mount,
        "HPCWAAS_AIRFLOW_PASSWORD_FILE": str(home / "airflow.password"),
        "HPCWAAS_BIND_PORT": str(PORT),
        "HPCWAAS_PUBLIC_URL": URL,
        "HPCWAAS_URL": URL,
    }


def gateway_user() -> pwd.struct_passwd | None:
    """Who the gateway runs as: the unprivileged ``hpcwaas`` user when the demo is root's, else the caller."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(GATEWAY_USER)
    except KeyError as exc:
        raise SystemExit(f"the gateway's user {GATEWAY_USER} does not exist: run `make install` "
                         "(scripts/install-system.sh creates it)") from exc


def _as_gateway(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """Popen arguments that run a process as the gateway's user, with no other groups."""
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def hand_over(stack: StackInfo, user: pwd.struct_passwd | None) -> None:
    """Give the gateway its folder and what the operator hands it: a copy of its Vault token and
    of the Airflow password (the stack's own files stay root's)."""
    home = stack.stack_dir / "demo-gateway"
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)  # its database and log are the gateway's alone
    airflow = stack.airflow
    for source, name in [(stack.vault("raft").gateway_token_file, "vault-token"),
                         (airflow.password_file if airflow else None, "airflow.password")]:
        if source is not None:
            target = home / name
            with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
                fh.write(source.read_text())
    if user is not None:
        for path in [home, *home.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)


def _code_fingerprint() -> str:
    """Sizes and times of the project's Python files: a running gateway is reused only while equal."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in ("hpcwaas", "gateway", "deployer", "tosca", "catalogue", "containers", "data_logistics"):
        for path in sorted((root / package).rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def start_gateway(stack: StackInfo) -> None:
    """Start ``waas admin serve`` in the background (reused when it already answers)."""
    run_dir = stack.stack_dir / "demo-gateway"
    user = gateway_user()
    hand_over(stack, user)
    pid_file, log_file = run_dir / "gateway.pid", run_dir / "gateway.log"
    pid = read_pid(pid_file)
    code, code_file = _code_fingerprint(), run_dir / "gateway.code"
    if pid is not None and port_open("127.0.0.1", PORT):
        if code_file.is_file() and code_file.read_text() == code:
            console.print(f"   gateway already running (pid {pid}) on {URL}")
            return
        console.print(f"   the code changed since gateway {pid} started: restarting it")
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not port_open("127.0.0.1", PORT), 30, "the old gateway to stop")
    if port_open("127.0.0.1", PORT):
        raise SystemExit(f"port {PORT} is taken by another program; stop it and run make demo again")
    with open(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpcwaas.cli", "admin", "serve"],
            env=gateway_env(stack), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=run_dir,
            **_as_gateway(user),
        )
    pid_file.write_text(f"{proc.pid}\n")
    code_file.write_text(code)
    t0 = time.monotonic()
    wait_until(lambda: port_open("127.0.0.1", PORT) or proc.poll() is not None, 60, "the gateway to listen")
    if proc.poll() is not None:
        raise SystemExit(f"the gateway exited at start; see {log_file}")
    who = user.pw_name if user else pwd.getpwuid(os.geteuid()).pw_name
    console.print(f"   gateway started (pid {proc.pid}, user {who}) on {URL} in {time.monotonic() - t0:.1f} s; "
                  f"log: {log_file}")


def stop_gateway(stack_dir: Path) -> None:
    """Stop the demo gateway, if running."""
    pid = read_pid(stack_dir / "demo-gateway" / "gateway.pid")
    if pid is not None:
        os.kill(pid, signal.SIGTERM)


def waas(stack: StackInfo, *args: str) -> Any:
    """Run the ``waas`` CLI with the demo gateway's settings and return its JSON output."""
    out = subprocess.run([sys.executable, "-m", "hpcwaas.cli", "--json", *args], env=gateway_env(stack),
                         capture_output=True, text=True, check=False, cwd=stack.stack_dir / "demo-gateway",
                         **_as_gateway(gateway_user()))
    if out.returncode != 0:
        raise SystemExit(f"waas {' '.join(args)} failed:\n{out.stderr}")
    return json.loads(out.stdout)


def ensure(call: Any, *args: Any, exists: Any = None, **kwargs: Any) -> Any:
    """Create something, or fetch it when it already exists (so the demo can run again)."""
    try:
        return call(*args, **kwargs)
    except ApiError as exc:
        if exc.status == 409 and exists is not None:
            return exists()
        raise


def main() -> None:
    stack = load_stack_info(get_settings().stack_dir)
    if stack.site is None or stack.vault_raft is None:
        raise SystemExit("the demo needs the stack with a site and the persistent OpenBao: make stack-up-demo")
    site = stack.site
    t_start = time.monotonic()
    console.print(Panel.fit("hpcwaas demo: a scientist runs a Slurm job through the gateway", style="bold"))

    step(1, f"Start the gateway as the unprivileged user {GATEWAY_USER} (SQLite database, persistent OpenBao)")
    start_gateway(stack)

    step(2, "Operator: bootstrap the first admin (waas admin bootstrap)")
    boot = waas(stack, "admin", "bootstrap", "--username", "admin")
    console.print(f"   admin [bold]{boot['username']}[/bold] ({'created' if boot['created'] else 'existing'}); "
                  f"token {boot['token'][:11]}... (shown once)")
    admin = Client(URL, boot["token"])

    step(3, "Admin: register the local site, pinning its host key; runs log in with per-run certificates")
    offered = admin.scan_host_keys(site.host, site.port)
    published = next(k for k in offered if k["key"] == site.host_key)
    console.print(f"   {site.host}:{site.port} offers {published['key_type']} {published['fingerprint']}")
    console.print("   matches the fingerprint the site publishes (its sshd host key): [green]confirmed[/green]")
    registered = ensure(
        admin.register_site, name="local", login_host=site.host, port=site.port, partitions=site.partitions,
        work_dir="/home/{login}/hpcwaas", host_key=published["key"], ssh_certificates=True,
        description="Loopback site: OpenSSH login node and a one-node Slurm cluster",
        exists=lambda: admin.get_site("local"),
    )
    if registered["host_key"] != published["key"]:
        raise SystemExit("site 'local' is pinned to another host key: refusing to continue")
    if not registered["ssh_certificates"]:  # a site registered by an older demo
        registered = admin.update_site("local", ssh_certificates=True)
    console.print(f"   site [bold]local[/bold] pinned to {registered['host_key_fingerprint']}; its sshd trusts "
                  "the gateway's SSH CA (TrustedUserCAKeys): each run logs in with a new key and a certificate "
                  "naming it")

    step(4, "Admin: create the scientist 'alice' and a token for her")
    alice_user = ensure(admin.create_user, "alice", "scientist", full_name="Alice Scientist",
                        exists=lambda: admin.get_user("alice"))
    alice_token = admin.create_token("demo", 1, user=alice_user["id"])["token"]
    alice = Client(URL, alice_token)
    console.print(f"   alice is {alice.me()['role']}; token {alice_token[:11]}...")

    step(5, "Alice: create an SSH key through the REST API (private half goes to Vault only)")
    for old in alice.list_ssh_keys():
        if old["name"].startswith("demo-"):
            alice.delete_ssh_key(old["id"])
    key = alice.create_ssh_key(name=f"demo-{int(time.time())}", login=SITE_USER)
    console.print(f"   key {key['id']} {key['fingerprint']}\n   public key: {key['public_key']}")

    step(6, f"Alice installs the public key for site user {SITE_USER} (~/.ssh/authorized_keys)")
    with tempfile.NamedTemporaryFile("w", suffix=".pub") as pub:
        pub.write(key["public_key"] + "\n")
        pub.flush()
        subprocess.run([sys.executable, "-m", "hpcwaas.stack", "authorize-key", "--user", SITE_USER,
                        "--public-key-file", pub.name], check=True, capture_output=True)
    checked = alice.check_ssh_key(key["id"], "local")
    console.print(f"   [green]login ok[/green]: {checked['remote_user']}@local, {checked['scheduler_version']}, "
                  f"host key verified ({checked['host_key_fingerprint']})")

    step(7, "Alice: sinfo on the site, through the gateway")
    info = alice.site_info("local", key["id"])
    table = Table("partition", "default", "state", "time limit", "nodes")
    for p in info["partitions"]:
        table.add_row(p["name"], "*" if p["default"] else "", "up" if p["available"] else "down",
                      p["time_limit"], str(p["nodes"]))
    console.print(table)

    step(8, "Alice: sbatch --wait a job on the site, through the gateway")
    t0 = time.monotonic()
    with console.status("job queued and running on Slurm..."):
        job = alice.submit_job("local", key["id"], JOB_SCRIPT, wait=True, name="demo")
    console.print(f"   job {job['job_id']}: [bold]{job['state']}[/bold], exit code {job['exit_code']}, "
                  f"{time.monotonic() - t0:.1f} s; output {job['stdout_path']}")
    console.print(Panel(job["stdout_tail"].rstrip(), title=f"output of job {job['job_id']}", expand=False))
    if job["state"] != "COMPLETED":
        raise SystemExit(f"the job ended {job['state']}: {job.get('stderr_tail')}")

    workflow_demo(stack, admin, alice, key)

    console.print(f"\n[bold green]demo complete[/bold green] in {time.monotonic() - t_start:.1f} s. "
                  f"The gateway keeps running on {URL} (docs: {URL}/docs); `make stack-down` stops everything.")
    console.print(f"Try it as alice (token valid one day): HPCWAAS_URL={URL} HPCWAAS_TOKEN={alice_token} "
                  ".venv/bin/waas ssh-keys list")


def _follow_deployment(dev: Client, deployment_id: str) -> dict[str, Any]:
    after = 0
    while True:
        page = dev.deployment_logs(deployment_id, after, wait=10)
        for line in page["lines"]:
            if shown(line) and any(w in line["text"] for w in ("op start", "op done", "failed", "image build")):
                console.print(Text("   ") + log_line(line))
        after = page["next_seq"]
        current = dev.get_deployment(deployment_id)
        if current["state"] in ("deployed", "failed", "undeployed") and not page["lines"]:
            return current


def workflow_demo(stack: StackInfo, admin: Client, alice: Client, alice_key: dict[str, Any]) -> None:
    """Register, deploy and invoke the wordcount workflow; show the result in the catalogue."""
    from hpcwaas.cli.workflows import follow, show_provenance

    step(9, "Admin: create the developer 'dave'; dave creates his SSH key for site user sciuser2")
    dave_user = ensure(admin.create_user, "dave", "developer", full_name="Dave Developer",
                       exists=lambda: admin.get_user("dave"))
    dave = Client(URL, admin.create_token("demo", 1, user=dave_user["id"])["token"])
    dave_key = next((k for k in dave.list_ssh_keys() if k["name"] == "demo-dave"), None) or \
        dave.create_ssh_key(name="demo-dave", login="sciuser2")
    with tempfile.NamedTemporaryFile("w", suffix=".pub") as pub:
        pub.write(dave_key["public_key"] + "\n")
        pub.flush()
        subprocess.run([sys.executable, "-m", "hpcwaas.stack", "authorize-key", "--user", "sciuser2",
                        "--public-key-file", pub.name], check=True, capture_output=True)
    console.print(f"   dave's key {dave_key['fingerprint']} installed for sciuser2")

    step(10, "Dave: register the wordcount workflow (tosca/examples/wordcount) in the registry")
    examples = Path(__file__).resolve().parent.parent / "tosca" / "examples"
    registered = dave.register_workflow("wordcount", {"kind": "folder", "path": str(examples / "wordcount")},
                                        "Word count of a text dataset, in an Apptainer container on Slurm")
    version = registered["version"]
    console.print(f"   wordcount version {version['number']} ({version['digest'][:19]}...), "
                  f"{'new' if registered['created'] else 'already registered'}; "
                  f"execute inputs: {', '.join(version['workflows']['execute']['inputs'])}")

    step(11, "Dave: deploy it to the local site (image build, transfer by an Airflow run, site preparation)")
    ready = [d for d in dave.list_deployments("wordcount") if d["state"] == "deployed"]
    if ready and ready[0]["version_id"] == version["id"]:
        deployment = ready[0]
        console.print(f"   deployment {deployment['id']} is already deployed")
    else:
        deployment = dave.deploy("wordcount", "local", dave_key["id"])
        console.print(f"   deployment {deployment['id']} accepted; the first image build takes a minute or two")
        t0 = time.monotonic()
        deployment = _follow_deployment(dave, deployment["id"])
        if deployment["state"] != "deployed":
            raise SystemExit(f"the deployment failed: {deployment['error']}")
        console.print(f"   deployed in {time.monotonic() - t0:.0f} s")
    console.print(f"   the image is on the site at {deployment['outputs'].get('image_on_site')}")

    step(12, "Alice: register a text in the data catalogue")
    assert stack.airflow is not None
    import codecs
    import contextlib
    import hashlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen of Python
        import this
    text = codecs.decode(this.s, "rot13") + "\n"
    folder = stack.airflow.storage_root / "datasets" / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "zen-of-python.txt"
    source.write_text(text)
    dataset = alice.request("POST", "/catalogue/datasets", json={
        "title": "The Zen of Python", "description": "Tim Peters' aphorisms, a small text to count words in.",
        "location": f"file://{source}", "format": "text/plain", "access": "public",
        "keywords": ["text", "demo", "python"], "license": "PSF-2.0",
        "checksum_sha256": hashlib.sha256(text.encode()).hexdigest(), "size_bytes": len(text.encode())})
    console.print(f"   dataset {dataset['id']}: {dataset['title']} ({dataset['size_bytes']} bytes)")

    step(13, "Alice: invoke wordcount with her own SSH key and follow it live")
    execution = alice.invoke("wordcount", alice_key["id"], {"dataset": dataset["id"], "top": 8,
                                                           "result_name": "Zen of Python word counts"})
    console.print(f"   execution {execution['id']} accepted (202); stage-in, Slurm job, stage-out:")
    execution = follow(alice, execution["id"])
    if execution["state"] != "completed":
        raise SystemExit(f"the execution ended {execution['state']}: {execution['error']}")
    outputs = execution["outputs"]
    console.print(Panel(str(outputs.get("top_words", "")).rstrip(), title="the job's output", expand=False))
    show_certificate_logins(stack, execution["id"])

    step(14, "Alice: the result, registered in the catalogue with its provenance")
    result = alice.request("GET", f"/catalogue/datasets/{outputs['result_dataset']}")
    local = Path(str(result["location"]).removeprefix("file://"))
    console.print(f"   dataset {result['id']}: {result['title']}")
    console.print(f"   location {result['location']}  sha256 {str(result['checksum_sha256'])[:16]}...")
    console.print(Panel(local.read_text().rstrip(), title="counts.tsv (staged out)", expand=False))
    console.print(f"   browse it: {URL}/catalogue/ui/datasets/{result['id']}")
    console.print(f"   provenance (W3C PROV; `waas executions provenance {execution['id']}`):")
    show_provenance(alice.execution_provenance(execution["id"]))


def show_certificate_logins(stack: StackInfo, execution_id: str) -> None:
    """The site's own record: each login of the run used a certificate whose key id is the execution."""
    log = stack.stack_dir / "sshd" / "sshd.log"
    lines = [line for line in log.read_text(errors="replace").splitlines() if f"ID execution:{execution_id} " in line]
    if not lines:
        raise SystemExit(f"no login of execution {execution_id} with its certificate in {log}")
    console.print(f"   the site's sshd logged {len(lines)} login(s) with the execution's certificate, e.g.:")
    line = lines[-1]
    console.print(f"   [dim]{line[line.find('Accepted'):]}[/dim]")


if __name__ == "__main__":
    main()
