use super::*;
use crate::test_support::*;
use half::{bf16, f16};
use plugin_api::model::sha256_file;
use std::path::Path;

/// F32 values with the F16 and BF16 bit patterns round-to-nearest-even gives them, worked
/// out by hand (ties: `1 + 2^-11` is halfway between two F16 values and goes to the even one,
/// 1.0; `1 + 3·2^-11` goes to the even `1 + 2^-9`; likewise `2^-8` for BF16).
const CASES: [(f32, u16, u16); 8] = [
    (1.0, 0x3C00, 0x3F80),
    (1.0 + 1.0 / 2048.0, 0x3C00, 0x3F80),
    (1.0 + 3.0 / 2048.0, 0x3C02, 0x3F80),
    (1.0 + 1.0 / 256.0, 0x3C04, 0x3F80),
    (1.0 + 3.0 / 256.0, 0x3C0C, 0x3F82),
    (-2.5, 0xC100, 0xC020),
    (0.1, 0x2E66, 0x3DCD),
    (65520.0, 0x7C00, 0x4780),
];

const IDS: [i64; 3] = [1, -2, i64::MAX];

/// A 1.0.0 model folder with one safetensors file (F32 `weight` [2,4], I64 `ids` [3], F32
/// `bias` [1]; header order differs from data order) and a side file.
fn sample(root: &Path) -> ModelFolder {
    let model = folder(root, "bert");
    let values: Vec<f32> = CASES.iter().map(|c| c.0).collect();
    let tensors = [
        Tensor::f32("weight", vec![2, 4], &values),
        Tensor::i64("ids", &IDS),
        Tensor::f32("bias", vec![1], &[-0.0]),
    ];
    write_safetensors(
        &model.source.join("model.safetensors"),
        Some(json!({"format": "pt"})),
        &tensors,
        &[2, 0, 1],
    );
    std::fs::write(
        model.source.join("config.json"),
        r#"{"architectures":["BertModel"]}"#,
    )
    .unwrap();
    write_v1_metadata(&model);
    model
}

fn run(
    model: &ModelFolder,
    optimize: bool,
    dtype: OptimizeDtype,
) -> Result<ModelOutcome, RuleError> {
    ModelRule.migrate(model, &ModelOptions::new(optimize, dtype))
}

fn keys(meta: &Value) -> Vec<&str> {
    meta.as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn without_optimize_metadata_gains_the_2_0_0_fields_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample(dir.path());
    let before = tree_hash(&model.source);
    let original_meta: Value =
        serde_json::from_slice(&std::fs::read(model.source.join("metadata.json")).unwrap())
            .unwrap();

    let outcome = run(&model, false, OptimizeDtype::F16).unwrap();

    assert_eq!(outcome.written, ["metadata.json"]);
    assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
    let meta = staged_metadata(&model);
    assert_eq!(
        keys(&meta),
        [
            "name",
            "format",
            "architecture",
            "files",
            "parameters",
            "dtypes",
            "optimization",
            "schema_version"
        ]
    );
    assert_eq!(meta["parameters"], 8 + 3 + 1);
    assert_eq!(meta["dtypes"], json!(["F32", "I64"]));
    assert_eq!(
        meta["optimization"],
        json!({"optimized": false, "dtype": null, "source_sha256": null})
    );
    assert_eq!(meta["schema_version"], 2);
    assert_eq!(meta["files"], original_meta["files"]);
    assert_eq!(
        tree_hash(&model.staging).keys().collect::<Vec<_>>(),
        ["metadata.json"]
    );
    assert_eq!(
        tree_hash(&model.source),
        before,
        "the source folder must not change"
    );
}

