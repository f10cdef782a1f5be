#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, when they are missing.
#   containerd     - the real daemon the integration tests start on a private socket
#   libhivex-bin   - hivexml/hivexsh: an independent regf reader for the hive tests
#   python3-hivex  - hivex's Python binding (Debian's /usr/bin/python3 only): raw hive dumps/edits
#   ntfs-3g        - mkntfs/ntfscat: regenerates Windows' upcase table to check the shipped copy
#   systemd        - systemd-analyze verify: checks deploy/cimsnap.service
# containerd 1.7.24 (the diff-proxy tests) is not installed: scripts/containerd-1.7.sh unpacks
# Debian trixie's package into a cache folder; the Makefile runs it after this script.
# Runs apt-get only when something is missing; needs root (or sudo) in that case.
set -euo pipefail
need=()
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v ctr >/dev/null 2>&1 || need+=(containerd)
command -v hivexml >/dev/null 2>&1 || need+=(libhivex-bin)
/usr/bin/python3 -c 'import hivex' >/dev/null 2>&1 || need+=(python3-hivex)
command -v mkntfs >/dev/null 2>&1 || need+=(ntfs-3g)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "system-deps: need root to install: ${need[*]}" >&2
        echo "system-deps: run 'sudo apt-get install ${need[*]}' and try again" >&2
        exit 1
    fi
fi
echo "system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
