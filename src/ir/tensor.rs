//! Element types, tensor types and constant tensors.
//!
//! A `Tensor` keeps the `TensorProto` it was read from, so every field survives a round trip;
//! its payload is `Bytes`, a slice of the memory-mapped file when it was read from one.

use std::fmt;

use bytes::Bytes;

use crate::onnx::proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, TensorProto, TensorShapeProto, TypeProto,
};

/// An ONNX element type (`TensorProto.DataType`). Kept as the raw number so types newer than
/// our schema pass through untouched.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct DType(pub i32);

impl DType {
    pub const UNDEFINED: DType = DType(0);
    pub const F32: DType = DType(1);
    pub const U8: DType = DType(2);
    pub const I8: DType = DType(3);
    pub const U16: DType = DType(4);
    pub const I16: DType = DType(5);
    pub const I32: DType = DType(6);
    pub const I64: DType = DType(7);
    pub const STRING: DType = DType(8);
    pub const BOOL: DType = DType(9);
    pub const F16: DType = DType(10);
    pub const F64: DType = DType(11);
    pub const U32: DType = DType(12);
    pub const U64: DType = DType(13);
    pub const C64: DType = DType(14);
    pub const C128: DType = DType(15);
    pub const BF16: DType = DType(16);

    /// Short name used by the printer and reports.
    pub fn short(self) -> String {
        crate::onnx::element_name(self.0)
    }

    /// Bits per element, for types with a fixed size.
    pub fn bits(self) -> Option<u64> {
        crate::onnx::element_bits(self.0)
    }

    /// Bytes a dense tensor of this type and shape occupies in `raw_data`.
    pub fn byte_size(self, dims: &[i64]) -> Option<u64> {
        crate::onnx::dense_bytes(self.0, dims)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

/// One dimension of a shape.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Dim {
    Known(i64),
    Sym(String),
    Unknown,
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// The declared type of a value. Tensor types are structured; anything we do not model
/// (sequences, maps, optionals, sparse tensors, denotations) rides along as its proto.
#[derive(Clone, PartialEq, Debug)]
pub enum Type {
    Tensor {
        dtype: DType,
        /// `None` when even the rank is unknown.
        shape: Option<Vec<Dim>>,
    },
    Other(TypeProto),
}

impl Type {
    pub fn tensor(dtype: DType, shape: Vec<Dim>) -> Type {
        Type::Tensor {
            dtype,
            shape: Some(shape),
        }
    }

    pub fn dtype(&self) -> Option<DType> {
        match self {
            Type::Tensor { dtype, .. } => Some(*dtype),
            Type::Other(_) => None,
        }
    }

    pub fn shape(&self) -> Option<&[Dim]> {
        match self {
            Type::Tensor { shape, .. } => shape.as_deref(),
            Type::Other(_) => None,
        }
    }

    /// Structured when converting back gives exactly the same proto; opaque otherwise.
    pub fn from_proto(tp: TypeProto) -> Type {
        if let (Some(type_proto::Value::TensorType(t)), true) =
            (&tp.value, tp.denotation.is_empty())
        {
            let shape = t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(dimension::Value::DimValue(n)) => Dim::Known(*n),
                        Some(dimension::Value::DimParam(p)) => Dim::Sym(p.clone()),
                        None => Dim::Unknown,
                    })
                    .collect()
            });
            let ty = Type::Tensor {
                dtype: DType(t.elem_type),
                shape,
            };
            if ty.to_proto() == tp {
                return ty;
            }
        }
        Type::Other(tp)
    }

    pub fn to_proto(&self) -> TypeProto {
        match self {
            Type::Other(tp) => tp.clone(),
            Type::Tensor { dtype, shape } => TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: dtype.0,
                    shape: shape.as_ref().map(|dims| TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| Dimension {
                                value: match d {
                                    Dim::Known(n) => Some(dimension::Value::DimValue(*n)),
                                    Dim::Sym(s) => Some(dimension::Value::DimParam(s.clone())),
                                    Dim::Unknown => None,
                                },
                                denotation: String::new(),
                            })
                            .collect(),
                    }),
                })),
                denotation: String::new(),
            },
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Tensor { dtype, shape } => {
                write!(f, "{dtype}")?;
                match shape {
                    Some(dims) => {
                        let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                        write!(f, "[{}]", dims.join(","))
                    }
                    None => f.write_str("[*]"),
                }
            }
            Type::Other(tp) => match &tp.value {
                Some(type_proto::Value::SequenceType(_)) => f.write_str("seq"),
                Some(type_proto::Value::MapType(_)) => f.write_str("map"),
                Some(type_proto::Value::OptionalType(_)) => f.write_str("optional"),
                Some(type_proto::Value::SparseTensorType(_)) => f.write_str("sparse"),
                Some(type_proto::Value::TensorType(t)) => {
                    write!(f, "{}(annotated)", DType(t.elem_type))
                }
                None => f.write_str("untyped"),
            },
        }
    }
}

