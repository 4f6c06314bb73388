#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the SLURM integration test and for trying the
# profile locally: munged + slurmctld + slurmd from Debian's packages, no systemd, no accounting
# (so the profile uses `slurm-status-command: squeue`; finished jobs stay visible for 10 minutes).
#   scripts/local-slurm.sh start    # installs the packages if missing (root), starts, waits for an idle node
#   scripts/local-slurm.sh stop     # cancels jobs, stops the daemons this script started
# State, logs and pid files live in $LOCAL_SLURM_DIR (default /tmp/gpt2pipe-slurm).
set -euo pipefail
BASE=${LOCAL_SLURM_DIR:-/tmp/gpt2pipe-slurm}
CONF=/etc/slurm/slurm.conf
say() { echo "[local-slurm] $*" >&2; }

running() {  # running PIDFILE NAME: alive and not a zombie (PID 1 here may not reap them)
  [ -s "$1" ] && [ -d "/proc/$(cat "$1")" ] && [ "$(cat "/proc/$(cat "$1")/comm")" = "$2" ] &&
    ! grep -q '^State:[[:space:]]*Z' "/proc/$(cat "$1")/status"
}

stop_daemon() {  # stop_daemon PIDFILE NAME
  running "$1" "$2" || { rm -f "$1"; return 0; }
  kill "$(cat "$1")" 2>/dev/null || true
  for _ in $(seq 100); do running "$1" "$2" || break; sleep 0.1; done
  rm -f "$1"
}

start() {
  [ "$(id -u)" = 0 ] || { say "must run as root"; exit 1; }
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  fi
  mkdir -p "$BASE"/{state,spool,log} /etc/slurm /etc/munge /run/munge /var/lib/munge /var/log/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key && chmod 755 /run/munge
  local node hw mem
  node=$(hostname -s)
  hw=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+ //')
  mem=$(sed -nE 's/.*RealMemory=([0-9]+).*/\1/p' <<<"$hw")
  hw=$(sed -E "s/RealMemory=[0-9]+/RealMemory=$((mem * 9 / 10))/" <<<"$hw")  # above real memory, the node drains
  cat >"$CONF" <<CONF
# written by gpt2pipe scripts/local-slurm.sh
ClusterName=gpt2pipe-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  if ! running /run/munge/munged.pid munged; then
    rm -f /run/munge/munge.socket.2* /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$BASE/munged.pid"
  fi
  for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  running "$BASE/slurmctld.pid" slurmctld || /usr/sbin/slurmctld -f "$CONF"
  running "$BASE/slurmd.pid" slurmd || /usr/sbin/slurmd -f "$CONF"
  local deadline=$(($(date +%s) + ${LOCAL_SLURM_TIMEOUT:-60})) st
  while :; do
    st=$(sinfo -h -n "$node" -o %t 2>/dev/null || true)
    case "$st" in idle | mix | alloc) break ;; drain* | down*) scontrol update NodeName="$node" State=RESUME || true ;; esac
    [ "$(date +%s)" -lt "$deadline" ] || { say "node not idle (state '$st'); logs in $BASE/log"; exit 1; }
    sleep 0.5
  done
  say "cluster up: node $node, partition debug"
}

stop() {
  command -v scancel >/dev/null && scancel --user="$(id -un)" 2>/dev/null || true
  stop_daemon "$BASE/slurmd.pid" slurmd
  stop_daemon "$BASE/slurmctld.pid" slurmctld
  [ -s "$BASE/munged.pid" ] && stop_daemon "$BASE/munged.pid" munged
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
