#!/usr/bin/env bash
# make systemd-check: run the shipped units under a real systemd.
#
# Boots a minimal Debian root (mmdebstrap) with systemd-nspawn, installs kantata-sync in it
# from this checkout as deploy/OPERATIONS.md says, with the units of deploy/ unmodified plus
# the test drop-ins of tests/systemd/dropins, and checks, inside the container
# (tests/systemd/inside.py): 1 the daemon gets READY=1, 2 the credential arrives, 3 it works
# under every hardening option, 4 a change flows to the sandbox, 5 the watchdog restarts a
# stopped daemon, 6 `systemctl stop` drains and exits 0, 7 the timer runs the oneshot, 8 SIGHUP
# retries a rejected token, 9 exit codes 5 and 3 fail the units (3 is not restarted), 10 a new
# token takes effect at a restart.
# Prints one PASS/FAIL line per check and exits 1 if any failed.
#
# Needs root, mount/PID/network namespaces and overlayfs; skips and says why otherwise. Needs
# systemd-nspawn and mmdebstrap (Debian: systemd-container mmdebstrap); skips without them
# too, unless KANTATA_SYNC_REQUIRE_TOOLS=1, which makes that a failure.
#
# The Debian root, with the venv and kantata-sync's dependencies from PyPI, is built once and
# cached in $KANTATA_SYSTEMD_CHECK_CACHE (default /var/cache/kantata-sync/systemd-check),
# keyed by pyproject.toml, the Debian release, the package list and tests/systemd/build-root.sh. Each run installs the
# current checkout into a throw-away overlay of it (in memory) whose network is private.
# Everything happens in a private mount namespace: nothing stays mounted or running, even
# after a failure. The last run's results, console and journal stay in $CACHE/last-run/.
# One run at a time: a second one waits for the first.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${KANTATA_SYSTEMD_CHECK_CACHE:-/var/cache/kantata-sync/systemd-check}
# Bump when the way the root is built changes, so that cached roots are rebuilt.
RECIPE=1
PACKAGES=(systemd systemd-sysv dbus libnss-systemd python3 python3-venv ca-certificates)
BOOT_TIMEOUT=${KANTATA_SYSTEMD_CHECK_TIMEOUT:-300}
CHECKS=(install ready credential hardening flow watchdog drain timer reload exit-codes rotate)
INSTALL_HINT="apt-get install -y --no-install-recommends systemd-container mmdebstrap"

say() { printf 'systemd-check: %s\n' "$*"; }
skip() {
    say "SKIP: $*"
    exit 0
}
die() {
    say "ERROR: $*" >&2
    exit 1
}

preflight() {
    [ "$(uname -s)" = Linux ] || skip "not Linux"
    [ "$(id -u)" -eq 0 ] || skip "needs root (it mounts an overlay and boots a container)"
    local missing=() tool
    for tool in systemd-nspawn mmdebstrap unshare setpriv flock timeout; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        local reason="${missing[*]} not installed ($INSTALL_HINT)"
        [ "${KANTATA_SYNC_REQUIRE_TOOLS:-}" = 1 ] && die "$reason; KANTATA_SYNC_REQUIRE_TOOLS=1"
        skip "$reason"
    fi
    unshare --mount --pid --net --fork true 2>/dev/null ||
        skip "cannot create mount, PID and network namespaces here (unshare failed)"
    grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null ||
        skip "the kernel has no overlayfs"
}

# Everything below runs in private mount and PID namespaces, as their first process: when it
# ends, however it ends, its mounts vanish and every process it started (the container's
# included) is killed. If unshare itself is killed, this gets SIGTERM and cleans up.
if [ "${_KANTATA_SYSTEMD_CHECK_NS:-}" != 1 ]; then
    preflight
    export _KANTATA_SYSTEMD_CHECK_NS=1
    exec unshare --mount --propagation private --pid --fork --kill-child=TERM --mount-proc \
        -- "$BASH" "${BASH_SOURCE[0]}" "$@"
