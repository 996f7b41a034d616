#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost without systemd and wait until its node is idle.
#
#   bash slurm/start.sh            # state in $ISC_BENCH_SLURM_DIR or <repo>/.cache/slurm
#   source <state>/env.sh          # exports SLURM_CONF for sinfo/sbatch/submitit
#
# Daemons (munged, mariadbd, slurmdbd, slurmctld, slurmd) run in the foreground (-D / -F), detached
# with setsid, as root; their pids are recorded in <state>/pids/ so slurm/stop.sh stops exactly
# those. Config, spool, logs, sockets and the MariaDB datadir all live in the state directory.
# Idempotent: a cluster that is already up is left alone. Exit codes: 0 up, 1 failed to come up,
# 3 cannot run here (not root or packages missing; the message says what to do).
#
# Knobs (environment): ISC_BENCH_SLURM_DIR, ISC_BENCH_SLURM_PORT_BASE (default 16817: slurmctld,
# +1 slurmd, +2 slurmdbd, +3 mariadb), ISC_BENCH_SLURM_CPUS (default: nproc), ISC_BENCH_SLURM_MEMORY_MB
# (default: 85% of RAM), ISC_BENCH_SLURM_GPUS (fake, default 2), ISC_BENCH_SLURM_PARTITION (debug),
# ISC_BENCH_SLURM_TIMEOUT (seconds to wait for the idle node, default 90).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
STATE="${ISC_BENCH_SLURM_DIR:-$REPO/.cache/slurm}"
PORT_BASE="${ISC_BENCH_SLURM_PORT_BASE:-16817}"
CPUS="${ISC_BENCH_SLURM_CPUS:-$(nproc)}"
MEM_TOTAL_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
MEMORY_MB="${ISC_BENCH_SLURM_MEMORY_MB:-$((MEM_TOTAL_MB * 85 / 100))}"
GPUS="${ISC_BENCH_SLURM_GPUS:-2}"
PARTITION="${ISC_BENCH_SLURM_PARTITION:-debug}"
TIMEOUT="${ISC_BENCH_SLURM_TIMEOUT:-90}"
HOST="$(hostname -s)"
CLUSTER="iscbench"

log() { echo "slurm/start.sh: $*"; }
die() { echo "slurm/start.sh: $*" >&2; exit "${2:-1}"; }

if [ "$(id -u)" -ne 0 ]; then
    die "must run as root (the daemons run as root here); try: sudo bash slurm/start.sh" 3
fi
for bin in munged mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sinfo scontrol; do
    command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin"
    command -v "$bin" >/dev/null 2>&1 || die "$bin not found; run: sudo bash slurm/install.sh" 3
done

mkdir -p "$STATE"/{etc,spool/ctld,spool/d,log,run,pids,fake-gpu,munge}
chmod 700 "$STATE/munge"
export SLURM_CONF="$STATE/etc/slurm.conf"
cat > "$STATE/env.sh" <<ENV
# source this file to talk to the localhost cluster
export SLURM_CONF="$SLURM_CONF"
ENV

