#!/usr/bin/env bash
# A base image for the Dockerfiles' PYTHON_IMAGE made from Debian's packages, for machines that reach no
# container registry but Debian's mirror: debootstrap (bookworm, minbase, Python 3.11 as `python`), then
# `podman import`. The image stands in for python:3.11-slim-bookworm (the public default), which has the
# same Python minor version, so the images' hashed requirements (cp311 wheels) install the same.
#
#   images/base.sh            prints the image's name, building it once (about 2 min; cached in podman)
set -euo pipefail
IMAGE=${MLPERF_BASE_IMAGE:-localhost/mlperf-base/python:3.11-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if podman image exists "$IMAGE"; then
    echo "$IMAGE"
    exit 0
fi
root=$(mktemp -d "${TMPDIR:-/tmp}/mlperf-base.XXXXXX")
trap 'rm -rf "$root"' EXIT
# python3-venv: the Dockerfiles make /opt/venv; python-is-python3: they call `python`.
debs=${MLPERF_CACHE:-$HOME/.cache/mlperf-operator}/debootstrap
mkdir -p "$debs"
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    --cache-dir="$debs" bookworm "$root" "$MIRROR" >&2
# The host's own CA certificates (a TLS-inspecting proxy's, say), so that pip in the build reaches PyPI as the
# host does; the public python image is used where none are needed.
if compgen -G "/usr/local/share/ca-certificates/*.crt" > /dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >&2
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# pip reads this bundle (the system's, with those certificates) instead of its own certifi.
tar -C "$root" --numeric-owner -c . | podman import --change 'CMD ["python3"]' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - "$IMAGE" >&2
echo "$IMAGE"