fi

START=$SECONDS
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
if ! flock --nonblock 9; then
    say "another systemd-check is running; waiting for it"
    flock --wait 900 9 || die "gave up waiting for the other systemd-check"
fi

# Mount points left by a run that was killed (their tmpfs went with it): empty directories.
rmdir /tmp/kantata-systemd-check.* 2>/dev/null || true
WORK=$(mktemp -d /tmp/kantata-systemd-check.XXXXXX)
BOOT_PID=
BUILDING=
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$BOOT_PID" ] && kill -0 "$BOOT_PID" 2>/dev/null; then
        kill -TERM "$BOOT_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$BOOT_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$BOOT_PID" 2>/dev/null || true
        wait "$BOOT_PID" 2>/dev/null || true
    fi
    [ -n "$BUILDING" ] && rm -rf "$BUILDING"
    umount --recursive --lazy "$WORK" 2>/dev/null || true
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'say "interrupted: stopping the container"; exit 130' INT
trap 'say "terminated: stopping the container"; exit 143' TERM
mount -t tmpfs -o mode=0700 kantata-systemd-check "$WORK"
# systemd-nspawn keeps its propagation directories here; a tmpfs keeps them off the host.
mkdir -p /run/systemd/nspawn
mount -t tmpfs -o mode=0755 kantata-systemd-check /run/systemd/nspawn

# The checkout, as pip needs it to build (a copy: the build writes into it).
copy_source() {
    mkdir -p "$1"
    tar -C "$REPO" --exclude=__pycache__ --exclude='*.egg-info' --exclude=build -cf - \
        pyproject.toml README.md worker migrations deploy tests/systemd | tar -C "$1" -xf -
}