/// A constant tensor (initializer or attribute value).
#[derive(Clone, PartialEq, Debug)]
pub struct Tensor {
    proto: TensorProto,
}

impl Tensor {
    pub fn from_proto(proto: TensorProto) -> Tensor {
        Tensor { proto }
    }

    /// A dense tensor from little-endian bytes.
    pub fn from_raw(dtype: DType, dims: Vec<i64>, data: Bytes) -> Tensor {
        Tensor {
            proto: TensorProto {
                dims,
                data_type: dtype.0,
                raw_data: data,
                ..Default::default()
            },
        }
    }

    pub fn from_f32(dims: Vec<i64>, values: &[f32]) -> Tensor {
        Tensor::from_raw(DType::F32, dims, le_bytes(values, |v| v.to_le_bytes()))
    }

    pub fn from_i64(dims: Vec<i64>, values: &[i64]) -> Tensor {
        Tensor::from_raw(DType::I64, dims, le_bytes(values, |v| v.to_le_bytes()))
    }

    /// Lets the payload's pages go when it lies in the mapped input file; it stays readable
    /// (see [`crate::onnx::forget_resident`]). For constants nothing reads any more.
    pub fn forget_resident(&self) {
        crate::onnx::forget_resident(&self.proto.raw_data);
    }

    pub fn proto(&self) -> &TensorProto {
        &self.proto
    }

    /// The proto under `name`, which is how it is written out.
    pub fn to_proto(&self, name: &str) -> TensorProto {
        let mut p = self.proto.clone();
        p.name = name.to_string();
        p
    }

    pub fn dtype(&self) -> DType {
        DType(self.proto.data_type)
    }

    pub fn dims(&self) -> &[i64] {
        &self.proto.dims
    }

