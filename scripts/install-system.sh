#!/usr/bin/env bash
# Install the system packages and site users the local stack needs (Debian 12, as root).
#
# Idempotent and quick when everything is already there: apt is only touched (and
# `apt-get update` only run) when a package is missing. The daemons are NOT started here:
# `python -m hpcwaas.stack up` starts them with private state, sockets and ports.
set -euo pipefail

PACKAGES=(
    openssh-server openssh-client
    slurm-wlm slurmctld slurmd slurm-client slurmdbd munge
    mariadb-server mariadb-client
    postgresql-15 postgresql-client-15
    python3 python3-venv
    procps iproute2 ca-certificates
    bubblewrap  # the sandbox untrusted Ansible runs in (deployer/sandbox.py)
    debootstrap  # the Apptainer builder: a Debian sid tree (hpcwaas/stack/apptainer.py)
    sudo  # the unprivileged gateway's one way to root: the image build helper (containers/build_helper.py)
    uidmap  # newuidmap/newgidmap: each sandbox of the unprivileged gateway runs as a uid of its own
    chromium  # headless browser for the catalogue's web-page tests (driven by Playwright)
)
SITE_USERS=(sciuser1 sciuser2)
GATEWAY_USER=hpcwaas  # the gateway runs as this system user, never as root (docs/security.md)
GATEWAY_SUBIDS=62000-62999  # its sandboxes' uids (deployer/sandbox.py; root's pool is 61000-61999)

log() { printf '[install-system] %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    echo "install-system.sh must run as root (it installs packages and creates users)." >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    # No systemd here, and apt would otherwise try to start sshd on :22, MariaDB, munge and the
    # Debian PostgreSQL cluster through init scripts. Deny service starts for the duration of
    # the install unless the machine already has a policy (containers usually do).
    added_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    trap '[[ $added_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "packages installed"
else
    log "all packages present"
fi

for user in "${SITE_USERS[@]}"; do
    if ! id -u "$user" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash "$user"
        log "created user $user"
    fi
    # useradd leaves the password field as "!" (locked); with UsePAM no, sshd refuses locked
    # accounts even for key logins. "*" means "no password" without locking the account.
    if [[ $(getent shadow "$user" | cut -d: -f2) != '*' ]]; then
        usermod -p '*' "$user"
    fi
    home=$(getent passwd "$user" | cut -d: -f6)
    group=$(id -gn "$user")
    [[ -d $home ]] || install -d -m 755 -o "$user" -g "$group" "$home"
    install -d -m 700 -o "$user" -g "$group" "$home/.ssh"
done
log "site users ready: ${SITE_USERS[*]}"

if ! id -u "$GATEWAY_USER" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/hpcwaas --create-home --shell /usr/sbin/nologin "$GATEWAY_USER"
    log "created the gateway's user $GATEWAY_USER"
fi
if ! grep -q "^$GATEWAY_USER:${GATEWAY_SUBIDS%-*}:" /etc/subuid 2>/dev/null \
        || ! grep -q "^$GATEWAY_USER:${GATEWAY_SUBIDS%-*}:" /etc/subgid 2>/dev/null; then
    usermod --add-subuids "$GATEWAY_SUBIDS" --add-subgids "$GATEWAY_SUBIDS" "$GATEWAY_USER"
    log "subordinate ids $GATEWAY_SUBIDS for $GATEWAY_USER (one per sandboxed run)"
fi
# The gateway's user runs the project's Python: every folder above the interpreter must let it
# through (pyenv installs under /root, which is 0700). Traverse only (o+x), never read.
python=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')
dir=$(dirname "$python")
while [[ $dir != / ]]; do
    [[ $(stat -c %A "$dir") == *x ]] || { chmod o+x "$dir"; log "o+x on $dir (the gateway's user runs $python)"; }
    dir=$(dirname "$dir")
done
