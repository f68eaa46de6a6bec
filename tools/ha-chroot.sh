#!/bin/sh
# Builds Home Assistant 2026.11 once, in a Debian sid chroot with Debian's python3.14 (today's
# Home Assistant needs Python >= 3.14.2; this machine's pyenv stops at 3.13). See
# ../shared/reference/ha-current.md for where each step and pin comes from.
# Usage: tools/ha-chroot.sh [ROOT]   (default: .ha-2026 in the repo). Re-running with a finished
# chroot only checks its stamp; an unfinished one is removed and built again.
set -eu

HA_VERSION=2026.11.0
ROOT=${1:-$(cd "$(dirname "$0")/.." && pwd)/.ha-2026}
STAMP=$ROOT/opt/ha/.redlight-built
# The stamp names what was installed, so a changed pin rebuilds.
WANT="homeassistant==$HA_VERSION"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi

# What Home Assistant would otherwise pip-install while the test waits for it (or fall into
# recovery mode, or leave the frontend at "Loading..." without).
EXTRAS="paho-mqtt==2.1.0 home-assistant-frontend==20261028.4 aiohasupervisor==0.8.1
pyotp==2.10.0 PyQRCode==1.2.1 PyTurboJPEG==1.8.3 hassil==3.12.1
home-assistant-intents==2026.10.27 gazetteer-matcher==1.1.0 ha-ffmpeg==3.2.2
infrared-protocols==10.5.0 rf-protocols==4.3.0 mutagen==1.48.1"
# No wheels for 3.14: built from source, hence g++ and python3.14-dev.
FROM_SOURCE="pymicro-vad==1.0.1 pyspeex-noise==1.0.2"

MIRROR=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
command -v debootstrap >/dev/null || apt-get install -y debootstrap

unmount() {
    for m in dev sys proc; do
        mountpoint -q "$ROOT/$m" && umount -R "$ROOT/$m"
    done
    return 0
}
# An unfinished build (interrupted, or an older pin) starts over rather than being patched.
if [ -d "$ROOT" ]; then
    unmount
    rm -rf "$ROOT"
fi
trap unmount EXIT INT TERM

debootstrap --variant=minbase --include=python3.14,python3.14-venv,ca-certificates \
    sid "$ROOT" "$MIRROR"

# pip in the chroot fails certificate checks without the host's CA bundle; apt calls sid's
# Release file expired on a mirror snapshot.
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca-certificates.crt"
printf '[global]\ncert = /etc/ssl/certs/host-ca-certificates.crt\n' >"$ROOT/etc/pip.conf"
echo 'Acquire::Check-Valid-Until "false";' >"$ROOT/etc/apt/apt.conf.d/99redlight-valid-until"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"

mount -t proc proc "$ROOT/proc"
mount -t sysfs sys "$ROOT/sys"
mount --rbind /dev "$ROOT/dev"

in_root() {
    chroot "$ROOT" env -i PATH=/opt/ha/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TZ=UTC \
        DEBIAN_FRONTEND=noninteractive "$@"
}
in_root apt-get update -q
in_root apt-get install -y -q --no-install-recommends g++ python3.14-dev
in_root python3.14 -m venv /opt/ha
in_root pip install -q --upgrade pip
in_root pip install -q "$WANT"
# shellcheck disable=SC2086 # word splitting is the point: one argument per package
in_root pip install -q $EXTRAS $FROM_SOURCE
echo "$WANT" >"$STAMP"
