//! Reading NumPy `.npy` and `.npz` files, for user-supplied inputs.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::ir::DType;
use crate::runtime::{HostTensor, InputSpec};

/// Parses one `.npy` payload.
pub fn parse_npy(bytes: &[u8], what: &str) -> Result<HostTensor> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{what}: not a .npy file");
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("{what}: unsupported .npy version {v}"),
    };
    let header = bytes
        .get(start..start + header_len)
        .with_context(|| format!("{what}: truncated header"))?;
    let header =
        std::str::from_utf8(header).with_context(|| format!("{what}: header is not text"))?;
    let field = |key: &str| -> Result<&str> {
        let at = header
            .find(&format!("'{key}'"))
            .with_context(|| format!("{what}: header has no '{key}'"))?;
        Ok(header[at + key.len() + 2..].trim_start_matches([':', ' ']))
    };
    if field("fortran_order")?.starts_with("True") {
        bail!("{what}: Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let descr = field("descr")?;
    let descr = descr
        .trim_start_matches('\'')
        .split('\'')
        .next()
        .unwrap_or_default();
    let dtype = match descr {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "<f2" => DType::F16,
        "<i8" => DType::I64,
        "<i4" => DType::I32,
        "<i2" => DType::I16,
        "|i1" => DType::I8,
        "|u1" => DType::U8,
        "<u2" => DType::U16,
        "<u4" => DType::U32,
        "<u8" => DType::U64,
        "|b1" => DType::BOOL,
        other => bail!("{what}: unsupported dtype '{other}' (little-endian numbers and bool only)"),
    };
    let shape_text = field("shape")?;
    let inner = shape_text
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or_default();
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what}: bad shape '{inner}'"))?;
    HostTensor::from_le_bytes(dtype, &shape, &bytes[start + header_len..])
        .with_context(|| format!("{what}: data does not match its header"))
}

pub fn read_npy(path: &Path) -> Result<HostTensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_npy(&bytes, &path.display().to_string())
}

/// The arrays of an `.npz` archive, by name (without the `.npy` suffix).
pub fn read_npz(path: &Path) -> Result<Vec<(String, HostTensor)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{}: not an .npz archive", path.display()))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let name = entry.name()?.trim_end_matches(".npy").to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        out.push((
            name.clone(),
            parse_npy(&bytes, &format!("{}:{name}", path.display()))?,
        ));
    }
    Ok(out)
}

/// One value per model input, in input order, from one `.npy` file per input.
pub fn inputs_from_npy(paths: &[PathBuf], specs: &[InputSpec]) -> Result<Vec<HostTensor>> {
    if paths.len() != specs.len() {
        bail!(
            "the model has {} inputs ({}) but {} --inputs files were given",
            specs.len(),
            specs
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            paths.len()
        );
    }
    paths.iter().map(|p| read_npy(p)).collect()
}

/// One value per model input, in input order, from the arrays of an `.npz` named after them.
pub fn inputs_from_npz(path: &Path, specs: &[InputSpec]) -> Result<Vec<HostTensor>> {
    let mut arrays = read_npz(path)?;
    specs
        .iter()
        .map(|s| {
            let at = arrays
                .iter()
                .position(|(n, _)| n == &s.name)
                .with_context(|| format!("{} has no array named '{}'", path.display(), s.name))?;
            Ok(arrays.swap_remove(at).1)
        })
        .collect()
}