# A pid counts as running when it is alive and not a zombie (PID 1 reaps late on some machines).
alive() {
    local pid
    pid=$(cat "$STATE/pids/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -e "/proc/$pid" ] || return 1
    ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

node_state() { sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            return 1
        fi
        sleep 0.5
    done
}

# Up means the daemons run and the node takes jobs; it may be busy with someone's jobs (never
# restart a cluster under running jobs).
case "$(alive slurmctld && alive slurmd && alive slurmdbd && node_state)" in
idle* | mixed* | alloc* | completing*)
    log "already up (SLURM_CONF=$SLURM_CONF)"
    exit 0
    ;;
esac
# Half-started leftovers from an earlier attempt: stop what we started before starting again.
bash "$HERE/stop.sh" >/dev/null 2>&1 || true

render() {  # render TEMPLATE OUTPUT
    sed -e "s|@STATE@|$STATE|g" -e "s|@HOST@|$HOST|g" -e "s|@CLUSTER@|$CLUSTER|g" \
        -e "s|@CTLD_PORT@|$PORT_BASE|g" -e "s|@SLURMD_PORT@|$((PORT_BASE + 1))|g" \
        -e "s|@DBD_PORT@|$((PORT_BASE + 2))|g" -e "s|@DB_PORT@|$((PORT_BASE + 3))|g" \
        -e "s|@DB_PASSWORD@|$DB_PASSWORD|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEMORY_MB@|$MEMORY_MB|g" \
        -e "s|@DEF_MEM_PER_CPU@|$((MEMORY_MB / CPUS / 2))|g" \
        -e "s|@GPUS@|$GPUS|g" -e "s|@LAST_GPU@|$((GPUS - 1))|g" -e "s|@PARTITION@|$PARTITION|g" \
        "$HERE/templates/$1" > "$2"
}

# The database password only guards a MariaDB bound to 127.0.0.1; keep it across restarts.
if [ ! -s "$STATE/etc/db_password" ]; then
    head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$STATE/etc/db_password"
    chmod 600 "$STATE/etc/db_password"
fi
DB_PASSWORD="$(cat "$STATE/etc/db_password")"
render slurm.conf.in "$STATE/etc/slurm.conf"
render gres.conf.in "$STATE/etc/gres.conf"
render slurmdbd.conf.in "$STATE/etc/slurmdbd.conf"
chmod 600 "$STATE/etc/slurmdbd.conf"
for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$STATE/fake-gpu/nvidia$i"; done

launch() {  # launch NAME COMMAND...: detached, foreground daemon; its pid goes to pids/NAME.pid
    local name=$1
    shift
    setsid "$@" </dev/null >>"$STATE/log/$name.out" 2>&1 &
    echo $! > "$STATE/pids/$name.pid"
}

fail() {
    echo "slurm/start.sh: $1; last log lines:" >&2
    tail -n 15 "$STATE/log/$2"* >&2 2>/dev/null || true
    bash "$HERE/stop.sh" >&2 || true
    exit 1
}

# 1. munge, on a private key and socket.
if [ ! -s "$STATE/munge/munge.key" ]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$STATE/munge/munge.key"
fi
launch munged munged -F --force --key-file="$STATE/munge/munge.key" \
    --socket="$STATE/run/munge.socket" --pid-file="$STATE/run/munged.pid" \
    --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed"
wait_for 15 munged test -S "$STATE/run/munge.socket" || fail "munged did not start" munged

# 2. MariaDB with a private datadir on 127.0.0.1.
DB="$STATE/mariadb"
if [ ! -d "$DB/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$DB" --user=root --skip-test-db \
        --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1 ||
        fail "mariadb-install-db failed" mariadb-install
fi
launch mariadbd mariadbd --no-defaults --datadir="$DB" --user=root --bind-address=127.0.0.1 \
    --port=$((PORT_BASE + 3)) --socket="$STATE/run/mariadb.sock" --pid-file="$STATE/run/mariadbd.pid" \
    --log-error="$STATE/log/mariadbd.log" --innodb-buffer-pool-size=64M --skip-log-bin
wait_for 60 mariadbd mariadb --no-defaults --socket="$STATE/run/mariadb.sock" -u root -e 'SELECT 1' ||
    fail "mariadbd did not start" mariadbd
mariadb --no-defaults --socket="$STATE/run/mariadb.sock" -u root <<SQL || fail "could not create the slurm database user" mariadbd
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL

# 3. slurmdbd, then slurmctld (which registers the cluster with slurmdbd), then slurmd.
launch slurmdbd slurmdbd -D
wait_for 30 slurmdbd bash -c "exec 3<>/dev/tcp/127.0.0.1/$((PORT_BASE + 2))" || fail "slurmdbd did not start" slurmdbd
# -c: start with an empty queue. Jobs of an earlier start died with its slurmd (stop.sh cancels
# them first); recovering their state would only leave the node busy with ghosts.
launch slurmctld slurmctld -D -c -i
wait_for 30 slurmctld scontrol ping || fail "slurmctld did not answer" slurmctld
launch slurmd slurmd -D -N "$HOST"

deadline=$((SECONDS + TIMEOUT))
while :; do
    state="$(node_state)"
    case "$state" in
    idle* | mixed* | alloc* | completing*) break ;;
    down* | drain* | fail*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    alive slurmd || fail "slurmd exited" slurmd
    [ $SECONDS -lt $deadline ] || fail "node $HOST not idle after ${TIMEOUT}s (state: ${state:-none})" slurmd
    sleep 0.5
done
# sacct is what submitit polls; make sure accounting answers before declaring the cluster up.
wait_for 30 sacct sacct -n -X -S now-1minutes || fail "sacct does not answer" slurmdbd
log "up in ${SECONDS}s: node $HOST idle, partition $PARTITION, SLURM_CONF=$SLURM_CONF"
