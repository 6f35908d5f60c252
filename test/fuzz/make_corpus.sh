#!/bin/bash
# SPDX-License-Identifier: BSL-1.0
# Regenerate the seed corpora of the fuzz harnesses.
#
#   corpus/image_open/  QED images made by qemu-img and qemu-io (small: mostly
#                       4 KiB clusters), plus damaged copies patched in place
#                       (dirty, dangling, cross-linked, misaligned entries,
#                       unknown feature bits, a two-cluster header...), a raw
#                       file and a qcow2 file for format probing.
#   corpus/requests/    hand-written request programs (format: the comment at
#                       the top of fuzz_requests.cpp).
#
# Usage: test/fuzz/make_corpus.sh [OUTPUT_DIR]   (default: test/fuzz/corpus)
# Needs qemu-img and qemu-io (Debian: qemu-utils). Regression seeds saved from
# crashes (corpus/*/regress-*) are kept; everything else is rewritten.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/corpus}
img_out=$out/image_open
req_out=$out/requests
mkdir -p "$img_out" "$req_out"
find "$img_out" "$req_out" -type f ! -name 'regress-*' -delete

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

create() { qemu-img create -q -f qed "$@"; }
# io FILE FORMAT COMMAND...: run qemu-io commands on FILE.
io() {
    local f=$1 fmt=$2
    shift 2
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    qemu-io -f "$fmt" "${args[@]}" "$f" >/dev/null
}
# poke FILE OFFSET BYTES: write raw bytes (given as \xNN escapes) at OFFSET.
poke() { printf "$3" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none; }
# le64 VALUE: a 64-bit little-endian value as \xNN escapes.
le64() {
    local v=$1 s="" i
    for i in 0 1 2 3 4 5 6 7; do
        s+=$(printf '\\x%02x' $(((v >> (8 * i)) & 255)))
    done
    printf '%s' "$s"
}
le32() {
    local v=$1 s="" i
    for i in 0 1 2 3; do s+=$(printf '\\x%02x' $(((v >> (8 * i)) & 255))); done
    printf '%s' "$s"
}
# rd64 FILE OFFSET: read a 64-bit little-endian value.
rd64() { od -An -tu8 -j "$2" -N8 "$1" | tr -d ' '; }
save() { cp "$1" "$img_out/$2"; }

# ---- well-formed images -----------------------------------------------------
create -o cluster_size=4096,table_size=1 e1.qed 1M  # QEMU can't open table_size 1 (its bug); we can
save e1.qed empty-4k-t1.qed
create -o cluster_size=4096,table_size=4 e4.qed 16M
save e4.qed empty-4k-t4.qed
create -o cluster_size=65536,table_size=1 e64.qed 64M
save e64.qed empty-64k-t1.qed

create -o cluster_size=4096,table_size=4 d4.qed 16M
io d4.qed qed 'write -P 0xab 0 4k' 'write -P 0xcd 8M 4k' 'write -P 0x11 12k 512' \
    'write -z 64k 8k' 'write -z 100k 1k' 'write -P 0x22 16380k 4k'
save d4.qed data-4k-t4.qed

create -o cluster_size=4096,table_size=2 d2.qed 5M
io d2.qed qed 'write -P 0x5a 0 12k' 'write -P 0x5b 4M 4k' 'write -z 2M 4k'
save d2.qed data-4k-t2.qed

create -o cluster_size=4096,table_size=16 d16.qed 64M
io d16.qed qed 'write -P 0x01 0 16k' 'write -P 0x02 32M 4k' 'write -P 0x03 65532k 4k'
save d16.qed data-4k-t16.qed

create -o cluster_size=65536,table_size=2 d64.qed 32M
io d64.qed qed 'write -P 0x64 64k 512' 'write -z 1M 64k'
save d64.qed data-64k-t2.qed

