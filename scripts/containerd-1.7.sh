#!/usr/bin/env bash
# Fetches Debian trixie's containerd 1.7.24 (the oldest containerd that loads a diff proxy
# and runs on bookworm) into a cache folder, WITHOUT installing it or touching the machine's
# apt sources: apt reads a private sources list and state directory, `apt-get download`
# fetches the signed .deb, and `dpkg-deb -x` unpacks it.
#
#   scripts/containerd-1.7.sh          # prints the directory holding containerd and ctr
#
# Idempotent: when "$CACHE/root/usr/bin/containerd --version" already reports 1.7.24 it only
# prints the directory. The cache folder is $CIMSNAP_CONTAINERD17_CACHE, else
# ${XDG_CACHE_HOME:-~/.cache}/cimsnap/containerd-1.7.24. Tests find the binaries through
# $CIMSNAP_CONTAINERD17_BIN (the printed directory), else this default location.
set -euo pipefail
VERSION="1.7.24~ds1-6+deb13u1"
UPSTREAM="1.7.24"
CACHE="${CIMSNAP_CONTAINERD17_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/cimsnap/containerd-$UPSTREAM}"
BIN="$CACHE/root/usr/bin"

if [ -x "$BIN/containerd" ] && "$BIN/containerd" --version 2>/dev/null | grep -q " $UPSTREAM"; then
    echo "$BIN"
    exit 0
fi
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || { echo "containerd-1.7: $tool is required" >&2; exit 1; }
done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { echo "containerd-1.7: $keyring is missing (debian-archive-keyring)" >&2; exit 1; }

mkdir -p "$CACHE"
work="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# The Debian mirror this machine's apt already uses (deb822 .sources or one-line lists):
# the first archive URI that serves a Debian release suite, not a -security or -updates one.
mirror="$(
    {
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -r "$f" ] || continue
            awk 'BEGIN{RS=""; FS="\n"} {u=""; s=""
                 for (i=1;i<=NF;i++) { if ($i ~ /^URIs:/) u=$i; if ($i ~ /^Suites:/) s=$i }
                 if (u != "" && s ~ /(bookworm|trixie|stable)( |$)/) {
                     sub(/^URIs:[ \t]*/, "", u); split(u, a, " "); print a[1] } }' "$f"
        done
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk '$1 == "deb" { for (i=2;i<=NF;i++) if ($i !~ /^\[/ && $i !~ /\]$/) {
                     if ($(i+1) !~ /-(security|updates|backports)/) print $i; break } }'
    } | grep -v -- '-security' | head -n1 || true
)"
[ -n "$mirror" ] || { echo "containerd-1.7: no Debian mirror found in the apt sources" >&2; exit 1; }
echo "deb [signed-by=$keyring] $mirror trixie main" >"$work/trixie.list"
apt_opts=(
    -o "Dir::Etc::SourceList=$work/trixie.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o "APT::Sandbox::User=root"
)
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "containerd-1.7: fetching containerd $VERSION from Debian trixie into $CACHE" >&2
apt-get "${apt_opts[@]}" -qq update >&2
# The pinned version first; a later trixie point release of the same upstream version
# (1.7.24~...) is accepted when the pinned one has left the archive.
version="$VERSION"
if ! apt-cache "${apt_opts[@]}" madison containerd | awk '{print $3}' | grep -qxF "$VERSION"; then
    version="$(apt-cache "${apt_opts[@]}" madison containerd | awk '{print $3}' \
        | grep -E "^$UPSTREAM~" | head -n1 || true)"
    [ -n "$version" ] || { echo "containerd-1.7: no containerd $UPSTREAM in trixie" >&2; exit 1; }
fi
(cd "$work" && apt-get "${apt_opts[@]}" -qq download "containerd=$version" >&2)
dpkg-deb -x "$work"/containerd_*.deb "$work/root"
"$work/root/usr/bin/containerd" --version | grep -q " $UPSTREAM" \
    || { echo "containerd-1.7: unpacked binary is not $UPSTREAM" >&2; exit 1; }
rm -rf "$CACHE/root"
mv "$work/root" "$CACHE/root"
echo "$BIN"
