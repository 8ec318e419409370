//! Models: a real Hugging Face folder (all-MiniLM-L6-v2) through the full chain, and the
//! `--optimize` result read back by Python's `safetensors` and compared with numpy's own
//! round-to-nearest-even conversion.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// A 0.1.0 installation whose only model is the real MiniLM folder.
fn install_with_real_model() -> tempfile::TempDir {
    let install = sample_install();
    let models = install.path().join("models");
    std::fs::remove_dir_all(&models).unwrap();
    copy_tree(&real_model_dir(), &models.join("minilm"));
    write(
        install.path(),
        "config/server.toml",
        "host = \"127.0.0.1\"\nport = 8080\nmodel_path = \"models/minilm\"\n",
    );
    install
}

fn python(script: &str, args: &[&Path]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const COMPARE_F16: &str = r#"
import sys, numpy as np
from safetensors.numpy import load_file
orig, new = load_file(sys.argv[1]), load_file(sys.argv[2])
assert orig.keys() == new.keys(), "tensor names differ"
converted = 0
for name, a in orig.items():
    b = new[name]
    assert a.shape == b.shape, name
    if a.dtype == np.float32:
        assert b.dtype == np.float16, (name, b.dtype)
        assert np.array_equal(a.astype(np.float16).view(np.uint16), b.view(np.uint16)), name
        converted += 1
    else:
        assert a.dtype == b.dtype and np.array_equal(a, b), name
print(converted)
"#;

#[test]
fn real_hugging_face_model_through_the_full_chain_with_optimize() {
    let install = install_with_real_model();
    let root = install.path();
    let original = real_model_dir().join("model.safetensors");
    let original_sha = sha256_hex(&std::fs::read(&original).unwrap());
    ok(&migrate(&[
        "version",
        "--path",
        root.to_str().unwrap(),
        "--to",
        "2.1.0",
        "--optimize",
    ]));

    let model = root.join("models/minilm");
    let meta: Value = serde_json::from_str(&read(&model, "metadata.json")).unwrap();
    assert_eq!(meta["architecture"], "BertModel");
    assert_eq!(meta["format"], "safetensors");
    assert_eq!(meta["schema_version"], 3);
    assert_eq!(meta["dtypes"], serde_json::json!(["F16", "I64"]));
    assert_eq!(meta["optimization"]["optimized"], true);
    assert_eq!(meta["optimization"]["dtype"], "F16");
    assert_eq!(meta["optimization"]["source_sha256"], original_sha);
    assert_eq!(
        meta["serving"]["kv_cache"]["max_tokens"], 512,
        "max_position_embeddings of MiniLM"
    );
    let paths: Vec<&str> = meta["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"1_Pooling/config.json"),
        "nested files listed: {paths:?}"
    );
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    for f in meta["files"].as_array().unwrap() {
        let bytes = std::fs::read(model.join(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(f["sha256"], sha256_hex(&bytes), "{}", f["path"]);
    }
    let params: u64 = python(
        "import sys\nfrom safetensors.numpy import load_file\nprint(sum(a.size for a in load_file(sys.argv[1]).values()))",
        &[&original],
    )
    .trim()
    .parse()
    .unwrap();
    assert_eq!(meta["parameters"], params);

    let converted: u32 = python(COMPARE_F16, &[&original, &model.join("model.safetensors")])
        .trim()
        .parse()
        .unwrap();
    assert!(
        converted > 50,
        "MiniLM has ~100 F32 tensors, {converted} converted"
    );
    let new_size = std::fs::metadata(model.join("model.safetensors"))
        .unwrap()
        .len();
    let old_size = std::fs::metadata(&original).unwrap().len();
    assert!(
        new_size < old_size * 6 / 10,
        "F16 halves the weights: {new_size} vs {old_size}"
    );
    ok(&migrate(&[
        "validate",
        "--path",
        root.to_str().unwrap(),
        "--version",
        "2.1.0",
    ]));
}

const COMPARE_BF16: &str = r#"
import sys, json, struct, numpy as np
from safetensors.numpy import load_file
orig = load_file(sys.argv[1])
raw = open(sys.argv[2], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8+n])
data = raw[8+n:]
meta = header.pop("__metadata__", None)
assert meta == {"format": "pt"}, meta
for name, a in orig.items():
    info = header[name]
    begin, end = info["data_offsets"]
    if a.dtype == np.float32:
        assert info["dtype"] == "BF16", info
        bits = a.view(np.uint32).astype(np.uint64)
        want = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        got = np.frombuffer(data[begin:end], dtype="<u2").reshape(a.shape)
        assert np.array_equal(want, got), name
    else:
        assert data[begin:end] == a.tobytes(), name
print("ok")
"#;

#[test]
fn optimize_to_bf16_rounds_to_nearest_even() {
    let install = sample_install();
    let root = install.path();
    let original = root.join("original.safetensors");
    std::fs::copy(root.join("models/bert-tiny/model.safetensors"), &original).unwrap();
    ok(&migrate(&[
        "version",
        "--path",
        root.to_str().unwrap(),
        "--to",
        "2.0.0",
        "--optimize",
        "--optimize-dtype",
        "bf16",
    ]));
    assert_eq!(
        python(
            COMPARE_BF16,
            &[&original, &root.join("models/bert-tiny/model.safetensors")]
        )
        .trim(),
        "ok"
    );
    let meta: Value = serde_json::from_str(&read(root, "models/bert-tiny/metadata.json")).unwrap();
    assert_eq!(meta["optimization"]["dtype"], "BF16");
}