# Backing files: raw (no probe) and qed (probed).
qemu-img create -q -f raw base.raw 2M
io base.raw raw 'write -P 0x77 0 1M' 'write -P 0x78 1536k 4k'
create -o cluster_size=4096,table_size=4 -b base.raw -F raw br.qed 4M
io br.qed qed 'write -P 0x99 4608 1k' 'write -z 1M 4k' 'write -P 0x98 3M 4k'
save br.qed backing-raw.qed
create -o cluster_size=4096,table_size=4 base.qed 2M
io base.qed qed 'write -P 0x44 0 8k'
create -o cluster_size=4096,table_size=4 -b base.qed -F qed bq.qed 2M
io bq.qed qed 'write -P 0x45 2k 1k'
save bq.qed backing-qed.qed
create -o cluster_size=4096,table_size=4 -b sub/dir/../name.img -F raw -u bl.qed 1M
save bl.qed backing-relative-path.qed

# fuzz_image_open serves one backing file for any name, chosen by the last
# byte of the input (mod 3): a raw pattern, a copy of the image as a QED
# backing file, or the image itself (a loop). One more byte picks each kind.
for k in 0 1 2; do
    cp br.qed x.qed && printf "\\x0$k" >>x.qed && save x.qed "backing-raw-kind$k.qed"
    cp bq.qed x.qed && printf "\\x0$k" >>x.qed && save x.qed "backing-qed-kind$k.qed"
done

# ---- damaged copies ---------------------------------------------------------
l1=4096                     # data-4k-t4: L1 right after the one-cluster header
l2=$(rd64 d4.qed $l1)       # the L2 table of guest offsets 0-8M
c0=$(rd64 d4.qed "$l2")     # the data cluster of guest offset 0
end=$(stat -c %s d4.qed)

cp d4.qed x.qed && poke x.qed 16 '\x02'
save x.qed dirty.qed
cp d4.qed x.qed && poke x.qed 16 '\x02' && poke x.qed $((l2 + 8)) "$(le64 $((end + 65536)))"
save x.qed dirty-dangling-cluster.qed
cp d4.qed x.qed && poke x.qed 16 '\x02' && poke x.qed $((l2 + 16)) "$(le64 $((c0 + 512)))"
save x.qed dirty-misaligned-cluster.qed
cp d4.qed x.qed && poke x.qed 16 '\x02' && poke x.qed $((l1 + 8)) "$(le64 $((end + 4096)))"
save x.qed dirty-dangling-l2.qed
cp d4.qed x.qed && poke x.qed $((l2 + 8)) "$(le64 "$c0")"
save x.qed cross-linked-cluster.qed
cp d4.qed x.qed && poke x.qed $((l1 + 8)) "$(le64 "$l2")"
save x.qed cross-linked-l2.qed
cp d4.qed x.qed && poke x.qed $((l1 + 8)) "$(le64 $l1)"
save x.qed l1-links-itself.qed
cp d4.qed x.qed && poke x.qed $((l2 + 24)) "$(le64 2048)"
save x.qed cluster-in-header.qed
cp d4.qed x.qed && truncate -s $((end + 100)) x.qed
save x.qed ragged-tail.qed
cp d4.qed x.qed && truncate -s $((end - 4096 + 100)) x.qed
save x.qed truncated-tail.qed
cp d4.qed x.qed && poke x.qed 16 '\x08'
save x.qed unknown-feature.qed
cp d4.qed x.qed && poke x.qed 32 '\x01\x00\x00\x00\x00\x00\x00\x80'
save x.qed autoclear-bits.qed
cp br.qed x.qed && poke x.qed 24 '\x01'
save x.qed compat-bits-backing.qed
cp d4.qed x.qed && poke x.qed 48 "$(le64 $((16 * 1024 * 1024 + 1)))"
save x.qed image-size-unaligned.qed
cp e1.qed x.qed && poke x.qed 48 "$(le64 $((512 * 512 * 4096)))"
save x.qed image-size-max-4k-t1.qed
cp e4.qed x.qed && poke x.qed 12 "$(le32 0)"
save x.qed header-size-zero.qed
cp br.qed x.qed && poke x.qed 60 "$(le32 0)"
save x.qed backing-name-empty.qed
cp br.qed x.qed && poke x.qed 64 'base\x00raw'
save x.qed backing-name-nul.qed
# Two header clusters: the backing name crosses into the second one.
cp e4.qed x.qed
truncate -s $((8192 + 16384)) x.qed
poke x.qed 12 "$(le32 2)"
poke x.qed 40 "$(le64 8192)"
poke x.qed 16 '\x05'
poke x.qed 56 "$(le32 4000)$(le32 200)"
poke x.qed 4000 "$(printf 'b%.0s' $(seq 200))"
save x.qed header-two-clusters.qed

