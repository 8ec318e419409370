#!/usr/bin/env python3
"""What writing new file data costs the kernel on this machine, depending on which free memory
it lands in. A diagnostic for reading bench/results.md, not part of the bench.

usage: bench/page_cost.py [--mib N] [--rounds R] [--pause S] [--dir DIR]

Why: on this virtual machine the kernel time of the same `write()` of the same bytes to a new
file on the disk's filesystem changes several-fold with what the machine did just before. Right
after another file's data was written and removed, the copy into the page cache is quick; after
a few idle seconds, it is several times slower (seen here: 852 MiB took 0.21 s against 1.25 s;
`cp` of the 0.5x log 0.16-0.20 s against 0.43-1.0 s). The time goes into the copy itself. The
balloon device offers free page reporting (memory the guest frees goes back to the host, and
the next touch of it faults in the host), the likely cause; a tmpfs file does not show the
difference, so it is not proven. Every command a benchmark times that writes a file (`cp`,
`dd`, tar, the data step) pays it or not depending on what ran before it. This script shows the
size of it: it writes N MiB of new file data in 1 MiB writes (no fsync in the timing), right
after removing a file of the same size, and again after an idle pause of S seconds,
interleaved, R rounds each, and prints the medians of the kernel time of the writes. It also
says whether the balloon device offers free page reporting (feature bit 5).
"""
import argparse, glob, os, resource, statistics, tempfile, time

PIECE = 1 << 20


def reporting():
    """Whether a virtio balloon device here offers free page reporting (VIRTIO_BALLOON_F_REPORTING)."""
    for features in glob.glob("/sys/bus/virtio/drivers/virtio_balloon/virtio*/features"):
        bits = open(features).read().strip()
        if len(bits) > 5 and bits[5] == "1":
            return True
    return False


def write_cost(path, mib, block):
    """Kernel seconds of writing `mib` MiB of new data to `path` in 1 MiB writes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    for _ in range(mib):
        os.write(fd, block)
    spent = resource.getrusage(resource.RUSAGE_SELF).ru_stime - before
    os.close(fd)
    return spent


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=852, help="MiB written per measurement (852: the 0.5x migrated log)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pause", type=float, default=5.0, help="idle seconds before the 'after a pause' write")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="a folder on the disk to measure")
    a = ap.parse_args()
    block = os.urandom(PIECE)
    path = os.path.join(a.dir, f"page-cost-{os.getpid()}.bin")
    warm, cold = [], []
    try:
        write_cost(path, a.mib, block)
        for _ in range(a.rounds):
            os.remove(path)
            warm.append(write_cost(path, a.mib, block))
            os.remove(path)
            os.sync()
            time.sleep(a.pause)
            cold.append(write_cost(path, a.mib, block))
    finally:
        if os.path.exists(path):
            os.remove(path)
    print(f"free page reporting offered by the balloon device: {'yes' if reporting() else 'no'}")
    print(f"kernel time of writing {a.mib} MiB of new file data, medians of {a.rounds} rounds:")
    print(f"  right after removing a file of that size: {statistics.median(warm):.3f} s  (all: {', '.join(f'{x:.2f}' for x in warm)})")
    print(f"  after {a.pause:g} s idle:                     {statistics.median(cold):.3f} s  (all: {', '.join(f'{x:.2f}' for x in cold)})")


if __name__ == "__main__":
    main()
