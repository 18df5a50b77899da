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

pub use external::for_each_tensor;
pub use load::{decode_model, load_model, resolve_external_data};
pub use mapping::forget_resident;
pub use save::{stage_model, write_atomic, ExternalData, SaveOptions, Staged};

/// Bits per element of `TensorProto.DataType` `data_type`, for types with a fixed size.
pub fn element_bits(data_type: i32) -> Option<u64> {
    Some(match data_type {
        9 | 2 | 3 | 17..=20 => 8,
        4 | 5 | 10 | 16 => 16,
        1 | 6 | 12 => 32,
        7 | 11 | 13 | 14 => 64,
        15 => 128,
        21..=23 => 4,
        _ => return None,
    })
}

/// Bytes a dense tensor of `data_type` and `dims` occupies in `raw_data`.
pub fn dense_bytes(data_type: i32, dims: &[i64]) -> Option<u64> {
    let bits = element_bits(data_type)?;
    let mut n: u64 = 1;
    for &d in dims {
        n = n.checked_mul(u64::try_from(d).ok()?)?;
    }
    Some(n.checked_mul(bits)?.div_ceil(8))
}

/// The short name of `TensorProto.DataType` `data_type` (f32, i64, ...), as messages and
/// printouts show it.
pub fn element_name(data_type: i32) -> String {
    let s = match data_type {
        0 => "undef",
        1 => "f32",
        2 => "u8",
        3 => "i8",
        4 => "u16",
        5 => "i16",
        6 => "i32",
        7 => "i64",
        8 => "str",
        9 => "bool",
        10 => "f16",
        11 => "f64",
        12 => "u32",
        13 => "u64",
        14 => "c64",
        15 => "c128",
        16 => "bf16",
        17 => "f8e4m3fn",
        18 => "f8e4m3fnuz",
        19 => "f8e5m2",
        20 => "f8e5m2fnuz",
        21 => "u4",
        22 => "i4",
        23 => "f4e2m1",
        n => return format!("dtype{n}"),
    };
    s.to_string()
}
