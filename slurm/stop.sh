#!/usr/bin/env bash
# Stop the localhost cluster started by slurm/start.sh: only the processes whose pids it recorded,
# newest first, SIGTERM then SIGKILL after a bounded wait. State (config, database) is kept, so a
# later start is fast; `rm -rf` the state directory to start from scratch.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
STATE="${ISC_BENCH_SLURM_DIR:-$REPO/.cache/slurm}"
WAIT="${ISC_BENCH_SLURM_STOP_TIMEOUT:-20}"

running() {  # alive and not a zombie: PID 1 reaps late here, a stopped daemon can linger as Z
    [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# Cancel the cluster's jobs while slurmd can still end their steps: slurmstepd processes outlive
# slurmd, and a job left running would hold the CPUs of the next start.
if [ -f "$STATE/pids/slurmctld.pid" ] && [ -f "$STATE/etc/slurm.conf" ]; then
    export SLURM_CONF="$STATE/etc/slurm.conf"
    jobs="$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
        deadline=$((SECONDS + WAIT))
        while [ -n "$(timeout 5 squeue -h -t R,CG -o %A 2>/dev/null)" ] && [ $SECONDS -lt $deadline ]; do
            sleep 0.5
        done
    fi
fi

stopped=()
for name in slurmd slurmctld slurmdbd mariadbd munged; do
    pidfile="$STATE/pids/$name.pid"
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    # Only signal the process we started: the pid must still run the same program.
    if [ -n "$pid" ] && running "$pid" && grep -qa "$name" "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + WAIT))
        while running "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        if running "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        stopped+=("$name($pid)")
    fi
    rm -f "$pidfile"
done
if [ ${#stopped[@]} -gt 0 ]; then
    echo "slurm/stop.sh: stopped ${stopped[*]}"
else
    echo "slurm/stop.sh: nothing running"
fi
