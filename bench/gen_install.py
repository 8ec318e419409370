#!/usr/bin/env python3
"""Generates a TrustformeRS Serve 0.1.0 installation for benchmarks.

usage: gen_install.py ROOT [--log-bytes N] [--weight-bytes N] [--seed S]

The request log is `data/requests.jsonl` (records like the spec's, with a few nested
`client.seen_at` timestamps and absent counts), plus `data/api_keys.json`; the model is one
safetensors file of F32 tensors (and one I64 tensor) in `models/bench-bert/`.
"""
import argparse, json, os, random, struct

def gen_log(path, target_bytes, rng):
    models = ["bert-base", "bert-tiny", "minilm", "llama-7b"]
    written, i = 0, 0
    with open(path, "w", buffering=1 << 20) as f:
        chunk = []
        while written < target_bytes:
            i += 1
            ts = 1640995200 + i
            p, c, l = rng.randint(1, 2048), rng.randint(0, 1024), rng.randint(0, 5000)
            m = models[i % 4]
            if i % 97 == 0:
                line = f'{{"id":"req-{i:09d}","model":"{m}","prompt_tokens":{p},"latency_ms":{l},"timestamp":{ts},"client":{{"ip":"10.1.{i % 250}.{i % 199}","seen_at":{ts - 60}}}}}\n'
            else:
                line = f'{{"id":"req-{i:09d}","model":"{m}","prompt_tokens":{p},"completion_tokens":{c},"latency_ms":{l},"timestamp":{ts}}}\n'
            chunk.append(line)
            written += len(line)
            if len(chunk) >= 10000:
                f.write("".join(chunk)); chunk = []
        f.write("".join(chunk))
    return i

def gen_weights(path, target_bytes, rng):
    n_tensors = 16
    per = max(1, target_bytes // (4 * n_tensors))
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    header["embeddings.position_ids"] = {"dtype": "I64", "shape": [1, 512], "data_offsets": [0, 4096]}
    offset = 4096
    for t in range(n_tensors):
        header[f"encoder.layer.{t}.weight"] = {"dtype": "F32", "shape": [per], "data_offsets": [offset, offset + 4 * per]}
        offset += 4 * per
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        f.write(struct.pack("<512q", *range(512)))
        remaining = offset - 4096
        while remaining > 0:
            # Fresh random bytes: real weights do not compress, and neither should these.
            n = min(remaining, 1 << 20)
            f.write(os.urandom(n)); remaining -= n

def main():
    a = argparse.ArgumentParser()
    a.add_argument("root"); a.add_argument("--log-bytes", type=int, default=1 << 30)
    a.add_argument("--weight-bytes", type=int, default=1 << 30); a.add_argument("--seed", type=int, default=42)
    args = a.parse_args()
    rng = random.Random(args.seed)
    for d in ["config", "data", "models/bench-bert"]:
        os.makedirs(os.path.join(args.root, d), exist_ok=True)
    with open(os.path.join(args.root, "config/server.toml"), "w") as f:
        f.write('# benchmark node\nhost = "0.0.0.0"\nport = 8080\nmodel_path = "models/bench-bert"\nbatch_size = 32\ntimeout = 30\nlog_level = "info"\nnum_threads = 2\n')
    n = gen_log(os.path.join(args.root, "data/requests.jsonl"), args.log_bytes, rng)
    keys = {"keys": [{"name": f"k{i}", "key": f"tfk_{i:016x}", "created_at": 1640995200 + i, "scopes": ["infer"]} for i in range(100)]}
    with open(os.path.join(args.root, "data/api_keys.json"), "w") as f:
        json.dump(keys, f, indent=2)
    with open(os.path.join(args.root, "models/bench-bert/config.json"), "w") as f:
        json.dump({"architectures": ["BertModel"], "max_position_embeddings": 512}, f)
    if args.weight_bytes > 0:
        gen_weights(os.path.join(args.root, "models/bench-bert/model.safetensors"), args.weight_bytes, rng)
    print(f"{args.root}: {n} records")

if __name__ == "__main__":
    main()
