#!/usr/bin/env bash
# A single-node SLURM on the local host, for the `slurm` tests (make test-slurm) and for trying
# `make compare LAUNCHER=slurm` without a cluster.
#
#   scripts/slurm_local.sh install   apt-get install slurmctld slurmd slurm-client munge (as root)
#   scripts/slurm_local.sh up        install if missing, start munge + slurmctld + slurmd, wait
#                                    until the node is idle; prints `export SLURM_CONF=...`
#   scripts/slurm_local.sh down      stop the daemons it started, by their pids
#   scripts/slurm_local.sh status    sinfo + squeue
#
# State, config and logs live in $SLURM_LOCAL_DIR (default /tmp/slurm-local): slurm.conf
# (one node = this host, CPUs=2, one partition `local`, ProctrackType=proctrack/linuxproc,
# TaskPlugin=task/none, JobCompType=jobcomp/filetxt -> jobcomp.txt, no accounting database).
# Clients find it through SLURM_CONF, which `up` prints and which must be exported.
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-/tmp/slurm-local}"
CONF="$DIR/slurm.conf"
NODE="$(hostname -s)"
CPUS="${SLURM_LOCAL_CPUS:-2}"

have_slurm() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null && command -v munged >/dev/null; }

install() {
    if have_slurm; then return 0; fi
    if [ "$(id -u)" != 0 ]; then echo "slurm_local.sh: SLURM is missing and installing it needs root" >&2; exit 2; fi
    echo "slurm_local.sh: installing slurmctld slurmd slurm-client munge (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
    local mem_mb
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)  # below the machine's
    mkdir -p "$DIR/ctld" "$DIR/d"
    cat > "$CONF" <<CONF
# written by scripts/slurm_local.sh
ClusterName=local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=${SLURM_LOCAL_PORT:-6817}
SlurmdPort=$(( ${SLURM_LOCAL_PORT:-6817} + 1 ))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=$NODE CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

up() {
    install
    if [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
        echo "slurm_local.sh: already up ($DIR)"; echo "export SLURM_CONF=$CONF"; return 0
    fi
    write_conf
    if ! munge_ok; then
        mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
        [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
        runuser -u munge -- munged
        cp /run/munge/munged.pid "$DIR/munged.pid"
        for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
        munge_ok || { echo "slurm_local.sh: munged did not start" >&2; exit 1; }
    fi
    export SLURM_CONF="$CONF"
    slurmctld -f "$CONF" -c
    slurmd -f "$CONF"
    for _ in $(seq 150); do
        if sinfo -h -N -o '%t' 2>/dev/null | grep -qx 'idle'; then
            echo "slurm_local.sh: up: node $NODE, CPUs=$CPUS, partition local ($DIR)"
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        sleep 0.2
    done
    echo "slurm_local.sh: the node did not become idle; logs in $DIR" >&2
    tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
    down
    exit 1
}

stop_pid() {  # stop one daemon by the pid in its pid file (never by name)
    local file=$1 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

down() {
    stop_pid "$DIR/slurmd.pid"
    stop_pid "$DIR/slurmctld.pid"
    stop_pid "$DIR/munged.pid"  # only present when this script started munged
    echo "slurm_local.sh: down"
}

case "${1:-}" in
    install) install ;;
    up) up ;;
    down) down ;;
    status) export SLURM_CONF="$CONF"; sinfo; squeue ;;
    *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
