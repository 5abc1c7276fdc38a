//! Files: `.npy` tensors in and out, and atomic writes (temp file + rename).

use crate::error::{CliError, CliResult};
use ndarray::{ArrayD, ArrayViewD};
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes a file atomically: `write` fills a temp file in the same folder, which is then
/// renamed over `path`, so a reader never sees a half-written file and a failure leaves the
/// old file (if any) untouched. Refuses to write over `protect` paths (the command's inputs).
pub fn write_atomic(
    path: &Path,
    protect: &[&Path],
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> CliResult {
    for p in protect {
        if same_file(path, p) {
            return Err(CliError::file(
                path,
                "refusing to overwrite an input file (choose another output path)",
            ));
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".convkit-")
        .tempfile_in(dir)
        .map_err(|e| {
            CliError::file(
                path,
                format!("cannot create a file in {}: {e}", dir.display()),
            )
        })?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        write(&mut w).map_err(|e| CliError::file(path, e))?;
        w.flush().map_err(|e| CliError::file(path, e))?;
    }
    tmp.persist(path)
        .map_err(|e| CliError::file(path, e.error))?;
    Ok(())
}

/// Whether two paths name the same existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Reads an `.npy` file of float32 (or float64, converted) little-endian data.
///
/// Any other dtype (integers, big-endian floats, float16, ...) is an error naming the dtype.
/// Fortran-order files are read correctly (NumPy writes them for transposed arrays).
pub fn read_npy(path: &Path) -> CliResult<ArrayD<f32>> {
    let bytes = std::fs::read(path).map_err(|e| CliError::file(path, e))?;
    if let Some(d) = npy_descr(&bytes) {
        if d != "<f4" && d != "<f8" {
            return Err(CliError::file(
                path,
                format!(
                    "unsupported dtype '{d}' (need little-endian float32 '<f4' or float64 '<f8'; \
                     convert with arr.astype('<f4'))"
                ),
            ));
        }
    }
    match ArrayD::<f32>::read_npy(&bytes[..]) {
        Ok(a) => return Ok(a),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(npy_error(path, e)),
    }
    match ArrayD::<f64>::read_npy(&bytes[..]) {
        Ok(a) => Ok(a.mapv(|v| v as f32)),
        Err(ReadNpyError::WrongDescriptor(d)) => Err(CliError::file(
            path,
            format!("unsupported dtype {d} (need little-endian float32 or float64)"),
        )),
        Err(e) => Err(npy_error(path, e)),
    }
}

/// The `descr` string of an `.npy` header (e.g. `<f4`), if the header can be read.
fn npy_descr(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return None;
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return None,
    };
    let header = std::str::from_utf8(bytes.get(start..start.checked_add(len)?)?).ok()?;
    let rest = &header[header.find("'descr'")? + "'descr'".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let quote = rest.chars().next()?;
    if quote != '\'' && quote != '"' {
        return None;
    }
    let body = &rest[1..];
    Some(body[..body.find(quote)?].to_string())
}

fn npy_error(path: &Path, e: ReadNpyError) -> CliError {
    match e {
        ReadNpyError::Io(e) => CliError::file(path, e),
        e => CliError::file(path, format!("not a readable .npy file: {e}")),
    }
}

/// Writes a float32 `.npy` file atomically.
pub fn write_npy(path: &Path, a: ArrayViewD<f32>, protect: &[&Path]) -> CliResult {
    write_atomic(path, protect, |w| {
        a.write_npy(w).map_err(std::io::Error::other)
    })
}