    pub fn len(&self) -> u64 {
        self.proto.dims.iter().map(|&d| d.max(0) as u64).product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the payload as stored, in bytes.
    pub fn stored_bytes(&self) -> u64 {
        let p = &self.proto;
        p.raw_data.len() as u64
            + 4 * (p.float_data.len() + p.int32_data.len()) as u64
            + 8 * (p.int64_data.len() + p.double_data.len() + p.uint64_data.len()) as u64
            + p.string_data.iter().map(|s| s.len() as u64).sum::<u64>()
    }

    /// The payload as little-endian bytes in `raw_data` layout, when the type has a fixed size.
    pub fn raw_bytes(&self) -> Option<Bytes> {
        let p = &self.proto;
        if !p.raw_data.is_empty() {
            return Some(p.raw_data.clone());
        }
        let dtype = self.dtype();
        let bits = dtype.bits()?;
        let mut out: Vec<u8> = Vec::new();
        match dtype {
            DType::F32 => p
                .float_data
                .iter()
                .for_each(|v| out.extend(v.to_le_bytes())),
            DType::F64 => p
                .double_data
                .iter()
                .for_each(|v| out.extend(v.to_le_bytes())),
            DType::I64 => p
                .int64_data
                .iter()
                .for_each(|v| out.extend(v.to_le_bytes())),
            DType::U32 => p
                .uint64_data
                .iter()
                .for_each(|&v| out.extend((v as u32).to_le_bytes())),
            DType::U64 => p
                .uint64_data
                .iter()
                .for_each(|v| out.extend(v.to_le_bytes())),
            DType::C64 => p
                .float_data
                .iter()
                .for_each(|v| out.extend(v.to_le_bytes())),
            DType::C128 => p
                .double_data
                .iter()
                .for_each(|v| out.extend(v.to_le_bytes())),
            _ if bits == 4 => {
                // Two 4-bit elements per byte, low nibble first; int32_data holds one per entry.
                for pair in p.int32_data.chunks(2) {
                    let lo = (pair[0] & 0xf) as u8;
                    let hi = pair.get(1).map_or(0, |&v| (v & 0xf) as u8);
                    out.push(lo | (hi << 4));
                }
            }
            _ => {
                // Everything else narrower than 32 bits is stored one element per int32.
                let width = (bits / 8) as usize;
                p.int32_data
                    .iter()
                    .for_each(|v| out.extend(&v.to_le_bytes()[..width]));
            }
        }
        Some(Bytes::from(out))
    }

    /// The payload of an f32 tensor whose size agrees with its dims.
    pub fn f32_bytes(&self) -> Option<Bytes> {
        if self.dtype() != DType::F32 {
            return None;
        }
        let raw = self.raw_bytes()?;
        (Some(raw.len() as u64) == DType::F32.byte_size(self.dims())).then_some(raw)
    }

    /// Values as f32, for float tensors (used by the zoo, the printer and numeric checks).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        if self.dtype() != DType::F32 {
            return None;
        }
        let raw = self.raw_bytes()?;
        Some(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    /// Values as i64 for integer tensors (shapes, axes, indices).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let raw = self.raw_bytes()?;
        let v = match self.dtype() {
            DType::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            DType::I32 => raw
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            _ => return None,
        };
        Some(v)
    }

    /// A tensor of strings (`dims` empty for a scalar).
    pub fn from_strings(dims: Vec<i64>, strings: Vec<Vec<u8>>) -> Tensor {
        Tensor {
            proto: TensorProto {
                dims,
                data_type: DType::STRING.0,
                string_data: strings.into_iter().map(Bytes::from).collect(),
                ..Default::default()
            },
        }
    }

    /// Whether both hold the same elements: element type, dims and payload, however each is
    /// encoded (raw bytes or typed fields).
    pub fn same_content(&self, other: &Tensor) -> bool {
        self.dtype() == other.dtype()
            && self.dims() == other.dims()
            && match (self.raw_bytes(), other.raw_bytes()) {
                (Some(a), Some(b)) => a == b,
                (None, None) => self.proto.string_data == other.proto.string_data,
                _ => false,
            }
    }

    /// A short stable digest of the content (type, shape and payload), for printouts.
    pub fn digest(&self) -> u64 {
        let mut h = Fnv::new();
        h.write(&self.proto.data_type.to_le_bytes());
        for d in &self.proto.dims {
            h.write(&d.to_le_bytes());
        }
        match self.raw_bytes() {
            Some(raw) => h.write(&raw),
            None => {
                for s in &self.proto.string_data {
                    h.write(&(s.len() as u64).to_le_bytes());
                    h.write(s);
                }
            }
        }
        h.finish()
    }
}

/// Encodes `values` in one exactly sized buffer: collecting a `flat_map` grows by doubling,
/// which for a large weight briefly holds it twice.
fn le_bytes<T: Copy, const N: usize>(values: &[T], encode: impl Fn(T) -> [u8; N]) -> Bytes {
    let mut out = Vec::with_capacity(values.len() * N);
    for &v in values {
        out.extend_from_slice(&encode(v));
    }
    Bytes::from(out)
}

/// 64-bit FNV-1a: tiny, stable across platforms and releases, good enough for content digests.
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn new() -> Fnv {
        Fnv::default()
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}