# ---- other formats, for probing ---------------------------------------------
head -c 4096 /dev/zero | tr '\0' 'R' >raw.img
save raw.img not-qed.raw
qemu-img create -q -f qcow2 -o cluster_size=4096 q.qcow2 1M
save q.qcow2 probe-qcow2.img

# ---- request programs ---------------------------------------------------------
# config u8, u8; image size u16 (sectors); backing size u16; seed u32; ops.
# Ops: write 00 / read 05 / zeroes 08 + zone delta(2) len flags extra;
# flush 0a; grow 0b + delta(2) flags; end of batch 0c; close 0d; check 0e 00;
# make_empty 0e 03; block status 0f + the same 6 bytes as a request.
req() { printf "$2" >"$req_out/$1"; }
hex() { local s="" b; for b in "$@"; do s+=$(printf '\\x%02x' $((b & 255))); done; printf '%s' "$s"; }
# rq KIND ZONE DELTA LEN FLAGS EXTRA: one request (DELTA in sectors, signed).
rq() { hex "$1" "$2" $(($3 & 255)) $((($3 >> 8) & 255)) "$4" "$5" "$6"; }
# 4K clusters, table 4, 8 MiB + 64 sectors, no backing, cache 4: writes across
# the first L2 boundary, overlapping reads, zeroes, grow, check, close.
req basic-4k-t4 '\x02\x0b\x40\x00\x00\x00\x01\x00\x00\x00'\
'\x00\x00\x00\x00\x40\x00\x00''\x01\x01\xf8\xff\x41\x00\x00''\x05\x00\x00\x00\x42\x00\x00'\
'\x08\x00\x08\x00\x40\x02\x00''\x0a''\x0c'\
'\x05\x01\xf0\xff\xc3\x00\x00''\x0b\x40\x00\x00''\x02\x03\xfc\xff\x03\x00\x00''\x0e\x00'\
'\x0f\x00\x00\x00\xc1\x00\x00''\x0d''\x03\x00\x00\x00\x00\x00\x00''\x0c'\
'\x06\x03\xfc\xff\x03\x00\x00''\x0f\x00\x00\x00\xff\x00\x00'
# 64K clusters, table 1, 1 MiB, raw backing of 768 KiB + 300 bytes: partial
# writes that prefill from the backing file, zeroes with and without unmap.
req backing-64k-t1 '\x19\x80\x00\x08\x00\x06\x02\x00\x00\x00'\
'\x00\x00\x03\x00\x04\x00\x00''\x01\x04\xfe\xff\x81\x00\x00''\x09\x00\x80\x00\x41\x02\x00'\
'\x09\x00\x00\x01\x41\x00\x00''\x06\x04\xf0\xff\x7f\x00\x00''\x0c'\
'\x07\x00\x00\x00\xc7\x00\x00''\x0f\x00\x00\x00\xc7\x00\x00''\x0e\x00'
# Racing overlapping writes and zeroes in one batch, a zero-ms need-check
# timer, and requests that must fail (misaligned offset/length, out of range).
req racing-timer '\x20\x01\x00\x10\x00\x00\x03\x00\x00\x00'\
'\x00\x00\x00\x00\x41\x00\x00''\x01\x00\x04\x00\x41\x10\x33''\x02\x00\x02\x00\x05\x00\x00'\
'\x08\x00\x01\x00\x41\x00\x00''\x05\x00\x00\x00\x42\x10\x99''\x00\x00\x00\x00\x01\x08\x05'\
'\x00\x00\x00\x00\x01\x0c\x05''\x00\x03\x00\x00\x01\x00\x00''\x0b\xff\xff\x01''\x0c'\
'\x05\x00\x00\x00\x42\x00\x00''\x0e\x00'
# 4K clusters, table 16, empty image, plain memory file: grow, then write.
req grow-empty '\x44\x00\x00\x00\x00\x00\x04\x00\x00\x00'\
'\x00\x00\x00\x00\x00\x00\x00''\x0b\x00\x01\x00''\x0b\x00\x00\x04''\x0b\x00\x00\x02''\x0c'\
'\x00\x03\xf8\xff\x03\x01\x00''\x0d''\x0c''\x05\x00\x00\x00\x07\x00\x00'

