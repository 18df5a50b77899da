//! A model directory laid out the way a hostile archive could leave it, for the external-data
//! tests and the `load` fuzz target (which includes this file by path, so it uses std and libc
//! only). Unix only: it makes symbolic links and a FIFO.
//!
//! ```text
//! ROOT/secret.bin          outside the model's directory: must never be read
//! ROOT/model/w.bin         a regular file
//! ROOT/model/sub/w.bin     a regular file in a subdirectory
//! ROOT/model/alias.bin  -> w.bin          a link that stays inside
//! ROOT/model/d          -> sub            a directory link that stays inside
//! ROOT/model/outside.bin -> ROOT/secret.bin   a link that leads outside (absolute)
//! ROOT/model/up         -> ..             a directory link that leads outside (relative)
//! ROOT/model/hop.bin    -> outside.bin    a link inside that leads to one going outside
//! ROOT/model/zero       -> /dev/zero      a link to a device
//! ROOT/model/pipe                         a FIFO nothing writes to
//! ```

use std::path::{Path, PathBuf};

/// Size of each data file, in bytes.
pub const DATA_BYTES: usize = 4096;

/// What `secret.bin` holds: a model that reads it has escaped its directory.
pub const SECRET: &[u8] = b"SECRET! do not copy me into a model";

/// Fills `root` as described above; returns ROOT/model.
pub fn make(root: &Path) -> PathBuf {
    use std::os::unix::fs::symlink;
    let model = root.join("model");
    std::fs::create_dir_all(model.join("sub")).unwrap();
    std::fs::write(root.join("secret.bin"), SECRET).unwrap();
    let pattern = |seed: u8| -> Vec<u8> {
        (0..DATA_BYTES)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    std::fs::write(model.join("w.bin"), pattern(1)).unwrap();
    std::fs::write(model.join("sub/w.bin"), pattern(2)).unwrap();
    symlink("w.bin", model.join("alias.bin")).unwrap();
    symlink("sub", model.join("d")).unwrap();
    symlink(root.join("secret.bin"), model.join("outside.bin")).unwrap();
    symlink("..", model.join("up")).unwrap();
    symlink("outside.bin", model.join("hop.bin")).unwrap();
    symlink("/dev/zero", model.join("zero")).unwrap();
    mkfifo(&model.join("pipe"));
    model
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}
