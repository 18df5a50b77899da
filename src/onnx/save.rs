//! Writing a model: streamed to a temporary file beside the target and renamed into place, so a
//! reader never sees half a model and a failed write leaves nothing behind. Encoding is
//! deterministic, so the same model gives the same bytes.
//!
//! Where the file system allows it (Linux, `O_TMPFILE`), the temporary file has no name until
//! it is complete: a process killed while writing (out of memory, SIGKILL, a file size limit)
//! leaves nothing at all, and only the instant between naming it and renaming it over the
//! target could leave a temporary name behind. Elsewhere it is a dot-file beside the target,
//! deleted on every error the process lives through.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use bytes::buf::UninitSlice;
use bytes::{Buf, BufMut, Bytes};
use prost::Message;

use super::external::for_each_tensor;
use super::proto::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto};

/// Protobuf cannot encode a message of 2 GiB or more; leave headroom for the envelope.
const PROTOBUF_LIMIT: usize = (i32::MAX as usize) - (64 << 20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExternalData {
    /// Inline everything unless the model cannot be encoded in one protobuf.
    #[default]
    Auto,
    /// Move every tensor of at least `threshold` bytes to `<model>.data`.
    Always,
}

#[derive(Clone, Copy, Debug)]
pub struct SaveOptions {
    pub external: ExternalData,
    /// Smallest tensor, in bytes, that goes to the external file.
    pub threshold: usize,
}

/// Bytes of external data written between handing pages of the input back.
const WRITE_CHUNK: usize = 16 << 20;

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions {
            external: ExternalData::Auto,
            threshold: 1024,
        }
    }
}

/// Writes `model` beside `path`, to be put in place atomically by `commit`. Tensors are expected
/// inline (loading resolves external data); which of them go out to `<file name>.data` is
/// decided here.
pub fn stage_model(mut model: ModelProto, path: &Path, opts: SaveOptions) -> Result<Staged> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let external = match opts.external {
        ExternalData::Always => true,
        ExternalData::Auto => model.encoded_len() >= PROTOBUF_LIMIT,
    };
    let mut staged = Staged { files: Vec::new() };
    if external {
        let data_name = format!("{file_name}.data");
        let data_path = dir.join(&data_name);
        let mut payloads: Vec<Bytes> = Vec::new();
        let mut offset = 0u64;
        for_each_tensor(&mut model, &mut |t| {
            if t.raw_data.len() < opts.threshold.max(1) {
                return Ok(());
            }
            // Aligned offsets let a reader map tensors directly.
            let start = offset.next_multiple_of(64);
            let len = t.raw_data.len() as u64;
            payloads.push(Bytes::from(vec![0u8; (start - offset) as usize]));
            payloads.push(std::mem::take(&mut t.raw_data));
            offset = start + len;
            t.data_location = DataLocation::External as i32;
            t.external_data = vec![
                entry("location", &data_name),
                entry("offset", &start.to_string()),
                entry("length", &len.to_string()),
            ];
            Ok(())
        })?;
        if model.encoded_len() >= PROTOBUF_LIMIT {
            bail!(
                "{}: even with tensors moved to external data the graph needs more than 2 GiB",
                path.display()
            );
        }
        staged.append(stage(&data_path, |w| {
            for p in &payloads {
                // A payload mapped from the input is read once here, so its pages go back as
                // soon as they are written: else writing a model keeps all of it resident, as
                // much memory as the file is large, and a single large tensor alone as much as
                // it is large.
                for at in (0..p.len()).step_by(WRITE_CHUNK) {
                    let chunk = p.slice(at..(at + WRITE_CHUNK).min(p.len()));
                    w.write_all(&chunk)?;
                    super::mapping::forget_resident(&chunk);
                }
            }
            Ok(())
        })?);
    }
    staged.append(stage(path, |w| {
        let mut stream = StreamBuf::new(w);
        model
            .encode(&mut stream)
            .context("protobuf encoding failed")?;
        stream.finish()
    })?);
    Ok(staged)
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: key.to_string(),
        value: value.to_string(),
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file written beside its target, not yet in place.
enum Pending {
    /// Unnamed until commit (`O_TMPFILE`): the open file it is.
    Unnamed { file: File, dir: PathBuf },
    /// A temporary name beside the target.
    Named(PathBuf),
}

/// Files written beside their targets, not yet in place: `commit` moves them over their
/// targets, in the order written (a model's external data before the model); dropping them
/// uncommitted deletes them, so a reader never sees half a model.
#[must_use = "a staged file is deleted unless committed"]
pub struct Staged {
    /// (the written file, target)
    files: Vec<(Pending, PathBuf)>,
}

