#!/usr/bin/env bash
# Would the whole migration be shorter if its backup ran beside the data step and the check,
# instead of after them? Measured with the release binary and standard tools, before anyone
# moves the backup inside the journal's crash-safe order to find out.
#
# usage: bench/overlap.sh TREE [ROUNDS]
#   TREE   a 0.1.0 installation from bench/gen_install.py (left unchanged; copied per run)
#
# Each round times, interleaved, on a fresh copy of TREE (medians over ROUNDS, default 5):
#   whole      migrate version --to 2.1.0, with its backup (what the bench times);
#   no_backup  the same with backup_before_migration = false: the data step, the check and
#              the commit alone;
#   overlap    no_backup, with the backup's work done at the same time by standard tools from
#              the first second: tar | zstd -T0 -3 of the backup set (read from TREE, the same
#              bytes), the archive decompressed again (the read-back), and openssl's sha256 of
#              every archived file (the sha256 of the files written is in no_backup already:
#              the check takes it);
#   baseline   tar -I 'zstd -T0 -3' of the backup set, then cp of the data (the issue's
#              baseline).
# Each line gives wall and CPU seconds. `whole`'s CPU seconds over the cores are the least
# any order of the same work could take: the gap to its wall time bounds what an overlap can
# save. `overlap` shows what standard tools get, spending more CPU on the backup's work than
# migrate does (a pipe, the files read twice).
set -euo pipefail
tree=$(realpath "$1") rounds=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
migrate="$here/target/release/migrate"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
printf '[global]\nbackup_before_migration = false\n' >"$scratch/no_backup.toml"
set_files="config/server.toml data"

# Runs a shell command on a fresh copy of the tree at $scratch/inst; prints "wall cpu".
timed() {
    rm -rf "$scratch/inst" "$scratch/b.tar.zst" "$scratch/data"
    cp -a "$tree" "$scratch/inst"
    sync
    /usr/bin/time -f "%e %U %S" -o "$scratch/time" bash -c "$1" >/dev/null
    awk '{printf "%.3f %.3f\n", $1, $2 + $3}' "$scratch/time"
}

# The operator's own settings stay out: backups go into the copy's own backups/.
run="env -u TRUSTFORMERS_BACKUP_DIR -u TRUSTFORMERS_MIGRATION_CONFIG '$migrate' --quiet --yes"
backup_work="(cd '$tree' && tar -cf - $set_files | zstd -q -T0 -3 >'$scratch/b.tar.zst' && zstd -q -dc '$scratch/b.tar.zst' >/dev/null) & (cd '$tree' && find $set_files -type f -exec openssl dgst -sha256 {} + >/dev/null) &"
declare -A commands=(
    [whole]="$run version --path '$scratch/inst' --to 2.1.0"
    [no_backup]="$run --config-file '$scratch/no_backup.toml' version --path '$scratch/inst' --to 2.1.0"
    [overlap]="$backup_work $run --config-file '$scratch/no_backup.toml' version --path '$scratch/inst' --to 2.1.0; wait"
    [baseline]="cd '$tree' && tar -I 'zstd -T0 -3' -cf '$scratch/b.tar.zst' $set_files && cp -r '$tree/data' '$scratch/data'"
)
: >"$scratch/figures"
for _ in $(seq "$rounds"); do
    for name in whole no_backup overlap baseline; do
        echo "$name $(timed "${commands[$name]}")" >>"$scratch/figures"
    done
done
python3 - "$scratch/figures" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, wall, cpu = line.split()
    rows.setdefault(name, []).append((float(wall), float(cpu)))
for name in ["whole", "no_backup", "overlap", "baseline"]:
    v = rows[name]
    walls = sorted(w for w, _ in v)
    print(f"{name:<10} wall {statistics.median(walls):.2f} s ({walls[0]:.2f}-{walls[-1]:.2f}), cpu {statistics.median(c for _, c in v):.2f} s")
EOF
