#!/usr/bin/env bash
# Superseded by bench/run.py (required_cpu, whole_floor), which measures these pieces in the same
# rounds as the baseline; kept because earlier passes in bench/results.md cite it.
# The whole migration's floor, measured with standard tools and none of migrate's code.
#
# usage: bench/whole_floor.sh TREE MIGRATED_LOG [ROUNDS]
#   TREE          a 0.1.0 installation from bench/gen_install.py (left unchanged)
#   MIGRATED_LOG  that tree's data/requests.jsonl as migrate writes it (2.1.0)
#
# Why: the whole-migration target (issue 15) is <= 2x the baseline, `tar -I 'zstd -T0 -3'` of
# the backup set plus `cp` of the data. Besides rewriting the records, a migration that keeps
# migrate's guarantees must also, for the same files:
#   - archive the backup set (tar, zstd -3) with the sha256 of each file it archives, and sync
#     it;
#   - read the archive back and check it (decompress, sha256 of each entry again);
#   - take the sha256 of each file it wrote (a rollback tells them from later changes);
#   - hash the weights twice: the hop writes their sha256 into metadata.json, and the host
#     checks that claim rather than trusting plugin code;
#   - write its output durably (1 MiB writes, one fsync).
# Here each of those is done by the standard tool for it (tar, zstd, openssl: SHA-NI, unlike
# coreutils' sha256sum on this machine), one at a time. Their CPU seconds summed and spread
# over every core, with no waiting at all, is the least wall time that work can take here;
# the baseline is timed in the same rounds. Each figure is the median of ROUNDS (default 3).
set -euo pipefail
tree=$1 migrated=$2 rounds=${3:-3}
weights=$(find "$tree/models" -name '*.safetensors' | sort)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cores=$(nproc)

# Runs a shell command; prints "wall cpu" (seconds).
timed() {
    /usr/bin/time -f "%e %U %S" -o "$scratch/time" bash -c "$1" >/dev/null
    awk '{printf "%.3f %.3f\n", $1, $2 + $3}' "$scratch/time"
}

# Each piece as cheaply as its tool does it: no pipe between two tools (a pipe adds a copy),
# so a checksum of the archived files is taken on the files themselves, which hold the same
# bytes as the archive's entries.
archived="'$tree/config/server.toml' $(find "$tree/data" -type f -printf "'%p' ")"
declare -A pieces=(
    [1_archive]="tar -I 'zstd -T0 -3' -cf '$scratch/b.tar.zst' -C '$tree' config/server.toml data && sync -f '$scratch/b.tar.zst'"
    [2_archived_sha256]="openssl dgst -sha256 $archived"
    [3_read_back]="zstd -q -dc '$scratch/b.tar.zst' >/dev/null"
    [4_read_back_sha256]="openssl dgst -sha256 $archived"
    [5_written_sha256]="openssl dgst -sha256 '$migrated'"
    [6_weights_hop]="openssl dgst -sha256 $weights"
    [7_weights_host]="openssl dgst -sha256 $weights"
    [8_output_synced]="dd if='$migrated' of='$scratch/out' bs=1M conv=fsync status=none; rm -f '$scratch/out'"
)
names=$(printf '%s\n' "${!pieces[@]}" | sort)
: >"$scratch/figures"
for _ in $(seq "$rounds"); do
    sync
    echo "base_tar $(timed "tar -I 'zstd -T0 -3' -cf '$scratch/base.tar.zst' -C '$tree' config/server.toml data")" >>"$scratch/figures"
    echo "base_cp $(timed "cp -r '$tree/data' '$scratch/data'; rm -rf '$scratch/data'")" >>"$scratch/figures"
    rm -f "$scratch/base.tar.zst"
    for name in $names; do
        echo "$name $(timed "${pieces[$name]}")" >>"$scratch/figures"
    done
done
python3 - "$scratch/figures" "$cores" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, wall, cpu = line.split()
    rows.setdefault(name, []).append((float(wall), float(cpu)))
cores = int(sys.argv[2])
med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in rows.items()}
base = med["base_tar"][0] + med["base_cp"][0]
print(f"baseline (tar+zstd of the backup set {med['base_tar'][0]:.2f} s + cp of the data {med['base_cp'][0]:.2f} s): {base:.2f} s wall")
work = [k for k in sorted(med) if not k.startswith("base_")]
for k in work:
    print(f"  {k[2:]:<16} wall {med[k][0]:.2f} s, cpu {med[k][1]:.2f} s")
cpu = sum(med[k][1] for k in work)
print(f"their CPU: {cpu:.2f} s; over {cores} cores with no waiting: {cpu / cores:.2f} s = {cpu / cores / base:.2f}x the baseline")
print(f"the 2x target leaves {2 * base - cpu / cores:.2f} s for rewriting and checking every record")
EOF
