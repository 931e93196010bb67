#!/bin/sh
# Run by scripts/systemd-check.sh inside the freshly made Debian root (systemd-nspawn, the
# host's network), once per cache key: deploy/OPERATIONS.md's venv and `pip install`, with
# the root's own Python, from a copy of the checkout at /src. The build requirements are kept
# as wheels, so that each check can reinstall kantata-sync from the current checkout offline.
set -eu
VENV=/opt/kantata-sync/venv
KEEP=/var/cache/kantata-check

# What an installed Debian has and mmdebstrap leaves out (it copies the host's hostname).
echo kantata-check >/etc/hostname
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >/etc/hosts

python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --no-cache-dir /src

mkdir -p "$KEEP"
python3 - >"$KEEP/build-requires.txt" <<'PY'
import tomllib

with open("/src/pyproject.toml", "rb") as handle:
    print("\n".join(tomllib.load(handle)["build-system"]["requires"]))
PY
"$VENV/bin/pip" download --quiet --no-cache-dir --dest "$KEEP/wheels" -r "$KEEP/build-requires.txt"

# What the root holds, for a post-mortem.
"$VENV/bin/pip" freeze --all >"$KEEP/pip-freeze.txt"
dpkg-query -W >"$KEEP/packages.txt"