#[test]
fn optimize_f16_converts_f32_with_round_to_nearest_even() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample(dir.path());
    let original = model.source.join("model.safetensors");
    let before = tree_hash(&model.source);
    let original_sha = sha256_file(&original).unwrap().1;

    let outcome = run(&model, true, OptimizeDtype::F16).unwrap();

    assert_eq!(outcome.written, ["model.safetensors", "metadata.json"]);
    let staged = model.staging.join("model.safetensors");
    let header = read_header(&staged).unwrap();
    assert_eq!(header.header_len % 8, 0, "header padded to a multiple of 8");
    assert_eq!(header.metadata, Some(json!({"format": "pt"})));
    let layout: Vec<String> = header
        .tensors
        .iter()
        .map(|t| format!("{} {} {:?} {:?}", t.name, t.dtype, t.shape, t.data_offsets))
        .collect();
    assert_eq!(
        layout,
        [
            "weight F16 [2, 4] (0, 16)",
            "ids I64 [3] (16, 40)",
            "bias F16 [1] (40, 42)"
        ]
    );

    let (_, weight) = tensor_bytes(&staged, "weight");
    let want: Vec<u16> = CASES.iter().map(|c| c.1).collect();
    assert_eq!(words(&weight), want);
    let by_half: Vec<u16> = CASES.iter().map(|c| f16::from_f32(c.0).to_bits()).collect();
    assert_eq!(words(&weight), by_half);
    assert_eq!(words(&tensor_bytes(&staged, "bias").1), [0x8000]);
    assert_eq!(
        tensor_bytes(&staged, "ids").1,
        tensor_bytes(&original, "ids").1,
        "I64 copied byte for byte"
    );

    let meta = staged_metadata(&model);
    assert_eq!(
        meta["optimization"],
        json!({"optimized": true, "dtype": "F16", "source_sha256": original_sha})
    );
    assert_eq!(meta["dtypes"], json!(["F16", "I64"]));
    assert_eq!(meta["parameters"], 12);
    let (size, sha) = sha256_file(&staged).unwrap();
    let entry = meta["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "model.safetensors")
        .unwrap();
    assert_eq!(
        (entry["size"].as_u64(), entry["sha256"].as_str()),
        (Some(size), Some(sha.as_str()))
    );
    assert_ne!(sha, original_sha);
    let config = meta["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "config.json")
        .unwrap();
    assert_eq!(
        config["sha256"],
        sha256_file(&model.source.join("config.json")).unwrap().1
    );

    assert_eq!(
        tree_hash(&model.source),
        before,
        "the source folder must not change"
    );
    assert_eq!(
        tree_hash(&model.staging).keys().collect::<Vec<_>>(),
        ["metadata.json", "model.safetensors"]
    );
}

#[test]
fn optimize_bf16_converts_f32_with_round_to_nearest_even() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample(dir.path());
    let before = tree_hash(&model.source);

    run(&model, true, OptimizeDtype::BF16).unwrap();

    let staged = model.staging.join("model.safetensors");
    let (dtype, weight) = tensor_bytes(&staged, "weight");
    assert_eq!(dtype, "BF16");
    let want: Vec<u16> = CASES.iter().map(|c| c.2).collect();
    assert_eq!(words(&weight), want);
    let by_half: Vec<u16> = CASES
        .iter()
        .map(|c| bf16::from_f32(c.0).to_bits())
        .collect();
    assert_eq!(words(&weight), by_half);
    assert_eq!(
        tensor_bytes(&staged, "ids").1,
        IDS.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
    );
    let meta = staged_metadata(&model);
    assert_eq!(meta["optimization"]["dtype"], "BF16");
    assert_eq!(meta["dtypes"], json!(["BF16", "I64"]));
    assert_eq!(tree_hash(&model.source), before);
}

#[test]
fn a_truncated_safetensors_file_is_refused_naming_it_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample(dir.path());
    let path = model.source.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();

    for optimize in [false, true] {
        let e = run(&model, optimize, OptimizeDtype::F16).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("models/bert/model.safetensors"));
        assert!(e.message.contains("truncated"), "{}", e.message);
        assert!(
            tree_hash(&model.staging).is_empty(),
            "nothing staged after a refusal"
        );
    }
}

#[test]
fn a_folder_without_metadata_is_not_a_1_0_0_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample(dir.path());
    std::fs::remove_file(model.source.join("metadata.json")).unwrap();
    let e = run(&model, false, OptimizeDtype::F16).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("models/bert/metadata.json"));
    assert!(
        e.message.contains("not a 1.0.0 model folder"),
        "{}",
        e.message
    );
}

#[test]
fn metadata_of_another_release_or_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample(dir.path());
    for (text, needle) in [
        (
            r#"{"name":"bert","schema_version":2}"#,
            "schema_version is 2",
        ),
        (r#"{"name":"bert"}"#, "schema_version is missing"),
        (r#"["bert"]"#, "expected a JSON object"),
        ("{not json", "not valid JSON"),
    ] {
        std::fs::write(model.source.join("metadata.json"), text).unwrap();
        let e = run(&model, false, OptimizeDtype::F16).unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("models/bert/metadata.json"),
            "{text}"
        );
        assert!(e.message.contains(needle), "{text}: {}", e.message);
    }
}

#[test]
fn a_folder_without_safetensors_has_null_parameters_and_nothing_to_optimize() {
    let dir = tempfile::tempdir().unwrap();
    let model = folder(dir.path(), "gguf");
    std::fs::write(model.source.join("model.gguf"), b"GGUF....").unwrap();
    write_v1_metadata(&model);

    run(&model, false, OptimizeDtype::F16).unwrap();
    let meta = staged_metadata(&model);
    assert_eq!(
        (&meta["parameters"], &meta["dtypes"]),
        (&Value::Null, &json!([]))
    );
    std::fs::remove_dir_all(&model.staging).unwrap();

    let outcome = run(&model, true, OptimizeDtype::F16).unwrap();
    assert_eq!(outcome.written, ["metadata.json"]);
    assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
    assert_eq!(staged_metadata(&model)["optimization"]["optimized"], false);
}

