#!/usr/bin/env bash
# Install the packages for a single-node SLURM cluster on localhost (Debian 12 / Ubuntu).
#
# Idempotent and quiet. Installs only packages: no service is enabled or started here (Debian's
# postinst scripts start nothing without systemd); slurm/start.sh runs the daemons itself.
# Not root: prints the command to run instead and exits 0, so CI scripts can call it blindly.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "slurm/install.sh: all packages present (${PACKAGES[*]})"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm/install.sh: apt-get not found; install ${missing[*]} (Slurm >= 22.05) by hand" >&2
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm/install.sh: not root, nothing installed. Run:"
    echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
echo "slurm/install.sh: installing ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "slurm/install.sh: done"
