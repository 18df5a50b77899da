//! The ONNX file format: generated protobuf types, loading (memory-mapped, external data
//! resolved without copying) and saving (atomic, streamed, external data when asked or needed).

mod external;
mod load;
mod mapping;
mod save;

#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use load::{decode_model, load_model};
pub use mapping::forget_resident;
pub use save::{stage_model, write_atomic, ExternalData, SaveOptions, Staged};