# Longer programs: several batches of overlapping requests around the L2
# boundaries, a make_empty half-way, grows, closes and checks.
p=$(hex 0x04 0x12 0x00 0x02 0x00 0x00 0x05 0x00 0x00 0x00)  # 4K, table 16, 64M + 256K, cache 3
for b in 0 1 2 3 4 5 6 7; do
    for i in 0 1 2 3; do
        p+=$(rq 0 $((i % 3)) $((i * 5 - 7 + b)) $((0x41 + i)) $((i == 2 ? 16 : 0)) $((b * 17 + i)))
        p+=$(rq 8 $((i % 3)) $((i * 3 - 2)) $((0x40 + b % 3)) $((b % 2 * 2)) 0)
    done
    p+=$(rq 5 0 0 0xc3 16 $b)$(rq 5 1 -24 0xc3 0 0)$(rq 15 1 -64 0xc7 0 0)
    [ $b = 3 ] && p+=$(hex 0x0e 0x03)
    [ $b = 5 ] && p+=$(hex 0x0b 0x00 0x10 0x04)
    [ $b = 6 ] && p+=$(hex 0x0d)
    p+=$(hex 0x0a 0x0e 0x00 0x0c)
done
req long-4k-t16 "$p"
p=$(hex 0x1b 0x31 0x00 0x10 0x80 0x00 0x06 0x00 0x00 0x00)  # 64K, table 4, 4G + 2M, raw backing 2G + 64K, cache 2
for b in 0 1 2 3 4 5; do
    for i in 0 1 2; do
        p+=$(rq 1 $((i + b)) $((b * 40 - 100 + i * 7)) $((0x80 + i * 5)) 0 0)
        p+=$(rq 2 $((i + b)) $((b * 40 - 90)) $((0x42)) $((i == 1 ? 1 : 0)) 0)
        p+=$(rq 9 4 $((i * 128 - 140)) $((0x41)) $((i % 2 * 2)) 0)
    done
    p+=$(rq 6 4 -300 0xc7 16 $((b * 31)))$(rq 15 0 0 0xff 0 0)$(rq 15 4 -256 0xc3 0 0)
    [ $b = 2 ] && p+=$(hex 0x0e 0x03 0x05 0x04 0x00 0xff 0xc3 0x00 0x00)
    p+=$(hex 0x0e 0x00 0x0c)
done
req long-64k-t4-backing "$p"
p=$(hex 0x66 0x1f 0x00 0x20 0x00 0x00 0x07 0x00 0x00 0x00)  # 4K, table 8, 4M, 0 ms timer, plain file
for b in 0 1 2 3 4 5 6 7 8 9; do
    p+=$(rq 0 0 $((b * 8)) 0x47 $((b % 2)) 0)$(rq 3 0 $((b * 8 + 4)) 0x47 0 0)$(rq 8 0 $((b * 8 + 2)) 0x41 2 0)
    p+=$(hex 0x0c)
done
req timer-plain-4k-t8 "$p"

echo "image_open: $(ls "$img_out" | wc -l) files, $(du -sk "$img_out" | cut -f1) KiB"
echo "requests:   $(ls "$req_out" | wc -l) files"
