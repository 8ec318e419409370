//! `--optimize`: rewrites a safetensors file with every F32 tensor converted to F16 or BF16
//! (round to nearest, ties to even) and every other tensor copied byte for byte.
//!
//! Weight files can be tens of GB, so the data is streamed in bounded chunks: memory use is
//! a few chunk buffers whatever the size of a tensor or of the file.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use half::{bf16, f16};
use plugin_api::model::{Sha256Reader, Sha256Writer};
use plugin_api::safetensors::{Header, TensorInfo};
use plugin_api::OptimizeDtype;
use serde_json::{json, Map, Value};

/// Bytes read (and converted) at a time. A multiple of 4, so a chunk never splits an F32.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// The dtype this conversion rewrites.
const F32: &str = "F32";

/// True when the file has something to convert; a file without F32 tensors is not rewritten.
pub(crate) fn has_f32(header: &Header) -> bool {
    header.tensors.iter().any(|t| t.dtype == F32)
}

/// Writes the converted copy of `src` (whose header, already validated, is `header`) to
/// `dst`, synced to disk. Reads `src` in chunks of at most `chunk` bytes.
pub(crate) fn convert_file(
    src: &Path,
    header: &Header,
    dst: &Path,
    target: OptimizeDtype,
    chunk: usize,
) -> io::Result<Converted> {
    let json = converted_header(header, target)?;
    let mut input = Sha256Reader::new(BufReader::with_capacity(CHUNK_BYTES, File::open(src)?));
    // The source's header is part of its hash; its data starts right after it.
    let header_bytes = header.data_start();
    if io::copy(&mut (&mut input).take(header_bytes), &mut io::sink())? != header_bytes {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the file ends inside its header",
        ));
    }
    let mut output = BufWriter::with_capacity(CHUNK_BYTES, Sha256Writer::new(File::create(dst)?));
    output.write_all(&(json.len() as u64).to_le_bytes())?;
    output.write_all(&json)?;
    let chunk = (chunk.max(4) / 4) * 4;
    let mut buffers = Buffers {
        read: vec![0; chunk],
        converted: Vec::with_capacity(chunk / 2),
    };
    for tensor in &header.tensors {
        copy_tensor(tensor, &mut input, &mut output, target, &mut buffers)?;
    }
    // Anything after the last tensor is still part of the source's hash.
    io::copy(&mut input, &mut io::sink())?;
    let output = output
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    let converted = Converted {
        source: (input.bytes_read(), input.hex()),
        output: (output.bytes_written(), output.hex()),
    };
    output.into_inner().sync_all()?;
    Ok(converted)
}

/// The sizes and sha256 of a converted file's source and output, hashed as they streamed
/// through the conversion: neither file is read again for them.
#[derive(Debug)]
pub(crate) struct Converted {
    pub source: (u64, String),
    pub output: (u64, String),
}

/// The converted file's header JSON: `__metadata__` first and verbatim, then the tensors in
/// data order with their new dtypes and offsets; padded with spaces to a multiple of 8 bytes
/// so that the data section stays aligned (the safetensors convention).
fn converted_header(header: &Header, target: OptimizeDtype) -> io::Result<Vec<u8>> {
    let mut map = Map::new();
    if let Some(metadata) = &header.metadata {
        map.insert("__metadata__".to_owned(), metadata.clone());
    }
    let mut offset = 0u64;
    for tensor in &header.tensors {
        let (dtype, len) = converted_layout(tensor, target);
        let entry =
            json!({"dtype": dtype, "shape": tensor.shape, "data_offsets": [offset, offset + len]});
        map.insert(tensor.name.clone(), entry);
        offset += len;
    }
    let mut bytes = serde_json::to_vec(&Value::Object(map)).map_err(io::Error::other)?;
    bytes.resize(bytes.len().div_ceil(8) * 8, b' ');
    Ok(bytes)
}

/// A tensor's dtype and byte length in the converted file: F32 halves, the rest is the same.
fn converted_layout(tensor: &TensorInfo, target: OptimizeDtype) -> (&str, u64) {
    let len = tensor.data_offsets.1 - tensor.data_offsets.0;
    if tensor.dtype == F32 {
        (target.name(), len / 2)
    } else {
        (tensor.dtype.as_str(), len)
    }
}

/// The two chunk buffers, allocated once per file.
struct Buffers {
    read: Vec<u8>,
    converted: Vec<u8>,
}

/// Streams one tensor's bytes from `input` to `output`, converting F32 ones.
fn copy_tensor(
    tensor: &TensorInfo,
    input: &mut impl Read,
    output: &mut impl Write,
    target: OptimizeDtype,
    buffers: &mut Buffers,
) -> io::Result<()> {
    let mut remaining = tensor.data_offsets.1 - tensor.data_offsets.0;
    while remaining > 0 {
        let n =
            usize::try_from(remaining).map_or(buffers.read.len(), |r| r.min(buffers.read.len()));
        let bytes = &mut buffers.read[..n];
        input.read_exact(bytes)?;
        if tensor.dtype == F32 {
            convert_chunk(bytes, target, &mut buffers.converted);
            output.write_all(&buffers.converted)?;
        } else {
            output.write_all(bytes)?;
        }
        remaining -= n as u64;
    }
    Ok(())
}

/// Converts little-endian F32 values to little-endian F16/BF16 (`half` rounds to nearest,
/// ties to even, as numpy's `astype` does).
fn convert_chunk(bytes: &[u8], target: OptimizeDtype, out: &mut Vec<u8>) {
    out.clear();
    for word in bytes.chunks_exact(4) {
        let &[a, b, c, d] = word else { continue };
        let x = f32::from_le_bytes([a, b, c, d]);
        let bits = match target {
            OptimizeDtype::F16 => f16::from_f32(x).to_bits(),
            OptimizeDtype::BF16 => bf16::from_f32(x).to_bits(),
        };
        out.extend_from_slice(&bits.to_le_bytes());
    }
}

#[cfg(test)]
mod tests;
