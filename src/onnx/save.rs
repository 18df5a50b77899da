//! Writing a model: streamed to a temporary file beside the target and renamed into place, so a
//! reader never sees half a model and a failed write leaves nothing behind. Encoding is
//! deterministic, so the same model gives the same bytes.

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
                w.write_all(p)?;
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

/// Files written under temporary names beside their targets, not yet in place: `commit`
/// renames them over their targets, in the order written (a model's external data before the
/// model); dropping them uncommitted deletes them, so a reader never sees half a model.
#[must_use = "a staged file is deleted unless committed"]
pub struct Staged {
    /// (temporary, target)
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    fn append(&mut self, mut later: Staged) {
        self.files.append(&mut later.files);
    }

    pub fn commit(mut self) -> Result<()> {
        while let Some((tmp, path)) = self.files.first() {
            fs::rename(tmp, path).with_context(|| {
                format!(
                    "cannot move {} into place as {}",
                    tmp.display(),
                    path.display()
                )
            })?;
            self.files.remove(0);
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = fs::remove_file(tmp);
        }
    }
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
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
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
    // From here on, dropping `staged` (on any error) deletes the temporary file.
    let staged = Staged {
        files: vec![(tmp, path.to_path_buf())],
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
