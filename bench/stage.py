"""Stage-in benchmark: the transfer engine against scp and tar|ssh, in the same run, on the local stack.

    .venv/bin/python bench/stage.py [--size-mib 1024] [--files 10000] [--rounds 3] [--airflow-runs 3]

1. one big file (1 GiB of random bytes) to the site: engine (streamed through the OpenSSH client with
   the key in a private agent, as the pipelines do, AES-GCM preferred; sha256 at both ends; atomic
   rename) vs plain ``scp`` (the target's baseline, default ciphers) vs ``cat | ssh 'cat > f'``;
   ``scp -c aes128-gcm@openssh.com`` is also shown, for information; engine throughput measured
   from the first byte;
2. 10,000 files of 4 KiB: engine (one tar stream, per-file sha256 verified) vs ``scp -r`` vs
   ``tar -c | ssh tar -x``;
3. trigger-to-first-byte latency of a real ``stage_in`` DAG run through Airflow's REST API.

Every method runs ``--rounds`` times, in an order that rotates from round to round; before each
transfer ``sync`` flushes dirty pages, so no method pays for another's write-back; every transfer
writes a fresh name and nothing is deleted before the end. Prints the rates per round and the
ratios (engine / reference in the same round; > 1 means the engine is faster) with their median,
and the load average before and after. The key used by scp/ssh is written to a 0600 temporary file
for the reference tools only, and removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from statistics import median

from data_logistics import transfer
from data_logistics.client import AirflowClient
from data_logistics.openssh import OpenSSHLink
from hpcwaas.ssh import SiteEndpoint, connect, generate_keypair
from hpcwaas.stack.info import load_stack_info
from hpcwaas.stack.site_users import authorize_key, revoke_key
from hpcwaas.vault import Vault

MiB = 1024 * 1024


def make_big(path: Path, size: int) -> None:
    block = os.urandom(4 * MiB)
    with path.open("wb") as fh:
        left = size
        while left > 0:
            fh.write(block[: min(left, len(block))])
            left -= len(block)


def make_small(root: Path, count: int, size: int = 4096) -> None:
    for i in range(count):
        d = root / f"d{i % 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.dat").write_bytes(os.urandom(size))


def timed(argv: list[str] | str, shell: bool = False) -> float:
    began = time.monotonic()
    subprocess.run(argv, shell=shell, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--airflow-runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every method, in a rotating order")
    args = parser.parse_args()

    load_before = os.getloadavg()
    info = load_stack_info()
    assert info.site is not None
    site = info.site
    endpoint = SiteEndpoint(site.host, site.port, site.host_key)
    pair = generate_keypair()
    authorize_key("sciuser1", pair.public.line)
    work = f"/home/sciuser1/bench-stage-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="hpcwaas-bench-"))
    keyfile, known = tmp / "id", tmp / "known_hosts"
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, pair.private_key.encode())
    os.close(fd)
    known.write_text(site.known_hosts_line() + "\n")
    ssh_opts = ["-i", str(keyfile), "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes"]
    remote = f"sciuser1@{site.host}"
    ssh = ["ssh", "-p", str(site.port), *ssh_opts, remote]
    scp = ["scp", "-q", "-P", str(site.port), *ssh_opts]
    rows: list[tuple[str, str, int, int, float]] = []  # case, method, round, bytes, seconds
    try:
        with connect(endpoint, "sciuser1", pair.private_key) as session:
            session.run(["mkdir", "-p", work], check=True)
            stack_link = OpenSSHLink(endpoint, "sciuser1", pair.private_key)
            dest = transfer.SiteDestination(session, work, stack_link)

            def settle() -> None:
                # Each method starts alike: nothing left to write back from the previous one. Nothing
                # is deleted until the end either (the root file system is mounted with `discard`:
                # freeing 1 GiB or 10,000 files right before a transfer slows that transfer 2-4x).
                subprocess.run(["sync"], check=True)

            counter = iter(range(1_000_000))

            def fresh(stem: str) -> str:
                return f"{work}/{stem}-{next(counter)}"

            def rotated(names: list[str], r: int) -> list[str]:
                return names[r % len(names):] + names[:r % len(names)]

            # 1. the big file ----------------------------------------------------------------
            size = args.size_mib * MiB
            big = tmp / "big.bin"
            make_big(big, size)
            subprocess.run(["cat", str(big)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

            def engine_file() -> float:
                began = time.time()
                result = transfer.copy_file(transfer.LocalFile(big), dest, fresh("big"))
                ended = time.time()
                assert result.first_byte_at is not None
                startups.append(result.first_byte_at - began)
                return ended - result.first_byte_at  # measured from the first byte

            startups: list[float] = []
            big_methods: dict[str, Callable[[], float]] = {
                "scp": lambda: timed([*scp, str(big), f"{remote}:{fresh('big')}"]),
                # Information only (the target is against plain scp): scp with the engine's preferred cipher.
                "scp -c aes128-gcm": lambda: timed([*scp, "-c", "aes128-gcm@openssh.com", str(big),
                                                    f"{remote}:{fresh('big')}"]),
                "cat | ssh": lambda: timed(f"cat {big} | {' '.join(ssh)} 'cat > {fresh('big')}'", shell=True),
                "engine (verified)": engine_file,
            }
            settle()
            for r in range(args.rounds):
                for name in rotated(list(big_methods), r):
                    rows.append(("1 file", name, r, size, big_methods[name]()))
                    settle()
            big.unlink()

            # 2. many small files -------------------------------------------------------------
            small = tmp / "small"
            make_small(small, args.files)
            total = args.files * 4096

            def engine_tree() -> float:
                began = time.monotonic()
                tree = transfer.copy_tree(transfer.LocalTree(small), dest, fresh("tree"))
                assert tree.files == args.files
                return time.monotonic() - began

            def tar_ssh(d: str) -> float:
                return timed(f"tar -C {small} -cf - . | {' '.join(ssh)} 'mkdir -p {d} && tar -C {d} -xf -'", shell=True)

            small_methods: dict[str, Callable[[], float]] = {
                "scp -r": lambda: timed([*scp, "-r", str(small), f"{remote}:{fresh('tree')}"]),
                "tar | ssh": lambda: tar_ssh(fresh("tree")),
                "engine (tar, verified)": engine_tree,
            }
            for r in range(args.rounds):
                for name in rotated(list(small_methods), r):
                    rows.append((f"{args.files} files", name, r, total, small_methods[name]()))
                    settle()
            stack_link.close()

        # 3. trigger-to-first-byte through Airflow --------------------------------------------
        latencies: list[tuple[float, float]] = []
        if args.airflow_runs and info.airflow is not None:
            vault_info = info.vault("dev")
            vault = Vault(vault_info.addr, vault_info.gateway_token(), mount=vault_info.mount)
            key_id = uuid.uuid4().hex
            vault.put_ssh_key("bench", key_id, pair.private_key)
            storage = info.airflow.storage_root / "bench"
            storage.mkdir(parents=True, exist_ok=True)
            make_big(storage / "one-mib.bin", MiB)
            client = AirflowClient(info.airflow.url, info.airflow.username, info.airflow.password())
            try:
                for i in range(args.airflow_runs):
                    ref = {"site": "local", "host": site.host, "port": site.port, "host_key": site.host_key,
                           "login": "sciuser1", "work_dir": work, "key_id": key_id, "vault_addr": vault.addr,
                           "wrap_token": vault.wrap(Vault.ssh_key_path("bench", key_id), "300s")}
                    conf = {"requested_by": "bench", "source": {"kind": "local", "path": "bench/one-mib.bin"},
                            "target": {"kind": "site", "site": ref, "path": f"airflow-{i}.bin"}}
                    t0 = time.time()
                    run = client.trigger("stage_in", conf)
                    status = client.wait("stage_in", run["dag_run_id"], timeout=300, poll=0.5)
                    t1 = time.time()
                    assert status.state == "success", status.error
                    latencies.append((status.result["first_byte_at"] - t0, t1 - t0))
            finally:
                vault.delete_ssh_key("bench", key_id)
                shutil.rmtree(storage, ignore_errors=True)
    finally:
        with connect(endpoint, "sciuser1", pair.private_key) as session:
            session.run(["rm", "-rf", work], timeout=600)
        revoke_key("sciuser1", pair.public.line)
        shutil.rmtree(tmp, ignore_errors=True)

    load_after = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} CPUs)")
    print(f"\n{'case':<14} {'method':<24} " + " ".join(f"{'round ' + str(r + 1):>9}" for r in range(args.rounds))
          + f" {'median':>9}   (MiB/s)")
    rate: dict[tuple[str, str, int], float] = {}
    for case, method, r, nbytes, seconds in rows:
        rate[(case, method, r)] = nbytes / seconds / MiB
    for case, method in dict.fromkeys((c, m) for c, m, *_ in rows):
        rates = [rate[(case, method, r)] for r in range(args.rounds)]
        print(f"{case:<14} {method:<24} " + " ".join(f"{x:9.1f}" for x in rates) + f" {median(rates):9.1f}")

    def ratio(case: str, method: str, reference: str, note: str) -> None:
        per_round = [rate[(case, method, r)] / rate[(case, reference, r)] for r in range(args.rounds)]
        print(f"{case + ', engine / ' + reference:<36}: median {median(per_round):.2f}x  (rounds: "
              + ", ".join(f"{x:.2f}" for x in per_round) + f"){note}")

    big_case, small_case = "1 file", f"{args.files} files"
    print()
    ratio(big_case, "engine (verified)", "scp", "  target >= 0.9x")
    ratio(big_case, "engine (verified)", "scp -c aes128-gcm", "  information")
    ratio(big_case, "engine (verified)", "cat | ssh", "")
    ratio(small_case, "engine (tar, verified)", "scp -r", "  target >= 1x")
    ratio(small_case, "engine (tar, verified)", "tar | ssh", "")
    print("engine start-up before the first byte (connect excluded): "
          + ", ".join(f"{x:.2f}" for x in startups) + " s")
    for i, (first, total_s) in enumerate(latencies):
        print(f"airflow run {i + 1}: trigger -> first byte {first:.2f} s, trigger -> success {total_s:.2f} s")


if __name__ == "__main__":
    main()