#[test]
fn several_files_map_each_converted_path_to_its_original_hash() {
    let dir = tempfile::tempdir().unwrap();
    let model = folder(dir.path(), "sharded");
    write_safetensors(
        &model.source.join("a.safetensors"),
        None,
        &[Tensor::f32("x", vec![2], &[1.0, 2.0])],
        &[0],
    );
    write_safetensors(
        &model.source.join("sub/b.safetensors"),
        None,
        &[Tensor::i64("y", &[7])],
        &[0],
    );
    write_v1_metadata(&model);
    let a_sha = sha256_file(&model.source.join("a.safetensors")).unwrap().1;
    let before = tree_hash(&model.source);

    let outcome = run(&model, true, OptimizeDtype::F16).unwrap();

    assert_eq!(outcome.written, ["a.safetensors", "metadata.json"]);
    assert!(
        !model.staging.join("sub/b.safetensors").exists(),
        "a file without F32 is not rewritten"
    );
    let meta = staged_metadata(&model);
    assert_eq!(
        meta["optimization"]["source_sha256"],
        json!({"a.safetensors": a_sha})
    );
    assert_eq!(meta["parameters"], 3);
    assert_eq!(meta["dtypes"], json!(["F16", "I64"]));
    assert_eq!(tree_hash(&model.source), before);
}

#[test]
fn a_tensor_bigger_than_a_chunk_is_converted_whole() {
    let dir = tempfile::tempdir().unwrap();
    let model = folder(dir.path(), "big");
    let n = CHUNK_BYTES / 4 + 3;
    let values: Vec<f32> = (0..n).map(|i| i as f32 * 0.001 - 100.0).collect();
    let tensors = [
        Tensor::i64("head", &[5]),
        Tensor::f32("big", vec![n as u64], &values),
        Tensor::i64("tail", &[6]),
    ];
    write_safetensors(
        &model.source.join("model.safetensors"),
        None,
        &tensors,
        &[0, 1, 2],
    );
    write_v1_metadata(&model);

    run(&model, true, OptimizeDtype::F16).unwrap();

    let staged = model.staging.join("model.safetensors");
    let (_, big) = tensor_bytes(&staged, "big");
    let want: Vec<u16> = values.iter().map(|v| f16::from_f32(*v).to_bits()).collect();
    assert_eq!(words(&big), want);
    assert_eq!(tensor_bytes(&staged, "tail").1, 6i64.to_le_bytes());
}

#[test]
fn staged_files_of_an_earlier_hop_are_read_and_replaced_in_staging() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample(dir.path());
    // An earlier hop of the same run staged both files; the source has neither.
    std::fs::create_dir_all(&model.staging).unwrap();
    for rel in ["metadata.json", "model.safetensors"] {
        std::fs::rename(model.source.join(rel), model.staging.join(rel)).unwrap();
    }
    let before = tree_hash(&model.source);
    let staged = model.staging.join("model.safetensors");
    let original_sha = sha256_file(&staged).unwrap().1;

    run(&model, true, OptimizeDtype::F16).unwrap();

    assert_eq!(tensor_bytes(&staged, "weight").0, "F16");
    let meta = staged_metadata(&model);
    assert_eq!(meta["optimization"]["source_sha256"], original_sha);
    assert_eq!(
        tree_hash(&model.staging).keys().collect::<Vec<_>>(),
        ["metadata.json", "model.safetensors"]
    );
    assert_eq!(tree_hash(&model.source), before);
}

#[test]
fn a_converted_file_missing_from_files_is_added_in_path_order() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample(dir.path());
    let path = model.source.join("metadata.json");
    let mut meta: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    meta["files"]
        .as_array_mut()
        .unwrap()
        .retain(|f| f["path"] != "model.safetensors");
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();

    let outcome = run(&model, true, OptimizeDtype::F16).unwrap();

    assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
    let meta = staged_metadata(&model);
    let paths: Vec<&str> = meta["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert_eq!(paths, ["config.json", "model.safetensors"]);
}

#[test]
fn metadata_without_files_is_refused_before_anything_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let model = sample(dir.path());
    std::fs::write(
        model.source.join("metadata.json"),
        r#"{"name":"bert","schema_version":1}"#,
    )
    .unwrap();
    let e = run(&model, true, OptimizeDtype::F16).unwrap_err();
    assert!(e.message.contains("`files`"), "{}", e.message);
    assert!(tree_hash(&model.staging).is_empty());
}
