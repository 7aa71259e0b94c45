#!/usr/bin/env bash
# Start a real one-node Slurm cluster (Debian's Slurm 22.05 + munge) on this machine, for CI.
#
#   sudo .ci/start-slurm.sh          # as root; no systemd needed; safe to run again
#
# What it does, each step skipped when already done:
#   1. installs slurm-wlm slurmctld slurmd munge slurm-client (apt) if a binary is missing;
#   2. writes /etc/slurm/slurm.conf for one node "localhost" (127.0.0.1) with this machine's
#      CPUs and a RealMemory below the memory free now (left alone while daemons are running);
#   3. creates the spool/log/run directories with the owners the daemons expect;
#   4. starts munged, slurmctld and `slurmd -N localhost` by hand (no systemd);
#   5. waits until `sinfo` reports the node usable, then runs `sbatch --wait --wrap true`.
#
# Accounting (slurmdbd) is deliberately off: `sacct` then has nothing to report, so the
# Snakemake profile (profiles/slurm) queries job states with `squeue`, which is reliable here
# because MinJobAge keeps finished jobs visible for 5 minutes.
#
# Environment knobs (all optional):
#   SLURM_CI_PARTITION   partition name                        (default: debug)
#   SLURM_CI_CLUSTER     ClusterName                           (default: irflow-ci)
#   SLURM_CI_MEM_MARGIN  MiB kept back from free memory        (default: 10% of it, >= 256)
#   SLURM_CI_TIMEOUT     seconds to wait for the node / smoke job (default: 120)
set -euo pipefail

PARTITION="${SLURM_CI_PARTITION:-debug}"
CLUSTER="${SLURM_CI_CLUSTER:-irflow-ci}"
TIMEOUT="${SLURM_CI_TIMEOUT:-120}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# written by irflow .ci/start-slurm.sh"

log() { printf '[start-slurm] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons)"

# --- 1. packages -----------------------------------------------------------------------------
need_install=0
for bin in /usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/munged /usr/bin/sbatch /usr/bin/sinfo \
           /usr/bin/squeue /usr/bin/scontrol /usr/bin/munge; do
    [[ -x $bin ]] || need_install=1
done
if (( need_install )); then
    log "installing Slurm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        slurm-wlm slurmctld slurmd munge slurm-client procps >/dev/null
else
    log "Slurm and munge already installed"
fi
getent passwd slurm >/dev/null || die "user 'slurm' missing (the slurm packages create it)"
getent passwd munge >/dev/null || die "user 'munge' missing (the munge package creates it)"

# --- 2. directories --------------------------------------------------------------------------
install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld /var/log/slurm /run/slurm
install -d -o root -g root -m 0755 /var/spool/slurmd "$CONF_DIR"
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge /etc/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

# --- 3. slurm.conf ---------------------------------------------------------------------------
daemons_running() { pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; }

cpus=$(nproc)
# Memory the node may hand out: what is available now (MemAvailable, capped by a cgroup limit
# if there is one), less a margin for the daemons, Snakemake itself and the page cache.
# RealMemory above the real memory would make slurmd register the node as "Low RealMemory".
avail_mib=$(( $(awk '/^MemAvailable:/ {print $2}' /proc/meminfo) / 1024 ))
for limit_file in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do
    if [[ -r $limit_file ]]; then
        limit=$(cat "$limit_file")
        if [[ $limit =~ ^[0-9]+$ ]] && (( limit / 1048576 < avail_mib )); then
            avail_mib=$(( limit / 1048576 ))
        fi
    fi
done
margin_mib=${SLURM_CI_MEM_MARGIN:-$(( avail_mib / 10 > 256 ? avail_mib / 10 : 256 ))}
real_mem=$(( avail_mib - margin_mib ))
(( real_mem >= 512 )) || die "only ${avail_mib} MiB available; too little for a Slurm node"

new_conf=$(cat <<EOF
$MARKER on $(hostname) -- edit that script, not this file.
ClusterName=$CLUSTER
SlurmctldHost=localhost
AuthType=auth/munge
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a CI container: track processes by parent PID, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
# Accounting off: no slurmdbd (sacct has nothing; use squeue for job states).
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Limits of the submitting shell (e.g. nofile) are not pushed into jobs: avoids warnings.
PropagateResourceLimits=NONE
# Schedule cores and memory, as a real cluster does: --mem and --cpus-per-task are honoured.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
# Finished jobs stay visible to squeue for 5 min (the executor's squeue status check needs
# this: it must be >= 3 x slurm-init-seconds-before-status-checks), and a node that was
# DOWN (e.g. slurmd restarted) returns to service by itself.
MinJobAge=300
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
Waittime=0
# CPU-only node. No Gres is declared: this machine has no GPU, and a job asking for one
# (--gpus / --gres=gpu) is rejected at submission instead of pending forever.
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)

if [[ -f $CONF ]] && daemons_running; then
    if grep -qF "$MARKER" "$CONF"; then
        log "Slurm daemons running: keeping existing $CONF ($(grep -o 'CPUs=[0-9]* RealMemory=[0-9]*' "$CONF"))"
    else
        log "Slurm daemons running with a $CONF not written by this script: keeping it"
    fi
else
    if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
        cp -p "$CONF" "$CONF.bak.$(date +%s)"
        log "saved the previous $CONF as $CONF.bak.*"
    fi
    printf '%s\n' "$new_conf" > "$CONF"
    chmod 0644 "$CONF"
    log "wrote $CONF: CPUs=$cpus RealMemory=${real_mem} MiB partition=$PARTITION"
fi

# --- 4. daemons ------------------------------------------------------------------------------
if ! pgrep -x munged >/dev/null; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 1 20); do
    munge -n </dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.5
