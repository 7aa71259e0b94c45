#!/usr/bin/env bash
# Start a container engine for the container tests (CI, or any Debian 12 machine as root):
# podman + buildah with runc, podman's Docker-compatible API socket (what containers/build.py
# talks to with docker-py), and a local base image built with debootstrap, because no image
# registry may be reachable.
#
#   sudo bash .ci/start-podman.sh        # as root; no systemd needed; safe to run again
#
# What it does, each step skipped when already done:
#   1. installs podman buildah runc debootstrap (+ uidmap slirp4netns fuse-overlayfs) with apt
#      if a binary is missing;
#   2. writes /etc/containers/containers.conf: runtime runc (crun fails on hybrid cgroups:
#      "cgroups in hybrid mode not supported"), ulimits the engine may set in a VM/container
#      (the defaults fail with "setrlimit ... Operation not permitted"), cgroupfs and file
#      events (no systemd, no journald);
#   3. starts `podman system service --time=0 unix:///run/podman/podman.sock` in the
#      background (log: /var/log/podman-service.log) unless the socket already answers;
#   4. builds localhost/irflow-base:bookworm unless it exists: debootstrap --variant=minbase
#      of Debian 12 with python3 python3-venv python3-pip ca-certificates, from the Debian
#      mirror in this machine's apt sources, imported with `podman import`. This is the
#      stand-in for the registry base (python:3.11-slim-bookworm@sha256:...) on machines
#      without a registry: build.py --base-image localhost/irflow-base:bookworm.
#
# Environment knobs (all optional):
#   IRFLOW_PODMAN_SOCKET   socket path                      (default: /run/podman/podman.sock)
#   IRFLOW_BASE_IMAGE      local base image name            (default: localhost/irflow-base:bookworm)
#   IRFLOW_DEBIAN_MIRROR   Debian mirror for debootstrap    (default: from the apt sources)
#   IRFLOW_DEBIAN_SUITE    Debian suite                     (default: bookworm)
#   IRFLOW_PODMAN_TIMEOUT  seconds to wait for the socket   (default: 60)
set -euo pipefail

SOCKET="${IRFLOW_PODMAN_SOCKET:-/run/podman/podman.sock}"
BASE_IMAGE="${IRFLOW_BASE_IMAGE:-localhost/irflow-base:bookworm}"
SUITE="${IRFLOW_DEBIAN_SUITE:-bookworm}"
TIMEOUT="${IRFLOW_PODMAN_TIMEOUT:-60}"
CONF=/etc/containers/containers.conf
MARKER="# written by irflow .ci/start-podman.sh"
SERVICE_LOG=/var/log/podman-service.log

