//! Builders for model tests: safetensors files written by hand (header + data, no library),
//! 1.0.0 model folders, and tree hashes to prove a folder was not touched.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use plugin_api::model::sha256_file;
use plugin_api::ModelFolder;
use serde_json::{json, Map, Value};

/// One tensor: name, dtype, shape and raw little-endian bytes.
pub struct Tensor {
    pub name: &'static str,
    pub dtype: &'static str,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

impl Tensor {
    pub fn f32(name: &'static str, shape: Vec<u64>, values: &[f32]) -> Self {
        Tensor {
            name,
            dtype: "F32",
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn i64(name: &'static str, values: &[i64]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            name,
            dtype: "I64",
            shape: vec![values.len() as u64],
            data,
        }
    }
}

/// Writes a safetensors file: the header lists the tensors in `header_order` (indices into
/// `tensors`), the data section holds them in `tensors` order. No padding, which the format
/// allows and which makes sure the rule does not rely on it.
pub fn write_safetensors(
    path: &Path,
    metadata: Option<Value>,
    tensors: &[Tensor],
    header_order: &[usize],
) {
    let mut offsets = Vec::new();
    let mut at = 0u64;
    for t in tensors {
        offsets.push((at, at + t.data.len() as u64));
        at += t.data.len() as u64;
    }
    let mut header = Map::new();
    if let Some(m) = metadata {
        header.insert("__metadata__".to_owned(), m);
    }
    for &i in header_order {
        let t = &tensors[i];
        let entry = json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offsets[i].0, offsets[i].1]});
        header.insert(t.name.to_owned(), entry);
    }
    let json = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    for t in tensors {
        bytes.extend_from_slice(&t.data);
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, bytes).unwrap();
}

/// A model folder `models/<name>` under `root/install`, staging under `root/staging`.
pub fn folder(root: &Path, name: &str) -> ModelFolder {
    let source = root.join("install/models").join(name);
    fs::create_dir_all(&source).unwrap();
    ModelFolder::new(name, source, root.join("staging/models").join(name))
}

/// Writes the `metadata.json` the 0.1.0 → 1.0.0 hop would write for the folder's files.
pub fn write_v1_metadata(model: &ModelFolder) {
    let files: Vec<Value> = model
        .files()
        .unwrap()
        .into_iter()
        .filter(|rel| rel != "metadata.json")
        .map(|rel| {
            let (size, sha256) = sha256_file(&model.source.join(&rel)).unwrap();
            json!({"path": rel, "size": size, "sha256": sha256})
        })
        .collect();
    let meta = json!({
        "name": model.name,
        "format": "safetensors",
        "architecture": "BertModel",
        "files": files,
        "schema_version": 1
    });
    fs::write(
        model.source.join("metadata.json"),
        serde_json::to_vec_pretty(&meta).unwrap(),
    )
    .unwrap();
}

/// Relative path → sha256 of every file under `dir` (empty if `dir` does not exist).
pub fn tree_hash(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if dir.is_dir() {
        collect(dir, dir, &mut out);
    }
    out
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(rel, sha256_file(&path).unwrap().1);
        }
    }
}

/// The staged `metadata.json`.
pub fn staged_metadata(model: &ModelFolder) -> Value {
    serde_json::from_slice(&fs::read(model.staging.join("metadata.json")).unwrap()).unwrap()
}

/// The data bytes of tensor `name` in the safetensors file at `path`, via the validated header.
pub fn tensor_bytes(path: &Path, name: &str) -> (String, Vec<u8>) {
    let header = plugin_api::safetensors::read_header(path).unwrap();
    let info = header.tensors.iter().find(|t| t.name == name).unwrap();
    let bytes = fs::read(path).unwrap();
    let start = (header.data_start() + info.data_offsets.0) as usize;
    let end = (header.data_start() + info.data_offsets.1) as usize;
    (info.dtype.clone(), bytes[start..end].to_vec())
}

/// Little-endian u16 words.
pub fn words(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .collect()
}
