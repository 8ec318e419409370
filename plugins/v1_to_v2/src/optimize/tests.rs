use super::*;
use crate::test_support::*;
use plugin_api::safetensors::read_header;

/// A file with an F32 tensor of 1001 values (4004 bytes: not a multiple of small chunks)
/// between two I64 tensors.
fn source(dir: &Path) -> (std::path::PathBuf, Vec<f32>) {
    let values: Vec<f32> = (0..1001).map(|i| (i as f32).sin() * 1000.0).collect();
    let path = dir.join("in.safetensors");
    let tensors = [
        Tensor::i64("a", &[1, 2]),
        Tensor::f32("w", vec![7, 143], &values),
        Tensor::i64("z", &[3]),
    ];
    write_safetensors(
        &path,
        Some(json!({"k": "v", "n": "1"})),
        &tensors,
        &[2, 1, 0],
    );
    (path, values)
}

fn convert_with_chunk(src: &Path, dst: &Path, chunk: usize) -> Vec<u8> {
    let header = read_header(src).unwrap();
    convert_file(src, &header, dst, OptimizeDtype::F16, chunk).unwrap();
    std::fs::read(dst).unwrap()
}

#[test]
fn small_chunks_give_the_same_file_as_one_big_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (src, values) = source(dir.path());
    let whole = convert_with_chunk(&src, &dir.path().join("whole"), CHUNK_BYTES);
    for chunk in [4, 6, 16, 1000] {
        let out = dir.path().join(format!("c{chunk}"));
        assert_eq!(
            convert_with_chunk(&src, &out, chunk),
            whole,
            "chunk {chunk}"
        );
    }
    let (_, w) = tensor_bytes(&dir.path().join("whole"), "w");
    let want: Vec<u16> = values.iter().map(|v| f16::from_f32(*v).to_bits()).collect();
    assert_eq!(words(&w), want);
}

#[test]
fn header_keeps_metadata_first_and_is_padded() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = source(dir.path());
    let out = dir.path().join("out");
    let bytes = convert_with_chunk(&src, &out, CHUNK_BYTES);
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(len % 8, 0);
    let text = std::str::from_utf8(&bytes[8..8 + len]).unwrap();
    assert!(
        text.starts_with(r#"{"__metadata__":{"k":"v","n":"1"},"a":"#),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with('}') && text.len() - text.trim_end().len() < 8,
        "{text:?}"
    );
    let header = read_header(&out).unwrap();
    let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a", "w", "z"], "tensors keep their data order");
    assert_eq!(header.tensors[1].data_offsets, (16, 16 + 2002));
}

#[test]
fn a_file_without_metadata_or_tensors_still_makes_a_valid_header() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("empty.safetensors");
    write_safetensors(&src, None, &[], &[]);
    let bytes = convert_with_chunk(&src, &dir.path().join("out"), CHUNK_BYTES);
    assert_eq!(bytes, [&8u64.to_le_bytes()[..], b"{}      "].concat());
}

#[test]
fn has_f32_is_false_for_other_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.safetensors");
    write_safetensors(&path, None, &[Tensor::i64("a", &[1])], &[0]);
    assert!(!has_f32(&read_header(&path).unwrap()));
    let (src, _) = source(dir.path());
    assert!(has_f32(&read_header(&src).unwrap()));
}

#[test]
fn a_source_shorter_than_its_header_says_fails_instead_of_writing_a_short_file() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = source(dir.path());
    let header = read_header(&src).unwrap();
    let bytes = std::fs::read(&src).unwrap();
    std::fs::write(&src, &bytes[..bytes.len() - 100]).unwrap();
    let e = convert_file(
        &src,
        &header,
        &dir.path().join("out"),
        OptimizeDtype::BF16,
        64,
    )
    .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
}

#[test]
fn hashes_both_files_on_the_way() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = source(dir.path());
    let header = read_header(&src).unwrap();
    let out = dir.path().join("out");
    for chunk in [4, CHUNK_BYTES] {
        let hashes = convert_file(&src, &header, &out, OptimizeDtype::BF16, chunk).unwrap();
        let sha = |p: &Path| plugin_api::model::sha256_file(p).unwrap();
        assert_eq!(hashes.source, sha(&src), "chunk {chunk}");
        assert_eq!(hashes.output, sha(&out), "chunk {chunk}");
        assert_ne!(hashes.source.1, hashes.output.1);
    }
    // Bytes after the last tensor are part of the source's hash too.
    let mut bytes = std::fs::read(&src).unwrap();
    bytes.extend_from_slice(b"trailing");
    let padded = dir.path().join("padded.safetensors");
    std::fs::write(&padded, &bytes).unwrap();
    let hashes = convert_file(&padded, &header, &out, OptimizeDtype::F16, 16).unwrap();
    assert_eq!(
        hashes.source,
        plugin_api::model::sha256_file(&padded).unwrap()
    );
    // A file that ends inside its header is refused.
    std::fs::write(&padded, &bytes[..20]).unwrap();
    let e = convert_file(&padded, &header, &out, OptimizeDtype::F16, 16).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
}
