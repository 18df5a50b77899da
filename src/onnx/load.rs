//! Reading a model: the file is memory-mapped and decoded in place, so tensor payloads are
//! slices of the mapping (`Bytes`), not heap copies. External data is resolved the same way.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use prost::Message;

use super::external::for_each_tensor;
use super::mapping::{map_file, map_opened};
use super::proto::{tensor_proto::DataLocation, ModelProto, TensorProto};

/// Loads `path`, resolving external data relative to its directory. Also returns the
/// external-data files read.
pub fn load_model(path: &Path) -> Result<(ModelProto, Vec<PathBuf>)> {
    let bytes = map_file(path)?;
    let mut model = decode_model(bytes, &path.display().to_string())?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // A model file that is a link (a Hugging Face cache's snapshot entry, pointing into its
    // blobs) keeps its data beside the file it leads to: that directory is allowed too.
    let real_dir = path
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let files = resolve_external_data(&mut model, dir, real_dir.as_deref())
        .with_context(|| format!("{}: cannot resolve external data", path.display()))?;
    Ok((model, files))
}

/// Decodes a model held in memory. `what` names it in errors.
pub fn decode_model(bytes: Bytes, what: &str) -> Result<ModelProto> {
    if bytes.is_empty() {
        bail!("{what}: the file is empty, not an ONNX model");
    }
    let len = bytes.len();
    let model = ModelProto::decode(bytes).map_err(|e| {
        anyhow!(
            "{what}: not a valid ONNX protobuf ({len} bytes; truncated, corrupt or not ONNX): {e}"
        )
    })?;
    if model.graph.is_none() {
        bail!("{what}: decodes as protobuf but is not an ONNX model: it has no graph");
    }
    if model.ir_version <= 0 {
        bail!(
            "{what}: decodes as protobuf but is not an ONNX model: ir_version is {}",
            model.ir_version
        );
    }
    Ok(model)
}

/// Replaces every external-data reference in `model` by the bytes it names, read from files in
/// `dir` (the model's directory). Returns the files read, as `dir` joined with each location.
///
/// A location is a path relative to `dir` that must resolve, symbolic links followed, to a
/// regular file inside `dir` (or inside `real_dir`, the directory the model file itself
/// resolves to, when it is a link): a model is untrusted input, and a link in a downloaded
/// archive (tar keeps them) could otherwise make us copy any file on the machine into the
/// output. A link that stays inside is followed, since it reads nothing the model could not
/// name directly; the model file's own directory is as trusted as the file the user named. A file with several hard links is read too: a hard link is the file itself, not a
/// path looked up when read, and Linux (`protected_hardlinks`, on by default) lets one be made
/// only to a file its maker owns or may read and write.
pub fn resolve_external_data(
    model: &mut ModelProto,
    dir: &Path,
    real_dir: Option<&Path>,
) -> Result<Vec<PathBuf>> {
    let mut files = ExternalFiles {
        dir,
        canonical_dir: None,
        real_dir,
        files: HashMap::new(),
    };
    for_each_tensor(model, &mut |t| resolve_tensor(t, &mut files))?;
    let mut paths: Vec<PathBuf> = files.files.keys().map(|k| dir.join(k)).collect();
    paths.sort();
    Ok(paths)
}

/// The external-data files of one model, each checked and mapped once.
struct ExternalFiles<'a> {
    dir: &'a Path,
    /// `dir` with every symbolic link resolved, found on first use: each location must resolve
    /// to a path under it.
    canonical_dir: Option<PathBuf>,
    /// The directory the model file resolves to, when it is a link.
    real_dir: Option<&'a Path>,
    /// location → its bytes
    files: HashMap<String, Bytes>,
}

impl ExternalFiles<'_> {
    /// The bytes of the file `location` names, for tensor `name`.
    fn read(&mut self, name: &str, location: &str) -> Result<Bytes> {
        if let Some(data) = self.files.get(location) {
            return Ok(data.clone());
        }
        let rel = Path::new(location);
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            bail!(
                "tensor '{name}': external-data location '{location}' must be a relative path inside the model's directory"
            );
        }
        let canonical_dir = match &self.canonical_dir {
            Some(d) => d.clone(),
            None => {
                let d = self.dir.canonicalize().with_context(|| {
                    format!(
                        "cannot resolve the model's directory {}",
                        self.dir.display()
                    )
                })?;
                self.canonical_dir.insert(d).clone()
            }
        };
        let unreadable =
            || format!("tensor '{name}': external-data file '{location}' is missing or unreadable");
        let path = self.dir.join(rel).canonicalize().with_context(unreadable)?;
        let inside =
            path.starts_with(&canonical_dir) || self.real_dir.is_some_and(|r| path.starts_with(r));
        if !inside {
            bail!(
                "tensor '{name}': external-data location '{location}' resolves to {}, outside the model's directory {}: refused",
                path.display(),
                canonical_dir.display()
            );
        }
        let data = match map_regular_file(&path) {
            Ok(data) => data,
            Err(Opened::Refused(why)) => bail!(
                "tensor '{name}': external-data location '{location}' resolves to {}, {why}: refused",
                path.display()
            ),
            Err(Opened::Failed(e)) => return Err(e).with_context(unreadable),
        };
        self.files.insert(location.to_string(), data.clone());
        Ok(data)
    }
}

