#!/usr/bin/env bash
# SPDX-License-Identifier: BSL-1.0
# A single-node Ceph cluster for the tests, from Debian's packages: one
# monitor, one manager, one OSD on memstore (RAM, no disk), one pool "rbd"
# with one replica. Loopback only, no authentication, everything under DIR.
#
#   test/ceph/cluster.sh start DIR   # prints CEPH_CONF=DIR/ceph.conf when ready
#   test/ceph/cluster.sh stop DIR
set -euo pipefail
cmd=${1:?start|stop} dir=${2:?directory}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf

stop() {
  for p in "$dir"/run/*.pid; do
    [ -f "$p" ] || continue
    pid=$(cat "$p")
    kill "$pid" 2>/dev/null || true
  done
  for p in "$dir"/run/*.pid; do
    [ -f "$p" ] || continue
    pid=$(cat "$p")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$p"
  done
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
mkdir -p "$dir/run" "$dir/log" "$dir/mon" "$dir/osd0" "$dir/mgr"
cat > "$conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
ms bind ipv6 = false
public network = 127.0.0.0/8
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
crash dir = $dir/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
osd objectstore = memstore
memstore device bytes = 4294967296
osd data = $dir/osd\$id
mon data = $dir/mon
mgr data = $dir/mgr
osd memory target = 1073741824
mgr disabled modules = dashboard
[mgr]
mgr initial modules = 
CONF
export CEPH_CONF=$conf
monmaptool --create --clobber --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null
ceph-mon --mkfs -i a --monmap "$dir/monmap" -c "$conf" >/dev/null
ceph-mon -i a -c "$conf"
ceph-mgr -i x -c "$conf"
osd_id=$(ceph -c "$conf" osd create)
ceph-osd -i "$osd_id" --mkfs -c "$conf" >/dev/null 2>&1
ceph-osd -i "$osd_id" -c "$conf"
ceph -c "$conf" osd pool create rbd 8 8 >/dev/null 2>&1
ceph -c "$conf" osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null 2>&1 || true
rbd -c "$conf" pool init rbd
echo "CEPH_CONF=$conf"
