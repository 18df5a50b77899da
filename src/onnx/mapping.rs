//! Input files are memory-mapped and tensor payloads are slices of the mapping. A payload a
//! rewrite has replaced (a Conv weight once a BatchNormalization folded into it) would stay
//! resident beside its replacement until exit, so a pass that touches every weight would double
//! peak memory. [`forget_resident`] hands such pages back: the mapping is read-only and shared
//! with the file, so a later read faults the page in again from the file and nothing a reader
//! can observe changes.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use anyhow::{Context, Result};
use bytes::Bytes;
use memmap2::Mmap;

/// Every mapping made by [`map_file`] that is still alive, so [`forget_resident`] can tell a
/// payload in a mapping from one on the heap, whose pages must never be discarded.
static LIVE: Mutex<Vec<Weak<Mmap>>> = Mutex::new(Vec::new());

struct Shared(Arc<Mmap>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Maps a whole file. An empty file yields empty bytes (mapping zero bytes is an error on Linux).
pub fn map_file(path: &Path) -> Result<Bytes> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    map_opened(&file, path)
}

/// Maps the whole of `file`, already open; `path` names it in errors.
pub fn map_opened(file: &File, path: &Path) -> Result<Bytes> {
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the mapping is read-only. As with every tool that maps its input, a file truncated
    // by another process while we read it is outside what we can defend against.
    let map = Arc::new(
        unsafe { Mmap::map(file) }.with_context(|| format!("cannot map {}", path.display()))?,
    );
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    live.retain(|m| m.strong_count() > 0);
    live.push(Arc::downgrade(&map));
    Ok(Bytes::from_owner(Shared(map)))
}

/// Lets the kernel drop the resident pages of `data` when it lies in a file mapping; does
/// nothing for heap bytes. Only whole pages inside `data` are dropped, so neighbouring payloads
/// stay resident.
pub fn forget_resident(data: &Bytes) {
    #[cfg(unix)]
    {
        // The smallest page size in use. Where pages are larger, the range is rounded outwards
        // to whole pages and a neighbour's page may go too, which costs only a re-read.
        const PAGE: usize = 4096;
        let start = (data.as_ptr() as usize).next_multiple_of(PAGE);
        let end = (data.as_ptr() as usize + data.len()) / PAGE * PAGE;
        if end <= start {
            return;
        }
        let live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        for map in live.iter().filter_map(Weak::upgrade) {
            let base = map.as_ptr() as usize;
            if start >= base && end <= base + map.len() {
                // SAFETY: the range lies inside a live read-only shared file mapping; dropping
                // its pages only discards cached copies of the file, which a later read maps
                // again. The result is advisory: if the kernel refuses, the pages stay resident.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start - base,
                        end - start,
                    )
                };
                return;
            }
        }
    }
}