log() { printf '[start-podman] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages, writes /etc/containers, starts a daemon)"

# --- 1. packages -----------------------------------------------------------------------------
need_install=0
for bin in podman buildah runc debootstrap newuidmap slirp4netns fuse-overlayfs; do
    command -v "$bin" >/dev/null 2>&1 || need_install=1
done
if (( need_install )); then
    log "installing podman buildah runc debootstrap uidmap slirp4netns fuse-overlayfs (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        podman buildah runc debootstrap uidmap slirp4netns fuse-overlayfs \
        ca-certificates debian-archive-keyring >/dev/null
else
    log "podman, buildah, runc and debootstrap already installed"
fi
log "$(podman --version), $(buildah --version | cut -d' ' -f1-3), runc $(runc --version | awk 'NR==1 {print $3}')"

# --- 2. containers.conf ----------------------------------------------------------------------
new_conf=$(cat <<EOF
$MARKER -- edit that script, not this file.
[containers]
# The engine's default ulimits cannot be set in a VM/CI container ("setrlimit ... Operation
# not permitted"); these can.
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
# crun fails here ("cgroups in hybrid mode not supported"); runc works.
runtime = "runc"
# No systemd and no journald on the CI machine.
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
)
conf_changed=0
if [[ -f $CONF ]] && grep -qF "$MARKER" "$CONF"; then
    if [[ "$(cat "$CONF")" != "$new_conf" ]]; then
        printf '%s\n' "$new_conf" > "$CONF"
        conf_changed=1
        log "updated $CONF"
    else
        log "$CONF is up to date"
    fi
else
    if [[ -f $CONF ]]; then
        cp -p "$CONF" "$CONF.bak.$(date +%s)"
        log "saved the previous $CONF as $CONF.bak.*"
    fi
    install -d -m 0755 /etc/containers
    printf '%s\n' "$new_conf" > "$CONF"
    chmod 0644 "$CONF"
    conf_changed=1
    log "wrote $CONF (runtime runc, default_ulimits, cgroupfs, file events)"
fi

# --- 3. the API socket -----------------------------------------------------------------------
socket_answers() { podman --remote --url "unix://$SOCKET" version >/dev/null 2>&1; }

service_pids() { pgrep -f "^podman system service --time=0 unix://$SOCKET\$" || true; }

if socket_answers && (( conf_changed )); then
    # The service read the old configuration: restart the one this script started.
    for pid in $(service_pids); do
        log "restarting the podman service (pid $pid) to apply the new $CONF"
        kill "$pid"
    done
    for _ in $(seq 1 20); do socket_answers || break; sleep 0.5; done
fi
if socket_answers; then
    log "podman API socket unix://$SOCKET already answers"
else
    install -d -m 0755 "$(dirname "$SOCKET")"
    rm -f "$SOCKET"
    log "starting podman system service on unix://$SOCKET (log: $SERVICE_LOG)"
    setsid nohup podman system service --time=0 "unix://$SOCKET" >>"$SERVICE_LOG" 2>&1 </dev/null &
    deadline=$(( SECONDS + TIMEOUT ))
    until socket_answers; do
        if (( SECONDS > deadline )); then
            tail -n 30 "$SERVICE_LOG" >&2 || true
            die "the podman API socket did not answer within ${TIMEOUT}s"
        fi
        sleep 0.5
    done
    log "podman API socket is up"
fi

# --- 4. the local base image -----------------------------------------------------------------
debian_mirror() {
    # The first Debian mirror (not the security archive) of $SUITE in the apt sources.
    if [[ -n ${IRFLOW_DEBIAN_MIRROR:-} ]]; then echo "$IRFLOW_DEBIAN_MIRROR"; return; fi
    local uri=""
    shopt -s nullglob
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        # deb822 stanzas: URIs/Suites lines; pick a stanza whose Suites contain $SUITE itself.
        uri=$(awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; ok = 0; isdeb = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/ && $i ~ /[[:space:]]deb([[:space:]]|$)/) isdeb = 1
                    if ($i ~ /^URIs:/) { sub(/^URIs:[[:space:]]*/, "", $i); split($i, u, /[[:space:]]+/); uris = u[1] }
                    if ($i ~ /^Suites:/) { n = split($i, s, /[[:space:]]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
                }
                if (isdeb && ok && uris != "" && uris !~ /security/) { print uris; exit }
            }' "$f")
        [[ -n $uri ]] && break
    done
    shopt -u nullglob
    if [[ -z $uri ]]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | awk -v suite="$SUITE" '$1 == "deb" {
                  i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                  if ($(i + 1) == suite && $i !~ /security/) { print $i; exit } }')
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

if podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE exists: $(podman image inspect --format '{{.Id}}' "$BASE_IMAGE" | cut -c1-19)"
else
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d /var/tmp/irflow-base.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    log "building $BASE_IMAGE: debootstrap --variant=minbase $SUITE from $mirror (about a minute)"
    start=$SECONDS
    if ! debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            "$SUITE" "$rootfs" "$mirror" >/var/tmp/irflow-base-debootstrap.log 2>&1; then
        tail -n 30 /var/tmp/irflow-base-debootstrap.log >&2
        die "debootstrap failed (full log: /var/tmp/irflow-base-debootstrap.log)"
    fi
    # No package lists or caches in the image; the apt sources point at the same mirror.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/* "$rootfs"/tmp/* \
        "$rootfs"/debootstrap
    py=$(chroot "$rootfs" python3 -c 'import platform; print(platform.python_version())')
    [[ $py == 3.11.* ]] || die "the $SUITE base has Python $py; the workflow needs 3.11"
    tar -C "$rootfs" --numeric-owner -cf - . | podman import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase + Python $py (debootstrap from $mirror), local stand-in for python:3.11-slim-bookworm\"" \
        --message "irflow .ci/start-podman.sh: debootstrap $SUITE from $mirror" \
        --quiet - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "built $BASE_IMAGE (Python $py) in $(( SECONDS - start )) s," \
        "$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
fi

# --- 5. smoke test: a container starts with these settings -----------------------------------
if ! out=$(podman run --rm --network none "$BASE_IMAGE" python3 -c 'import json, ssl, venv; print("ok")' 2>&1); then
    printf '%s\n' "$out" >&2
    die "a container does not start (see above)"
fi
log "smoke test passed: podman run $BASE_IMAGE python3 -> $out"
log "ready: export DOCKER_HOST=unix://$SOCKET"