done
munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munge does not work (see /var/log/munge/munged.log)"

if ! pgrep -x slurmctld >/dev/null; then
    log "starting slurmctld"
    /usr/sbin/slurmctld
fi
for _ in $(seq 1 40); do
    scontrol ping 2>/dev/null | grep -q 'is UP' && break
    sleep 0.5
done
scontrol ping 2>/dev/null | grep -q 'is UP' || {
    tail -n 30 /var/log/slurm/slurmctld.log >&2 || true
    die "slurmctld did not come up"
}

if ! pgrep -x slurmd >/dev/null; then
    log "starting slurmd"
    /usr/sbin/slurmd -N localhost
fi

# --- 5. wait for the node, then a real job ---------------------------------------------------
node_state() { sinfo -h -N -n localhost -o '%t' 2>/dev/null | head -n1; }
deadline=$(( SECONDS + TIMEOUT ))
state=$(node_state)
while [[ ! $state =~ ^(idle|mix|alloc)$ ]]; do
    # A node left DOWN/DRAINED by an earlier run (e.g. after a crash) is put back into service.
    if [[ $state =~ ^(down|drain|drng|drained)\*?$ ]]; then
        log "node state '$state': resuming it"
        scontrol update NodeName=localhost State=RESUME 2>/dev/null || true
    fi
    if (( SECONDS > deadline )); then
        sinfo -N -l >&2 || true
        scontrol show node localhost >&2 || true
        tail -n 30 /var/log/slurm/slurmd.log >&2 || true
        die "node not usable after ${TIMEOUT}s (state '$state')"
    fi
    sleep 1
    state=$(node_state)
done
log "node localhost is '$state'"
sinfo >&2

smoke_out=$(mktemp /tmp/slurm-smoke.XXXXXX)
# shellcheck disable=SC2016  # $(hostname) and $SLURM_JOB_ID expand inside the job
if ! timeout "$TIMEOUT" sbatch --wait --quiet -J smoke-test -o "$smoke_out" -t 1 --mem 10 \
        --wrap 'echo "smoke test ran on $(hostname) as job $SLURM_JOB_ID"'; then
    cat "$smoke_out" >&2 || true
    rm -f "$smoke_out"
    die "smoke-test job failed"
fi
log "$(cat "$smoke_out")"
rm -f "$smoke_out"
node_line=$(scontrol show node localhost | grep -oE '(CPUTot|RealMemory)=[0-9]+' | tr '\n' ' ')
log "Slurm is ready: partition '$(sinfo -h -o %P | tr -d '*' | head -n1)', node localhost ${node_line% }"
