#!/usr/bin/env bash
# Make sure Debian packages that some tests need are installed: ensure-system-packages.sh PACKAGE...
#
# As root on Debian/Ubuntu (CI, a fresh container) it installs the missing ones with apt-get, running
# `apt-get update` only when the install fails without it. Anywhere else it installs nothing and prints, loudly,
# what is missing and how to install it: the tests that need it then skip (they say why). It never fails the
# build over a package it could not install; it fails only if apt-get itself fails as root.
# Services that a package would start at install time (nginx does) are kept from starting.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 PACKAGE..." >&2
    exit 2
fi

loud() {
    echo "########################################################################" >&2
    for line in "$@"; do echo "### $line" >&2; done
    echo "########################################################################" >&2
}

if ! command -v dpkg-query >/dev/null 2>&1; then
    loud "not a Debian-based system: cannot check for the packages: $*" \
         "install their equivalents with your package manager, or the tests that need them will be SKIPPED"
    exit 0
fi

missing=()
for package in "$@"; do
    if [ "$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)" != "install ok installed" ]; then
        missing+=("$package")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    loud "missing system packages: ${missing[*]}" \
         "the tests that need them will be SKIPPED; install them with:" \
         "    sudo apt-get install -y --no-install-recommends ${missing[*]}"
    exit 0
fi

echo "installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Keep packages from starting their services (nginx would start on port 80): Debian's invoke-rc.d asks
# /usr/sbin/policy-rc.d, and 101 means "not allowed". Docker images usually ship one already; leave it alone then.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
install=(apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${missing[@]}")
if ! "${install[@]}"; then
    apt-get update -q
    "${install[@]}"
fi