/// Why [`map_regular_file`] did not map a file.
enum Opened {
    /// It is no regular file, or not the one looked at: why ("a FIFO, not a regular file").
    Refused(String),
    Failed(anyhow::Error),
}

/// Maps `path`, which has no symbolic link left in it, if it is a regular file. A FIFO, device,
/// socket or directory is never mapped, nor even opened where that can be avoided: opening a
/// FIFO waits for a writer, and opening a device can act on it.
fn map_regular_file(path: &Path) -> std::result::Result<Bytes, Opened> {
    let before = std::fs::symlink_metadata(path).map_err(|e| cannot_open(path, e))?;
    if !before.is_file() {
        return Err(not_regular(before.file_type()));
    }
    let file = open_checked(path, &before)?;
    map_opened(&file, path).map_err(Opened::Failed)
}

/// Opens `path`, which was the regular file `before` describes when looked at. It may have
/// changed since, so the open follows no final link and does not wait on a FIFO, and the
/// checks that count are made on the opened file itself.
fn open_checked(
    path: &Path,
    before: &std::fs::Metadata,
) -> std::result::Result<std::fs::File, Opened> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| cannot_open(path, e))?;
    let opened = file.metadata().map_err(|e| cannot_open(path, e))?;
    if !opened.is_file() {
        return Err(not_regular(opened.file_type()));
    }
    if !same_file(before, &opened) {
        return Err(Opened::Refused(
            "a file replaced while it was being opened".into(),
        ));
    }
    Ok(file)
}

fn cannot_open(path: &Path, e: std::io::Error) -> Opened {
    Opened::Failed(anyhow::Error::new(e).context(format!("cannot open {}", path.display())))
}

fn not_regular(t: std::fs::FileType) -> Opened {
    Opened::Refused(format!("{}, not a regular file", file_kind(t)))
}

fn file_kind(t: std::fs::FileType) -> &'static str {
    if t.is_dir() {
        return "a directory";
    }
    if t.is_symlink() {
        return "a symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
    }
    "a special file"
}

/// Whether two looks at a path saw the same file.
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        a.dev() == b.dev() && a.ino() == b.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        true
    }
}

fn resolve_tensor(t: &mut TensorProto, files: &mut ExternalFiles) -> Result<()> {
    if t.data_location != DataLocation::External as i32 {
        return Ok(());
    }
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let name = &t.name;
    let location = entry("location")
        .ok_or_else(|| anyhow!("tensor '{name}' is stored externally but names no location"))?
        .to_string();
    let number = |key: &str| -> Result<Option<u64>> {
        entry(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    anyhow!("tensor '{name}': external-data {key} '{v}' is not a number")
                })
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let length = number("length")?;
    let data = files.read(name, &location)?;
    let size = data.len() as u64;
    let length = length.unwrap_or(size.saturating_sub(offset));
    let end = offset.checked_add(length).filter(|&end| end <= size).ok_or_else(|| {
        anyhow!(
            "tensor '{name}': external data '{location}' offset {offset} length {length} is out of range (the file is {size} bytes)"
        )
    })?;
    if let Some(expected) = super::dense_bytes(t.data_type, &t.dims) {
        if expected != length {
            bail!(
                "tensor '{name}': external data '{location}' holds {length} bytes but {} {:?} needs {expected}",
                super::element_name(t.data_type),
                t.dims
            );
        }
    }
    t.raw_data = data.slice(offset as usize..end as usize);
    t.data_location = DataLocation::Default as i32;
    t.external_data.clear();
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn refusal(r: std::result::Result<impl Sized, Opened>) -> String {
        match r {
            Err(Opened::Refused(why)) => why,
            Err(Opened::Failed(e)) => panic!("failed instead of refusing: {e:#}"),
            Ok(_) => panic!("opened"),
        }
    }

    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// A model's directory cannot hold a device in a test (making one needs root), so the check
    /// that would refuse it there is tried on one directly.
    #[test]
    fn a_device_is_never_mapped() {
        let why = refusal(map_regular_file(Path::new("/dev/zero")));
        assert_eq!(why, "a character device, not a regular file");
    }

    /// A regular file when looked at, a FIFO when opened: the open must not wait for a
    /// writer, and the opened file is refused.
    #[test]
    fn a_fifo_swapped_in_after_the_look_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let (file, fifo) = (dir.path().join("w.bin"), dir.path().join("pipe"));
        std::fs::write(&file, [0u8; 8]).unwrap();
        mkfifo(&fifo);
        let before = std::fs::symlink_metadata(&file).unwrap();
        let why = refusal(open_checked(&fifo, &before));
        assert_eq!(why, "a FIFO, not a regular file");
    }

    /// A link swapped in after the look is not followed, and another regular file swapped in
    /// is told apart from the one looked at.
    #[test]
    fn a_file_swapped_after_the_look_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, link) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("link"),
        );
        std::fs::write(&a, [1u8; 8]).unwrap();
        std::fs::write(&b, [2u8; 8]).unwrap();
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let before = std::fs::symlink_metadata(&a).unwrap();
        match open_checked(&link, &before) {
            Err(Opened::Failed(e)) => {
                let e = e.root_cause().downcast_ref::<std::io::Error>().unwrap();
                assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
            }
            _ => panic!("a final link was followed"),
        }
        let why = refusal(open_checked(&b, &before));
        assert_eq!(why, "a file replaced while it was being opened");
        assert!(open_checked(&a, &before).is_ok());
    }
}