/// A fresh temporary name in `dir` for a file that will become `target`.
fn temp_name(dir: &Path, target: &Path) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Staged {
    fn append(&mut self, mut later: Staged) {
        self.files.append(&mut later.files);
    }

    pub fn commit(mut self) -> Result<()> {
        while !self.files.is_empty() {
            let (pending, path) = self.files.remove(0);
            let tmp = match pending {
                Pending::Named(tmp) => tmp,
                Pending::Unnamed { file, dir } => {
                    let tmp = temp_name(&dir, &path);
                    name_unnamed(&file, &tmp)
                        .with_context(|| format!("cannot put {} in place", path.display()))?;
                    tmp
                }
            };
            if let Err(e) = fs::rename(&tmp, &path) {
                let _ = fs::remove_file(&tmp);
                return Err(e).with_context(|| {
                    format!(
                        "cannot move {} into place as {}",
                        tmp.display(),
                        path.display()
                    )
                });
            }
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (pending, _) in &self.files {
            if let Pending::Named(tmp) = pending {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

/// Gives an unnamed file the name `tmp`.
#[cfg(target_os = "linux")]
fn name_unnamed(file: &File, tmp: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;
    let from = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to = CString::new(tmp.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn name_unnamed(_: &File, _: &Path) -> io::Result<()> {
    unreachable!("unnamed files are made on Linux only")
}

/// An unnamed file in `dir`, where the system makes one, to be named at commit.
#[cfg(target_os = "linux")]
fn unnamed_in(dir: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .write(true)
        .mode(0o666)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .ok()?;
    // Naming must work too (it needs /proc): find out now, not after the whole write.
    std::path::Path::new("/proc/self/fd")
        .is_dir()
        .then_some(file)
}

#[cfg(not(target_os = "linux"))]
fn unnamed_in(_: &Path) -> Option<File> {
    None
}

/// Runs `write` against a temporary file in `path`'s directory, then renames it over `path`.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    stage(path, write)?.commit()
}

/// Runs `write` against a temporary file in `path`'s directory, staged to replace `path`.
fn stage(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<Staged> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (file, pending) = match unnamed_in(&dir) {
        Some(file) => {
            let handle = file.try_clone()?;
            (handle, Pending::Unnamed { file, dir })
        }
        None => {
            let tmp = temp_name(&dir, path);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .with_context(|| {
                    format!(
                        "cannot write {}: cannot create {}",
                        path.display(),
                        tmp.display()
                    )
                })?;
            (file, Pending::Named(tmp))
        }
    };
    // From here on, dropping `staged` (on any error) deletes the temporary file.
    let staged = Staged {
        files: vec![(pending, path.to_path_buf())],
    };
    let mut w = BufWriter::with_capacity(1 << 20, file);
    write(&mut w)
        .and_then(|()| Ok(w.flush()?))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(staged)
}

/// A `BufMut` that streams to a writer, so encoding a model never holds a second copy of it.
/// Large byte fields (tensor payloads) go straight to the writer.
struct StreamBuf<'a, W: Write> {
    buf: Vec<u8>,
    out: &'a mut W,
    err: Option<io::Error>,
}

impl<'a, W: Write> StreamBuf<'a, W> {
    const CAPACITY: usize = 64 << 10;

    fn new(out: &'a mut W) -> Self {
        StreamBuf {
            buf: Vec::with_capacity(Self::CAPACITY),
            out,
            err: None,
        }
    }

    fn flush_buf(&mut self) {
        if self.err.is_none() && !self.buf.is_empty() {
            if let Err(e) = self.out.write_all(&self.buf) {
                self.err = Some(e);
            }
        }
        self.buf.clear();
    }

    fn finish(mut self) -> Result<()> {
        self.flush_buf();
        match self.err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

unsafe impl<W: Write> BufMut for StreamBuf<'_, W> {
    fn remaining_mut(&self) -> usize {
        isize::MAX as usize
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        assert!(len <= self.buf.capacity());
        // SAFETY: the caller initialised `cnt` bytes of the chunk handed out by `chunk_mut`.
        unsafe { self.buf.set_len(len) };
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush_buf();
        }
        UninitSlice::uninit(self.buf.spare_capacity_mut())
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= Self::CAPACITY / 2 {
            self.flush_buf();
            if self.err.is_none() {
                if let Err(e) = self.out.write_all(src) {
                    self.err = Some(e);
                }
            }
        } else {
            if self.buf.capacity() - self.buf.len() < src.len() {
                self.flush_buf();
            }
            self.buf.extend_from_slice(src);
        }
    }

    fn put<T: Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        while src.has_remaining() {
            let n = src.chunk().len();
            self.put_slice(src.chunk());
            src.advance(n);
        }
    }
}
