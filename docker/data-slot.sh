#!/bin/sh
# Runs `mta-feedback "$@"` with MTA_DATA_DIR narrowed to a slot directory of its own
# (MTA_DATA_DIR/slot-N) on a volume that several workers share.
#
# Two live workers must never share one RocksDB directory: Faust opens one RocksDB
# database per table partition there, RocksDB locks each one, and a worker's active
# partition is another's standby (MTA_STANDBY_REPLICAS), so the second opener would wait
# on the lock and then crash. Each worker therefore takes the first slot whose lock no
# live worker holds, and keeps the lock (file descriptor 9) for as long as it runs: the
# kernel drops it when the process ends, however it ends.
#
# A slot outlives its worker: a restarted or recreated container (an upgrade, --scale down
# and up) takes a free slot back and finds its tables warm. Whatever partitions a slot
# last held, Faust keeps each partition's changelog offset beside its data and replays
# the changelog from there on assignment, so stale state is caught up, never trusted.
# flock needs the slots on one kernel: a local named volume, not a network filesystem.
set -eu

root="${MTA_DATA_DIR:?MTA_DATA_DIR must name the shared data volume}"
slot=0
while :; do
    dir="$root/slot-$slot"
    mkdir -p "$dir"
    exec 9>"$dir/.lock"
    if flock --nonblock 9; then
        break
    fi
    exec 9>&-
    slot=$((slot + 1))
done

export MTA_DATA_DIR="$dir"
echo "data-slot: MTA_DATA_DIR=$dir" >&2
exec mta-feedback "$@"