# nspawn without booting: a command in ROOT as its root user.
in_root() {
    local root=$1
    shift
    setpriv --pdeathsig KILL systemd-nspawn --register=no --keep-unit --quiet --pipe \
        --directory="$root" --setenv=PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

# The Debian release and mirror of this host (Debian's, as apt here is configured).
. /etc/os-release
SUITE=${VERSION_CODENAME:-bookworm}
MIRRORS=()
for sources in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    if [ -s "$sources" ] && grep -q '^[^#]*debian' "$sources"; then
        MIRRORS=("$sources")
        break
    fi
done

KEY=$(
    {
        echo "recipe $RECIPE suite $SUITE packages ${PACKAGES[*]}"
        cat "$REPO/pyproject.toml" "$REPO/tests/systemd/build-root.sh"
    } | sha256sum | cut -c1-16
)
ROOT="$CACHE/root-$KEY"

build_root() {
    say "cold: building the Debian $SUITE root (mmdebstrap) and the venv (pip, from PyPI)"
    BUILDING="$CACHE/building-$KEY"
    rm -rf "$BUILDING"
    local log="$WORK/build.log"
    local packages
    packages=$(IFS=,; echo "${PACKAGES[*]}")
    if ! mmdebstrap --variant=apt --include="$packages" "$SUITE" "$BUILDING" "${MIRRORS[@]}" \
        >"$log" 2>&1; then
        tail -n 40 "$log"
        die "mmdebstrap failed"
    fi
    # pip needs the host's CA bundle where TLS to PyPI is intercepted.
    local ca=() bundle=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
    [ -f "$bundle" ] && ca=(--bind-ro="$bundle:/run/host-ca.crt" --setenv=PIP_CERT=/run/host-ca.crt)
    copy_source "$WORK/build-src"
    # deploy/OPERATIONS.md's install, with the root's own Python.
    if ! in_root "$BUILDING" "${ca[@]}" --bind="$WORK/build-src:/src" -- \
        /bin/sh /src/tests/systemd/build-root.sh >>"$log" 2>&1; then
        tail -n 40 "$log"
        die "building the venv failed"
    fi
    mv "$BUILDING" "$ROOT"
    BUILDING=
    local old
    for old in "$CACHE"/root-* "$CACHE"/building-*; do
        [ -e "$old" ] && [ "$old" != "$ROOT" ] && rm -rf "$old"
    done
    return 0
}

COLD=warm
if [ ! -d "$ROOT" ]; then
    COLD=cold
    build_root
    say "root built in $((SECONDS - START)) s: $ROOT"
else
    say "warm: cached root $ROOT"
fi

# A throw-away overlay of the cached root, in memory.
CHECK_START=$SECONDS
mkdir -p "$WORK"/{upper,overlay-work,merged,src,results}
mount -t overlay kantata-systemd-check \
    -o "lowerdir=$ROOT,upperdir=$WORK/upper,workdir=$WORK/overlay-work" "$WORK/merged"
copy_source "$WORK/src"
install -m 0644 "$REPO"/tests/systemd/units/kantata-check.{target,service} \
    "$WORK/merged/etc/systemd/system/"

say "booting the container (private network); the checks run inside"
# pdeathsig: if this script dies, timeout and nspawn die with it, and the container with them.
setpriv --pdeathsig KILL timeout --kill-after=10 "$BOOT_TIMEOUT" \
    setpriv --pdeathsig KILL systemd-nspawn --register=no --keep-unit --quiet \
    --directory="$WORK/merged" --machine=kantata-check --private-network \
    --console=read-only --bind="$WORK/src:/src" --bind="$WORK/results:/results" \
    --boot -- systemd.unit=kantata-check.target systemd.show_status=false \
    </dev/null >"$WORK/results/console.log" 2>&1 &
BOOT_PID=$!
BOOT_STATUS=0
wait "$BOOT_PID" || BOOT_STATUS=$?
BOOT_PID=

# Nothing may outlive the container.
LEFT=()
for proc in /proc/[0-9]*; do
    if [ "$(readlink "$proc/root" 2>/dev/null)" = "$WORK/merged" ]; then
        LEFT+=("${proc#/proc/}")
    fi
done
if [ "${#LEFT[@]}" -gt 0 ]; then
    kill -KILL "${LEFT[@]}" 2>/dev/null || true
fi

rm -rf "$CACHE/last-run"
cp -r "$WORK/results" "$CACHE/last-run"

RESULTS="$WORK/results/results.txt"
touch "$RESULTS"
PASSED=0
FAILED=0
for number in "${!CHECKS[@]}"; do
    name=${CHECKS[$number]}
    line=$(grep -m1 -E "^(PASS|FAIL) $number $name: " "$RESULTS" || true)
    if [ -z "$line" ]; then
        why="did not run"
        [ "$BOOT_STATUS" -eq 124 ] && why="did not finish within ${BOOT_TIMEOUT} s"
        line="FAIL $number $name: $why (see $CACHE/last-run/)"
    fi
    # The install is a step, not a check: it is shown only when it failed.
    if [ "$number" -eq 0 ]; then
        [[ $line == FAIL* ]] && { echo "$line"; FAILED=$((FAILED + 1)); }
        continue
    fi
    echo "$line"
    if [[ $line == PASS* ]]; then PASSED=$((PASSED + 1)); else FAILED=$((FAILED + 1)); fi
done
if [ "${#LEFT[@]}" -gt 0 ]; then
    echo "FAIL processes outlived the container: ${LEFT[*]}"
    FAILED=$((FAILED + 1))
fi
if [ "$BOOT_STATUS" -ne 0 ]; then
    echo "FAIL the container exited $BOOT_STATUS; its console: $CACHE/last-run/console.log"
    FAILED=$((FAILED + 1))
fi
say "$COLD: boot and checks $((SECONDS - CHECK_START)) s, total $((SECONDS - START)) s"
[ "$FAILED" -eq 0 ] || say "logs of this run: $CACHE/last-run/ (results, console, journal)"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
