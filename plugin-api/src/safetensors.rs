//! Reading safetensors headers without touching the weights, with errors that say what is
//! wrong and where. Weight files can be tens of GB: only the header is ever read whole.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::RuleError;

/// Headers larger than this are refused as corrupt (the reference implementation uses 100 MB).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor's entry in the header. Read by [`read_header`], never built by a plugin;
/// non-exhaustive (since 1.4.0) so that it can keep more of the header.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct TensorInfo {
    #[serde(skip)]
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Byte range relative to the start of the data section.
    pub data_offsets: (u64, u64),
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A parsed, validated header, as [`read_header`] returns it; non-exhaustive since 1.4.0, like
/// [`TensorInfo`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Header {
    /// Length of the JSON header in bytes (the data section starts at `8 + header_len`).
    pub header_len: u64,
    /// Tensors in data order (by start offset).
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` object, kept verbatim.
    pub metadata: Option<Value>,
}

impl Header {
    pub fn data_start(&self) -> u64 {
        8 + self.header_len
    }
}

/// Size in bytes of one element of `dtype`, `None` for dtypes we do not know.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// Reads and checks the header of `path`: length, JSON, dtypes, shapes against byte ranges,
/// and that the data section holds exactly the bytes the header describes.
pub fn read_header(path: &Path) -> Result<Header, RuleError> {
    let file = File::open(path)
        .map_err(|e| RuleError::new(format!("{}: cannot open: {e}", path.display())))?;
    read_header_from(file, path)
}

/// [`read_header`] on a file the caller opened: a host that opens files without following
/// links (and checks that each is a regular file) reads the header from its own descriptor,
/// never through the path again. `path` only names the file in messages.
pub fn read_header_from(mut file: File, path: &Path) -> Result<Header, RuleError> {
    let fail = |msg: String| RuleError::new(format!("{}: {msg}", path.display()));
    let file_len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(|_| {
        fail(format!(
            "truncated: {file_len} bytes, too short for a safetensors header"
        ))
    })?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_LEN || 8 + header_len > file_len {
        return Err(fail(format!(
            "header length {header_len} at byte 0 does not fit in the file ({file_len} bytes): truncated or not safetensors"
        )));
    }
    let mut json = vec![0u8; header_len as usize];
    file.read_exact(&mut json)
        .map_err(|e| fail(format!("cannot read header: {e}")))?;
    let header = parse_header_json(&json, header_len).map_err(&fail)?;
    let data_len = file_len - header.data_start();
    let needed = header
        .tensors
        .iter()
        .map(|t| t.data_offsets.1)
        .max()
        .unwrap_or(0);
    if needed != data_len {
        return Err(fail(format!(
            "header describes {needed} bytes of tensor data but the file holds {data_len}: truncated or corrupt"
        )));
    }
    Ok(header)
}

fn parse_header_json(json: &[u8], header_len: u64) -> Result<Header, String> {
    let map: Map<String, Value> =
        serde_json::from_slice(json).map_err(|e| format!("header is not a JSON object: {e}"))?;
    let mut metadata = None;
    let mut tensors = Vec::with_capacity(map.len());
    for (name, value) in map {
        if name == "__metadata__" {
            metadata = Some(value);
            continue;
        }
        let mut info: TensorInfo = serde_json::from_value(value)
            .map_err(|e| format!("tensor `{name}` has a malformed entry: {e}"))?;
        info.name = name;
        check_tensor(&info)?;
        tensors.push(info);
    }
    tensors.sort_by_key(|t| t.data_offsets.0);
    let mut expected_start = 0;
    for t in &tensors {
        if t.data_offsets.0 != expected_start {
            return Err(format!(
                "tensor `{}` starts at {} but the previous one ends at {expected_start}: overlapping or gapped data",
                t.name, t.data_offsets.0
            ));
        }
        expected_start = t.data_offsets.1;
    }
    Ok(Header {
        header_len,
        tensors,
        metadata,
    })
}

fn check_tensor(t: &TensorInfo) -> Result<(), String> {
    let size = dtype_size(&t.dtype)
        .ok_or_else(|| format!("tensor `{}` has unknown dtype `{}`", t.name, t.dtype))?;
    let (begin, end) = t.data_offsets;
    let bytes = t
        .shape
        .iter()
        .try_fold(size, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| format!("tensor `{}` shape {:?} overflows", t.name, t.shape))?;
    if end < begin || end - begin != bytes {
        return Err(format!(
            "tensor `{}` ({} {:?}) needs {bytes} bytes but data_offsets [{begin}, {end}] hold {}",
            t.name,
            t.dtype,
            t.shape,
            end.saturating_sub(begin)
        ));
    }
    Ok(())
}

/// Opens `path` positioned at the first byte of tensor data.
pub fn open_data(path: &Path, header: &Header) -> std::io::Result<File> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(header.data_start()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_file(header: &str, data: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        f.write_all(data).unwrap();
        f
    }

    #[test]
    fn reads_a_valid_header_in_data_order() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}}"#;
        let f = write_file(h, &[0u8; 12]);
        let header = read_header(f.path()).unwrap();
        let names: Vec<_> = header.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(header.metadata.unwrap()["format"], "pt");
    }

    #[test]
    fn refuses_truncated_data() {
        let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let f = write_file(h, &[0u8; 10]);
        let e = read_header(f.path()).unwrap_err();
        assert!(e.message.contains("truncated"), "{e}");
    }

    #[test]
    fn refuses_a_header_longer_than_the_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&1000u64.to_le_bytes()).unwrap();
        f.write_all(b"{}").unwrap();
        let e = read_header(f.path()).unwrap_err();
        assert!(e.message.contains("does not fit"), "{e}");
    }

    #[test]
    fn refuses_inconsistent_shape() {
        let h = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let f = write_file(h, &[0u8; 8]);
        assert!(read_header(f.path())
            .unwrap_err()
            .message
            .contains("needs 12 bytes"));
    }
}
