//! Random valid ONNX graphs for differential testing, in the spirit of Csmith: every value's
//! element type and concrete shape are tracked while the graph is built, so each node is
//! valid by construction. Ops are chosen by weight, and about half the choices are the
//! patterns the passes look for (Conv→BN, per-channel Mul/Add, Pad→Conv, decomposed
//! LayerNorm and GELU, Shape-computed Reshape targets, identity ops, If with a constant
//! condition...), so rewrites fire often and meet the random ops around them.
//!
//! A graph input may have a symbolic batch dim. It is tracked as a dim of size 1 (the size the
//! check binds it to) flagged symbolic; an op that would be valid only for some batch sizes
//! (one that reduces, slices, splits or broadcasts that dim against a fixed size) is not
//! emitted on it.

use onnxsmith::onnx::proto::{
    attribute_proto::AttributeType,
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{attr_float, attr_int, attr_ints, f32_tensor};

const F32: i32 = 1;
const I64: i32 = 7;
const BOOL: i32 = 9;
const F64: i32 = 11;

/// Largest tensor a node may produce: keeps 1,000 graphs well under a minute.
const MAX_ELEMS: i64 = 4096;

#[derive(Clone, Debug)]
struct Val {
    name: String,
    ty: i32,
    shape: Vec<i64>,
    /// Which dims are the symbolic batch (of size 1 here).
    sym: Vec<bool>,
    /// Bounded away from zero and positive: safe under Sqrt and as a divisor.
    positive: bool,
}

impl Val {
    fn rank(&self) -> usize {
        self.shape.len()
    }
    fn any_sym(&self) -> bool {
        self.sym.iter().any(|&s| s)
    }
    fn f32(&self) -> bool {
        self.ty == F32
    }
}

enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(bool),
}

/// One graph being built: the main graph, or an If branch.
struct Gen {
    rng: ChaCha8Rng,
    opset: i64,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    vals: Vec<Val>,
    next: usize,
    /// Constants made so far (name, dtype, dims, bytes), to share or duplicate.
    consts: Vec<(String, i32, Vec<i64>, Vec<u8>)>,
}

type Op = fn(&mut Gen) -> bool;

/// Ops by weight. Patterns come first, random ops after.
const OPS: &[(u32, Op)] = &[
    (6, Gen::conv_bn),
    (5, Gen::conv_affine),
    (4, Gen::mul_conv),
    (4, Gen::pad_conv),
    (4, Gen::identity_op),
    (3, Gen::transpose_pair),
    (3, Gen::reshape_pair),
    (3, Gen::squeeze_pair),
    (4, Gen::shape_reshape),
    (4, Gen::layer_norm_decomposed),
    (4, Gen::gelu_decomposed),
    (4, Gen::matmul_add),
    (3, Gen::if_const),
    (3, Gen::duplicate),
    (6, Gen::conv),
    (3, Gen::conv_transpose),
    (3, Gen::batch_norm),
    (2, Gen::instance_norm),
    (2, Gen::layer_norm),
    (8, Gen::unary),
    (8, Gen::binary),
    (3, Gen::gemm),
    (3, Gen::matmul),
    (3, Gen::reshape),
    (3, Gen::transpose),
    (2, Gen::flatten),
    (2, Gen::unsqueeze),
    (2, Gen::squeeze),
    (2, Gen::expand),
    (3, Gen::slice),
    (2, Gen::gather),
    (3, Gen::concat),
    (2, Gen::split),
    (2, Gen::pad),
    (2, Gen::cast),
    (3, Gen::pool),
    (2, Gen::resize),
];

/// A random valid model for `seed`: 5 to 40 nodes, opset 17 mostly, some at 13 and 20.
pub fn graph(seed: u64) -> ModelProto {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let opset = match rng.random_range(0..10) {
        0 | 1 => 13,
        2 | 3 => 20,
        _ => 17,
    };
    let target = rng.random_range(5..=40);
    let mut g = Gen {
        rng,
        opset,
        nodes: Vec::new(),
        inits: Vec::new(),
        inputs: Vec::new(),
        vals: Vec::new(),
        next: 0,
        consts: Vec::new(),
    };
    let sym = g.rng.random_bool(0.3);
    let kind = g.rng.random_range(0..3);
    for _ in 0..g.rng.random_range(1..=2) {
        g.input(kind, sym);
    }
    let total: u32 = OPS.iter().map(|(w, _)| w).sum();
    let mut attempts = 0;
    while g.nodes.len() < target && attempts < 400 {
        attempts += 1;
        let mut pick = g.rng.random_range(0..total);
        let op = OPS
            .iter()
            .find(|(w, _)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap()
            .1;
        op(&mut g);
    }
    g.finish(seed)
}

fn onnx_type(ty: i32, shape: &[i64], sym: &[bool]) -> TypeProto {
    TypeProto {
        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
            elem_type: ty,
            shape: Some(TensorShapeProto {
                dim: shape
                    .iter()
                    .zip(sym)
                    .map(|(&d, &s)| Dimension {
                        value: Some(if s {
                            dimension::Value::DimParam("N".into())
                        } else {
                            dimension::Value::DimValue(d)
                        }),
                        denotation: String::new(),
                    })
                    .collect(),
            }),
        })),
        denotation: String::new(),
    }
}

fn value_info(v: &Val) -> ValueInfoProto {
    ValueInfoProto {
        name: v.name.clone(),
        r#type: Some(onnx_type(v.ty, &v.shape, &v.sym)),
        ..Default::default()
    }
}

fn attr_str(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: s.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn attr_graph(name: &str, g: GraphProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Graph as i32,
        g: Some(g),
        ..Default::default()
    }
}

/// The shape `a` and `b` broadcast to, where that holds for every batch size.
fn broadcast(a: &Val, b: &Val) -> Option<(Vec<i64>, Vec<bool>)> {
    let r = a.rank().max(b.rank());
    let (mut shape, mut sym) = (vec![0; r], vec![false; r]);
    for i in 0..r {
        let get = |v: &Val| {
            (i + v.rank())
                .checked_sub(r)
                .map_or((1, false), |j| (v.shape[j], v.sym[j]))
        };
        let ((da, sa), (db, sb)) = (get(a), get(b));
        (shape[i], sym[i]) = match () {
            _ if (da, sa) == (db, sb) => (da, sa),
            _ if (da, sa) == (1, false) => (db, sb),
            _ if (db, sb) == (1, false) => (da, sa),
            _ => return None,
        };
    }
    Some((shape, sym))
}

fn numel(shape: &[i64]) -> i64 {
    shape.iter().product()
}

impl Gen {
    fn fresh(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn input(&mut self, kind: u32, sym: bool) {
        let r = &mut self.rng;
        let shape = match kind {
            0 => vec![
                1,
                r.random_range(1..=8),
                r.random_range(3..=10),
                r.random_range(3..=10),
            ],
            1 => vec![1, r.random_range(2..=8), r.random_range(2..=16)],
            _ => vec![r.random_range(1..=8), r.random_range(2..=16)],
        };
        let mut symv = vec![false; shape.len()];
        symv[0] = sym && shape[0] == 1;
        let v = Val {
            name: self.fresh("in"),
            ty: F32,
            shape,
            sym: symv,
            positive: false,
        };
        self.inputs.push(value_info(&v));
        self.vals.push(v);
    }

    /// A value satisfying `f`: the newest such most of the time, so chains grow deep, and
    /// otherwise any, so values are read several times.
    fn pick(&mut self, f: impl Fn(&Val) -> bool) -> Option<usize> {
        let c: Vec<usize> = (0..self.vals.len()).filter(|&i| f(&self.vals[i])).collect();
        if c.is_empty() {
            return None;
        }
        if self.rng.random_bool(0.6) {
            Some(*c.last().unwrap())
        } else {
            Some(c[self.rng.random_range(0..c.len())])
        }
    }

    fn v(&self, i: usize) -> Val {
        self.vals[i].clone()
    }

    fn normal(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1: f32 = self.rng.random::<f32>().max(1e-7);
                let u2: f32 = self.rng.random();
                (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos() * scale
            })
            .collect()
    }

    fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.random_range(lo..hi)).collect()
    }

    /// A constant: an initializer mostly, a Constant node sometimes; now and then the same
    /// initializer as an earlier one of equal content (shared) or a copy under a new name
    /// (for CSE to merge).
    fn constant(&mut self, dims: &[i64], data: Data) -> String {
        let (ty, raw): (i32, Vec<u8>) = match data {
            Data::F32(v) => (F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::I64(v) => (I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            Data::Bool(b) => (BOOL, vec![b as u8]),
        };
        if let Some((name, ..)) = self
            .consts
            .iter()
            .find(|(_, t, d, r)| *t == ty && d == dims && *r == raw)
        {
            if self.rng.random_bool(0.5) {
                return name.clone();
            }
        }
        let name = self.fresh("k");
        let t = TensorProto {
            name: name.clone(),
            data_type: ty,
            dims: dims.to_vec(),
            raw_data: raw.clone().into(),
            ..Default::default()
        };
        if self.rng.random_bool(0.2) {
            let mut n = self.node("Constant", &[], &[&name]);
            n.attribute.push(AttributeProto {
                name: "value".into(),
                r#type: AttributeType::Tensor as i32,
                t: Some(TensorProto {
                    name: String::new(),
                    ..t
                }),
                ..Default::default()
            });
            self.nodes.push(n);
        } else {
            self.inits.push(t);
        }
        self.consts.push((name.clone(), ty, dims.to_vec(), raw));
        name
    }

    fn f32_const(&mut self, dims: &[i64], v: Vec<f32>) -> String {
        self.constant(dims, Data::F32(v))
    }

    fn i64_const(&mut self, v: &[i64]) -> String {
        self.constant(&[v.len() as i64], Data::I64(v.to_vec()))
    }

    /// A random f32 constant of `dims` around zero, with `scale`.
    /// Sometimes an existing f32 constant of the same dims instead: weights shared by
    /// several nodes, which a fusion must copy rather than edit in place.
    fn weights(&mut self, dims: &[i64], scale: f32) -> String {
        let shared: Vec<String> = self
            .consts
            .iter()
            .filter(|(_, t, d, _)| *t == F32 && d == dims)
            .map(|(n, ..)| n.clone())
            .collect();
        if !shared.is_empty() && self.rng.random_bool(0.25) {
            return shared[self.rng.random_range(0..shared.len())].clone();
        }
        let v = self.normal(numel(dims) as usize, scale);
        self.f32_const(dims, v)
    }

    fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: self.fresh("n"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Emits `op` with one output of type `ty`, shape and symbolic dims; returns its index.
    fn emit(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        ty: i32,
        shape: Vec<i64>,
        sym: Vec<bool>,
    ) -> usize {
        let name = self.fresh("v");
        let mut n = self.node(op, inputs, &[&name]);
        n.attribute = attrs;
        self.nodes.push(n);
        self.vals.push(Val {
            name,
            ty,
            shape,
            sym,
            positive: false,
        });
        self.vals.len() - 1
    }

    /// Emits an op whose output has the type and shape of input `x`.
    fn same(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>, x: usize) -> usize {
        let v = self.v(x);
        self.emit(op, inputs, attrs, v.ty, v.shape, v.sym)
    }

    /// A binary op of `x` and `c`, in either operand order where `commutes`.
    fn bin(&mut self, op: &str, x: &str, c: &str, commutes: bool, of: usize) -> usize {
        let flip = commutes && self.rng.random_bool(0.5);
        let ins = if flip { [c, x] } else { [x, c] };
        self.same(op, &ins, vec![], of)
    }

    /// Dims a constant broadcast onto `v` may have: some dims kept, others 1, some leading
    /// ones dropped; never a symbolic dim.
    fn broadcast_dims(&mut self, v: &Val) -> Vec<i64> {
        let drop = self.rng.random_range(0..=v.rank());
        let mut dims: Vec<i64> = (drop..v.rank())
            .map(|i| {
                if v.sym[i] || self.rng.random_bool(0.4) {
                    1
                } else {
                    v.shape[i]
                }
            })
            .collect();
        if dims.is_empty() && self.rng.random_bool(0.5) {
            dims.push(1);
        }
        dims
    }

    /// A per-channel constant for a [N, C, ...] value: [1, C, 1, 1], [C, 1, 1], [1] or [].
    fn channel_dims(&mut self, rank: usize, c: i64) -> Vec<i64> {
        match self.rng.random_range(0..5) {
            0 => vec![],
            1 => vec![1],
            2 => std::iter::once(c).chain(vec![1; rank - 2]).collect(),
            _ => [1, c].into_iter().chain(vec![1; rank - 2]).collect(),
        }
    }

    fn conv_node(&mut self, x: usize, transpose: bool) -> Option<usize> {
        let v = self.v(x);
        let cin = v.shape[1];
        let r = &mut self.rng;
        let divisors: Vec<i64> = (1..=cin).filter(|d| cin % d == 0).collect();
        let group = match r.random_range(0..4) {
            0 => cin,
            1 => divisors[r.random_range(0..divisors.len())],
            _ => 1,
        };
        let cout = group * r.random_range(1..=4);
        let nsp = v.rank() - 2;
        let k: Vec<i64> = (0..nsp).map(|_| r.random_range(1..=3)).collect();
        let stride: Vec<i64> = (0..nsp).map(|_| r.random_range(1..=2)).collect();
        let dil: Vec<i64> = (0..nsp)
            .map(|_| if r.random_bool(0.2) { 2 } else { 1 })
            .collect();
        let pads: Vec<i64> = (0..2 * nsp).map(|_| r.random_range(0..=1)).collect();
        let out_pad: Vec<i64> = stride.iter().map(|&s| r.random_range(0..s)).collect();
        let mut out = vec![v.shape[0], cout];
        for i in 0..nsp {
            let (inp, pb, pe) = (v.shape[2 + i], pads[i], pads[nsp + i]);
            let ek = dil[i] * (k[i] - 1) + 1;
            out.push(if transpose {
                stride[i] * (inp - 1) + out_pad[i] + ek - pb - pe
            } else {
                (inp + pb + pe - ek).div_euclid(stride[i]) + 1
            });
        }
        if out[2..].iter().any(|&d| d < 1) || numel(&out) > MAX_ELEMS {
            return None;
        }
        let wdims: Vec<i64> = if transpose {
            [cin, cout / group].into_iter().chain(k.clone()).collect()
        } else {
            [cout, cin / group].into_iter().chain(k.clone()).collect()
        };
        let fan_in = (cin / group) * numel(&k);
        let w = self.weights(&wdims, 1.0 / (fan_in as f32).sqrt());
        let mut ins = vec![v.name.clone(), w];
        if self.rng.random_bool(0.5) {
            ins.push(self.weights(&[cout], 0.5));
        }
        let mut attrs = vec![
            attr_ints("strides", &stride),
            attr_ints("dilations", &dil),
            attr_ints("pads", &pads),
        ];
        if self.rng.random_bool(0.7) {
            attrs.push(attr_ints("kernel_shape", &k));
        }
        if group > 1 || self.rng.random_bool(0.3) {
            attrs.push(attr_int("group", group));
        }
        if transpose && out_pad.iter().any(|&p| p > 0) {
            attrs.push(attr_ints("output_padding", &out_pad));
        }
        let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        let op = if transpose { "ConvTranspose" } else { "Conv" };
        let sym = v.sym[..1].iter().copied().chain(vec![false; nsp + 1]);
        Some(self.emit(op, &ins, attrs, F32, out, sym.collect()))
    }

    fn conv(&mut self) -> bool {
        let Some(x) = self.pick_spatial() else {
            return false;
        };
        self.conv_node(x, false).is_some()
    }

    /// An f32 value of shape [N, C, spatial...] with one or two spatial axes.
    fn pick_spatial(&mut self) -> Option<usize> {
        self.pick(|v| v.f32() && (v.rank() == 3 || v.rank() == 4) && !v.sym[1..].iter().any(|&s| s))
    }

    fn conv_transpose(&mut self) -> bool {
        let Some(x) = self.pick_spatial() else {
            return false;
        };
        self.conv_node(x, true).is_some()
    }

    fn bn_on(&mut self, x: usize) -> usize {
        let v = self.v(x);
        let c = v.shape[1];
        let scale = self.uniform(c as usize, 0.5, 1.5);
        let scale = self.f32_const(&[c], scale);
        let b = self.weights(&[c], 0.5);
        let m = self.weights(&[c], 0.5);
        let var = self.uniform(c as usize, 0.5, 2.0);
        let var = self.f32_const(&[c], var);
        let mut attrs = vec![];
        if self.rng.random_bool(0.5) {
            attrs.push(attr_float("epsilon", self.rng.random_range(1e-5..1e-2)));
        }
        self.same(
            "BatchNormalization",
            &[&v.name, &scale, &b, &m, &var],
            attrs,
            x,
        )
    }

    fn conv_bn(&mut self) -> bool {
        let Some(x) = self.pick_spatial() else {
            return false;
        };
        let transpose = self.rng.random_bool(0.25);
        let Some(c) = self.conv_node(x, transpose) else {
            return false;
        };
        self.bn_on(c);
        true
    }

    fn batch_norm(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32() && v.rank() >= 2 && !v.sym[1]) else {
            return false;
        };
        self.bn_on(x);
        true
    }

    /// Conv then a Mul or Add by a constant: per channel mostly, otherwise any broadcastable
    /// shape (which the fusions must refuse).
    fn conv_affine(&mut self) -> bool {
        let Some(x) = self.pick_spatial() else {
            return false;
        };
        let transpose = self.rng.random_bool(0.25);
        let Some(mut c) = self.conv_node(x, transpose) else {
            return false;
        };
        for _ in 0..self.rng.random_range(1..=2) {
            let v = self.v(c);
            let dims = if self.rng.random_bool(0.8) {
                self.channel_dims(v.rank(), v.shape[1])
            } else {
                self.broadcast_dims(&v)
            };
            let k = self.weights(&dims, 1.0);
            let op = if self.rng.random_bool(0.5) {
                "Mul"
            } else {
                "Add"
            };
            c = self.bin(op, &v.name, &k, true, c);
        }
        true
    }

    fn mul_conv(&mut self) -> bool {
        let Some(x) = self.pick_spatial() else {
            return false;
        };
        let v = self.v(x);
        let dims = self.channel_dims(v.rank(), v.shape[1]);
        let n = numel(&dims) as usize;
        let div = self.rng.random_bool(0.3);
        let k = if div {
            let u = self.uniform(n, 0.5, 2.0);
            self.f32_const(&dims, u)
        } else {
            self.weights(&dims, 1.0)
        };
        let s = if div {
            self.same("Div", &[&v.name, &k], vec![], x)
        } else {
            self.bin("Mul", &v.name, &k, true, x)
        };
        let transpose = self.rng.random_bool(0.25);
        self.conv_node(s, transpose).is_some()
    }

    fn pad_node(&mut self, x: usize, pads: Vec<i64>, value: Option<f32>, mode: &str) -> usize {
        let v = self.v(x);
        let p = self.i64_const(&pads);
        let mut ins = vec![v.name.clone(), p];
        if let Some(value) = value {
            ins.push(self.f32_const(&[], vec![value]));
        }
        let attrs = if mode != "constant" || self.rng.random_bool(0.3) {
            vec![attr_str("mode", mode)]
        } else {
            vec![]
        };
        let r = v.rank();
        let shape = (0..r).map(|i| v.shape[i] + pads[i] + pads[r + i]).collect();
        let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        self.emit("Pad", &ins, attrs, F32, shape, v.sym)
    }

    /// Pad with zeros then Conv or AveragePool.
    fn pad_conv(&mut self) -> bool {
        let Some(x) = self.pick_spatial() else {
            return false;
        };
        let r = self.vals[x].rank();
        let mut pads = vec![0; 2 * r];
        for i in (2..r).chain(r + 2..2 * r) {
            pads[i] = self.rng.random_range(0..=2);
        }
        if self.rng.random_bool(0.1) {
            pads[1] = 1;
        }
        let value = self.rng.random_bool(0.5).then_some(0.0);
        let p = self.pad_node(x, pads, value, "constant");
        if self.rng.random_bool(0.7) {
            self.conv_node(p, false).is_some()
        } else {
            self.pool_on(p, "AveragePool")
        }
    }

    fn identity_op(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32() && v.rank() >= 1) else {
            return false;
        };
        let v = self.v(x);
        match self.rng.random_range(0..10) {
            0 => {
                let one = self.f32_const(&[], vec![1.0]);
                self.bin("Mul", &v.name, &one, true, x)
            }
            1 => {
                let zero = self.f32_const(&[1], vec![0.0]);
                self.bin("Add", &v.name, &zero, true, x)
            }
            2 => {
                let zero = self.f32_const(&[], vec![0.0]);
                self.same("Sub", &[&v.name, &zero], vec![], x)
            }
            3 => {
                let one = self.f32_const(&[1], vec![1.0]);
                self.same("Div", &[&v.name, &one], vec![], x)
            }
            4 => {
                let perm: Vec<i64> = (0..v.rank() as i64).collect();
                self.same("Transpose", &[&v.name], vec![attr_ints("perm", &perm)], x)
            }
            5 => {
                let axis = self.rng.random_range(0..v.rank() as i64);
                let s = self.i64_const(&[0]);
                let e = self.i64_const(&[i64::MAX]);
                let a = self.i64_const(&[axis]);
                self.same("Slice", &[&v.name, &s, &e, &a], vec![], x)
            }
            6 => self.same("Identity", &[&v.name], vec![], x),
            7 => self.same("Cast", &[&v.name], vec![attr_int("to", F32 as i64)], x),
            8 => {
                let pads = vec![0; 2 * v.rank()];
                self.pad_node(x, pads, None, "constant")
            }
            _ => self.same("Concat", &[&v.name], vec![attr_int("axis", 0)], x),
        };
        true
    }

    fn transpose_on(&mut self, x: usize) -> usize {
        let v = self.v(x);
        let mut perm: Vec<usize> = (0..v.rank()).collect();
        for i in (1..perm.len()).rev() {
            let j = self.rng.random_range(0..=i);
            perm.swap(i, j);
        }
        let shape = perm.iter().map(|&p| v.shape[p]).collect();
        let sym = perm.iter().map(|&p| v.sym[p]).collect();
        let perm: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
        self.emit(
            "Transpose",
            &[&v.name],
            vec![attr_ints("perm", &perm)],
            v.ty,
            shape,
            sym,
        )
    }

    fn transpose(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() >= 2) else {
            return false;
        };
        self.transpose_on(x);
        true
    }

    fn transpose_pair(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() >= 2) else {
            return false;
        };
        let t = self.transpose_on(x);
        if self.rng.random_bool(0.5) {
            // The inverse, which the merge makes an identity for eliminate-noop.
            let name = self.vals[t].name.clone();
            let perm = &self.nodes.last().unwrap().attribute[0].ints;
            let mut inv = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inv[p as usize] = i as i64;
            }
            let v = self.v(x);
            self.emit(
                "Transpose",
                &[&name],
                vec![attr_ints("perm", &inv)],
                v.ty,
                v.shape,
                v.sym,
            );
        } else {
            self.transpose_on(t);
        }
        true
    }

    /// A factorisation of `n` into `parts` factors.
    fn factors(&mut self, mut n: i64, parts: usize) -> Vec<i64> {
        let mut out = Vec::new();
        for _ in 1..parts {
            let ds: Vec<i64> = (1..=n).filter(|d| n % d == 0).collect();
            let d = ds[self.rng.random_range(0..ds.len())];
            out.push(d);
            n /= d;
        }
        out.push(n);
        out
    }

    /// Reshapes `x` to a random shape of the same size. A symbolic batch (only at axis 0)
    /// is kept with a 0, which copies it.
    fn reshape_on(&mut self, x: usize) -> Option<usize> {
        let v = self.v(x);
        if v.sym[1..].iter().any(|&s| s) || v.rank() == 0 {
            return None;
        }
        let lead = usize::from(v.sym[0]);
        let rest = numel(&v.shape[lead..]);
        let parts = self.rng.random_range(1..=3);
        let mut dims = self.factors(rest, parts);
        let mut target = dims.clone();
        if lead == 1 {
            dims.insert(0, 1);
            target.insert(0, 0);
        } else if self.rng.random_bool(0.2) && !dims.is_empty() && dims[0] == v.shape[0] {
            target[0] = 0;
        }
        if self.rng.random_bool(0.3) {
            let i = self.rng.random_range(lead..target.len());
            target[i] = -1;
        }
        let t = self.i64_const(&target);
        let mut sym = vec![false; dims.len()];
        sym[0] = lead == 1;
        Some(self.emit("Reshape", &[&v.name, &t], vec![], v.ty, dims, sym))
    }

    fn reshape(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() >= 1) else {
            return false;
        };
        self.reshape_on(x).is_some()
    }

    fn reshape_pair(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() >= 1) else {
            return false;
        };
        let first = match self.rng.random_range(0..3) {
            0 => self.flatten_on(x),
            1 => self.unsqueeze_on(x),
            _ => self.reshape_on(x),
        };
        first.and_then(|t| self.reshape_on(t)).is_some()
    }

    fn flatten_on(&mut self, x: usize) -> Option<usize> {
        let v = self.v(x);
        let axis = self.rng.random_range(0..=v.rank());
        let (l, r) = (&v.sym[..axis], &v.sym[axis..]);
        if (l.iter().any(|&s| s) && l.len() != 1) || (r.iter().any(|&s| s) && r.len() != 1) {
            return None;
        }
        let shape = vec![numel(&v.shape[..axis]), numel(&v.shape[axis..])];
        let sym = vec![l.iter().any(|&s| s), r.iter().any(|&s| s)];
        let a = attr_int("axis", axis as i64);
        Some(self.emit("Flatten", &[&v.name], vec![a], v.ty, shape, sym))
    }

    fn flatten(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() >= 1) else {
            return false;
        };
        self.flatten_on(x).is_some()
    }

    /// Unsqueeze at random axes (negative ones too).
    fn unsqueeze_on(&mut self, x: usize) -> Option<usize> {
        let v = self.v(x);
        let n = self.rng.random_range(1..=2);
        let out_rank = v.rank() + n;
        let mut axes: Vec<usize> = Vec::new();
        while axes.len() < n {
            let a = self.rng.random_range(0..out_rank);
            if !axes.contains(&a) {
                axes.push(a);
            }
        }
        // tract 0.23.9 panics on a Squeeze whose axes are not in ascending order (valid
        // ONNX), and squeeze_pair reuses these axes for its Squeeze.
        axes.sort();
        let (mut shape, mut sym) = (Vec::new(), Vec::new());
        let mut src = 0;
        for i in 0..out_rank {
            if axes.contains(&i) {
                shape.push(1);
                sym.push(false);
            } else {
                shape.push(v.shape[src]);
                sym.push(v.sym[src]);
                src += 1;
            }
        }
        let written: Vec<i64> = axes
            .iter()
            .map(|&a| {
                if self.rng.random_bool(0.3) {
                    a as i64 - out_rank as i64
                } else {
                    a as i64
                }
            })
            .collect();
        let a = self.i64_const(&written);
        Some(self.emit("Unsqueeze", &[&v.name, &a], vec![], v.ty, shape, sym))
    }

    fn unsqueeze(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() <= 4) else {
            return false;
        };
        self.unsqueeze_on(x).is_some()
    }

    fn squeeze_on(&mut self, x: usize) -> Option<usize> {
        let v = self.v(x);
        let ones: Vec<usize> = (0..v.rank())
            .filter(|&i| v.shape[i] == 1 && !v.sym[i])
            .collect();
        if ones.is_empty() {
            return None;
        }
        let axes: Vec<usize> = ones
            .iter()
            .copied()
            .filter(|_| self.rng.random_bool(0.6))
            .collect();
        let axes = if axes.is_empty() { vec![ones[0]] } else { axes };
        let keep: Vec<usize> = (0..v.rank()).filter(|i| !axes.contains(i)).collect();
        let shape = keep.iter().map(|&i| v.shape[i]).collect();
        let sym = keep.iter().map(|&i| v.sym[i]).collect();
        let written: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
        let a = self.i64_const(&written);
        Some(self.emit("Squeeze", &[&v.name, &a], vec![], v.ty, shape, sym))
    }

    fn squeeze(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.shape.iter().zip(&v.sym).any(|(&d, &s)| d == 1 && !s)) else {
            return false;
        };
        self.squeeze_on(x).is_some()
    }

    fn squeeze_pair(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() <= 4) else {
            return false;
        };
        match self.rng.random_range(0..3) {
            // Unsqueeze then Squeeze of the same axes: a no-op.
            0 => {
                let Some(u) = self.unsqueeze_on(x) else {
                    return false;
                };
                let axes = self.nodes.last().unwrap().input[1].clone();
                let (un, v) = (self.vals[u].name.clone(), self.v(x));
                self.emit("Squeeze", &[&un, &axes], vec![], v.ty, v.shape, v.sym);
            }
            1 => {
                let Some(u) = self.unsqueeze_on(x) else {
                    return false;
                };
                self.unsqueeze_on(u);
            }
            _ => {
                let Some(u) = self.unsqueeze_on(x) else {
                    return false;
                };
                self.squeeze_on(u);
            }
        }
        true
    }

    /// Reshape(x, Concat(Unsqueeze(Gather(Shape(x), i), 0)..., constants)): the target
    /// exports compute, which fold-reshape-target makes constant.
    fn shape_reshape(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() >= 2 && !v.sym[1..].iter().any(|&s| s)) else {
            return false;
        };
        let v = self.v(x);
        let r = v.rank() as i64;
        let keep = self.rng.random_range(1..r);
        let s = self.emit("Shape", &[&v.name], vec![], I64, vec![r], vec![false]);
        let sname = self.vals[s].name.clone();
        let mut parts = Vec::new();
        if self.rng.random_bool(0.3) {
            let st = self.i64_const(&[0]);
            let en = self.i64_const(&[keep]);
            let p = self.emit(
                "Slice",
                &[&sname, &st, &en],
                vec![],
                I64,
                vec![keep],
                vec![false],
            );
            parts.push(self.vals[p].name.clone());
        } else {
            for i in 0..keep {
                let idx = if self.rng.random_bool(0.2) { i - r } else { i };
                let iname = self.constant(&[], Data::I64(vec![idx]));
                let g = self.emit("Gather", &[&sname, &iname], vec![], I64, vec![], vec![]);
                let gname = self.vals[g].name.clone();
                let zero = self.i64_const(&[0]);
                let u = self.emit(
                    "Unsqueeze",
                    &[&gname, &zero],
                    vec![],
                    I64,
                    vec![1],
                    vec![false],
                );
                parts.push(self.vals[u].name.clone());
            }
        }
        let rest = numel(&v.shape[keep as usize..]);
        let tail = if self.rng.random_bool(0.5) {
            vec![-1]
        } else {
            let n = self.rng.random_range(1..=2);
            self.factors(rest, n)
        };
        parts.push(self.i64_const(&tail));
        let n = keep + tail.len() as i64;
        let parts: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
        let t = self.emit(
            "Concat",
            &parts,
            vec![attr_int("axis", 0)],
            I64,
            vec![n],
            vec![false],
        );
        let tname = self.vals[t].name.clone();
        let mut shape: Vec<i64> = v.shape[..keep as usize].to_vec();
        let mut sym: Vec<bool> = v.sym[..keep as usize].to_vec();
        if tail == [-1] {
            shape.push(rest);
        } else {
            shape.extend(&tail);
        }
        sym.resize(shape.len(), false);
        self.emit("Reshape", &[&v.name, &tname], vec![], v.ty, shape, sym);
        true
    }

    fn reduce_mean(&mut self, x: &str, of: &Val, axis: i64) -> usize {
        let mut shape = of.shape.clone();
        shape[of.rank() - 1] = 1;
        if self.opset >= 18 {
            let a = self.i64_const(&[axis]);
            self.emit("ReduceMean", &[x, &a], vec![], F32, shape, of.sym.clone())
        } else {
            let attrs = vec![attr_ints("axes", &[axis])];
            self.emit("ReduceMean", &[x], attrs, F32, shape, of.sym.clone())
        }
    }

    /// (x - mean) / sqrt(var + eps) [* g] [+ b] over the last axis, in various operand orders.
    fn layer_norm_decomposed(&mut self) -> bool {
        let Some(x) = self.pick(|v| {
            v.f32() && v.rank() >= 2 && !v.sym[v.rank() - 1] && v.shape[v.rank() - 1] >= 2
        }) else {
            return false;
        };
        let v = self.v(x);
        let axis = if self.rng.random_bool(0.7) {
            -1
        } else {
            v.rank() as i64 - 1
        };
        let m = self.reduce_mean(&v.name, &v, axis);
        let mname = self.vals[m].name.clone();
        let d = self.same("Sub", &[&v.name, &mname], vec![], x);
        let dname = self.vals[d].name.clone();
        let p = if self.rng.random_bool(0.85) {
            let two = self.f32_const(&[], vec![2.0]);
            self.same("Pow", &[&dname, &two], vec![], x)
        } else {
            self.same("Mul", &[&dname, &dname], vec![], x)
        };
        let pname = self.vals[p].name.clone();
        let var = self.reduce_mean(&pname, &v, axis);
        let varname = self.vals[var].name.clone();
        let eps = self.rng.random_range(1e-6..1e-3);
        let eps = self.f32_const(&[], vec![eps]);
        let e = self.bin("Add", &varname, &eps, true, m);
        let ename = self.vals[e].name.clone();
        let s = self.same("Sqrt", &[&ename], vec![], m);
        let sname = self.vals[s].name.clone();
        let mut y = self.same("Div", &[&dname, &sname], vec![], x);
        let dd = v.shape[v.rank() - 1];
        if self.rng.random_bool(0.7) {
            let g = if self.rng.random_bool(0.3) {
                self.f32_const(&[dd], vec![1.0; dd as usize])
            } else {
                self.weights(&[dd], 1.0)
            };
            let yname = self.vals[y].name.clone();
            y = self.bin("Mul", &yname, &g, true, x);
        }
        if self.rng.random_bool(0.7) {
            let b = if self.rng.random_bool(0.3) {
                self.f32_const(&[dd], vec![0.0; dd as usize])
            } else {
                self.weights(&[dd], 1.0)
            };
            let yname = self.vals[y].name.clone();
            self.bin("Add", &yname, &b, true, x);
        }
        true
    }

    /// x * 0.5 * (1 + erf(x / sqrt(2))) in the orders exports write it.
    fn gelu_decomposed(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32()) else {
            return false;
        };
        let v = self.v(x);
        let one_dims: &[i64] = if self.rng.random_bool(0.5) { &[] } else { &[1] };
        let d = if self.rng.random_bool(0.6) {
            let k = self.f32_const(one_dims, vec![std::f32::consts::SQRT_2]);
            self.same("Div", &[&v.name, &k], vec![], x)
        } else {
            let k = self.f32_const(one_dims, vec![std::f32::consts::FRAC_1_SQRT_2]);
            self.bin("Mul", &v.name, &k, true, x)
        };
        let dname = self.vals[d].name.clone();
        let e = self.same("Erf", &[&dname], vec![], x);
        let ename = self.vals[e].name.clone();
        let one = self.f32_const(one_dims, vec![1.0]);
        let a = self.bin("Add", &ename, &one, true, x);
        let aname = self.vals[a].name.clone();
        let half = self.f32_const(one_dims, vec![0.5]);
        match self.rng.random_range(0..3) {
            0 => {
                let m = self.bin("Mul", &v.name, &aname, true, x);
                let mname = self.vals[m].name.clone();
                self.bin("Mul", &mname, &half, true, x)
            }
            1 => {
                let m = self.bin("Mul", &v.name, &half, true, x);
                let mname = self.vals[m].name.clone();
                self.bin("Mul", &mname, &aname, true, x)
            }
            _ => {
                let m = self.bin("Mul", &aname, &half, true, x);
                let mname = self.vals[m].name.clone();
                self.bin("Mul", &v.name, &mname, true, x)
            }
        };
        true
    }

    fn matmul_const(&mut self, x: usize) -> Option<usize> {
        let v = self.v(x);
        let k = v.shape[v.rank() - 1];
        if v.sym[v.rank() - 1] {
            return None;
        }
        let n = self.rng.random_range(1..=16);
        let mut shape = v.shape.clone();
        *shape.last_mut().unwrap() = n;
        if numel(&shape) > MAX_ELEMS {
            return None;
        }
        let w = self.weights(&[k, n], 1.0 / (k as f32).sqrt());
        Some(self.emit("MatMul", &[&v.name, &w], vec![], F32, shape, v.sym))
    }

    fn matmul_add(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32() && v.rank() >= 2) else {
            return false;
        };
        let Some(m) = self.matmul_const(x) else {
            return false;
        };
        let v = self.v(m);
        let n = v.shape[v.rank() - 1];
        let dims = match self.rng.random_range(0..4) {
            0 => vec![1, n],
            1 => self.broadcast_dims(&v),
            _ => vec![n],
        };
        let c = self.weights(&dims, 1.0);
        if let Some((shape, sym)) = broadcast(
            &v,
            &Val {
                name: c.clone(),
                ty: F32,
                shape: dims.clone(),
                sym: vec![false; dims.len()],
                positive: false,
            },
        ) {
            let flip = self.rng.random_bool(0.5);
            let ins = if flip { [&c, &v.name] } else { [&v.name, &c] };
            self.emit("Add", &[ins[0], ins[1]], vec![], F32, shape, sym);
        }
        true
    }

    fn matmul(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32() && v.rank() >= 2) else {
            return false;
        };
        if self.rng.random_bool(0.5) {
            return self.matmul_const(x).is_some();
        }
        // x · xᵀ over the last two axes: a product of two values, not a constant.
        let v = self.v(x);
        let r = v.rank();
        if v.sym[r - 1] || v.sym[r - 2] {
            return false;
        }
        let mut perm: Vec<i64> = (0..r as i64).collect();
        perm.swap(r - 1, r - 2);
        let mut tshape = v.shape.clone();
        tshape.swap(r - 1, r - 2);
        let t = self.emit(
            "Transpose",
            &[&v.name],
            vec![attr_ints("perm", &perm)],
            F32,
            tshape,
            v.sym.clone(),
        );
        let tname = self.vals[t].name.clone();
        let mut shape = v.shape.clone();
        shape[r - 1] = v.shape[r - 2];
        if numel(&shape) > MAX_ELEMS {
            return true;
        }
        self.emit("MatMul", &[&v.name, &tname], vec![], F32, shape, v.sym);
        true
    }

    fn gemm(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32() && v.rank() == 2 && !v.sym[1]) else {
            return false;
        };
        let v = self.v(x);
        let trans_a = !v.sym[0] && self.rng.random_bool(0.3);
        let (m, k) = if trans_a {
            (v.shape[1], v.shape[0])
        } else {
            (v.shape[0], v.shape[1])
        };
        let msym = v.sym[0];
        let n = self.rng.random_range(1..=16);
        let trans_b = self.rng.random_bool(0.5);
        let bd = if trans_b { [n, k] } else { [k, n] };
        let b = self.weights(&bd, 1.0 / (k as f32).sqrt());
        let mut ins = vec![v.name.clone(), b];
        if self.rng.random_bool(0.7) {
            let cd = match self.rng.random_range(0..5) {
                0 => vec![],
                1 => vec![1, n],
                2 if !msym => vec![m, n],
                3 if !msym => vec![m, 1],
                _ => vec![n],
            };
            ins.push(self.weights(&cd, 1.0));
        }
        let mut attrs = vec![];
        for (name, on) in [("transA", trans_a), ("transB", trans_b)] {
            if on || self.rng.random_bool(0.2) {
                attrs.push(attr_int(name, on as i64));
            }
        }
        if self.rng.random_bool(0.3) {
            attrs.push(attr_float("alpha", self.rng.random_range(0.5..2.0)));
        }
        if self.rng.random_bool(0.3) {
            attrs.push(attr_float("beta", self.rng.random_range(0.5..2.0)));
        }
        let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        let g = self.emit("Gemm", &ins, attrs, F32, vec![m, n], vec![msym, false]);
        if self.rng.random_bool(0.3) {
            self.bn_on(g);
        }
        true
    }

    fn instance_norm(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32() && v.rank() >= 3 && !v.sym[1]) else {
            return false;
        };
        let v = self.v(x);
        let c = v.shape[1];
        let s = self.weights(&[c], 1.0);
        let b = self.weights(&[c], 1.0);
        self.same("InstanceNormalization", &[&v.name, &s, &b], vec![], x);
        true
    }

    fn layer_norm(&mut self) -> bool {
        if self.opset < 17 {
            return false;
        }
        let Some(x) = self.pick(|v| v.f32() && v.rank() >= 1) else {
            return false;
        };
        let v = self.v(x);
        let r = v.rank();
        let first = (0..r).rev().take_while(|&i| !v.sym[i]).last();
        let Some(first) = first else {
            return false;
        };
        let axis = self.rng.random_range(first..r);
        let dims = &v.shape[axis..];
        let g = self.weights(dims, 1.0);
        let mut ins = vec![v.name.clone(), g];
        if self.rng.random_bool(0.6) {
            ins.push(self.weights(dims, 1.0));
        }
        let written = if self.rng.random_bool(0.5) {
            axis as i64 - r as i64
        } else {
            axis as i64
        };
        let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        self.same(
            "LayerNormalization",
            &ins,
            vec![attr_int("axis", written)],
            x,
        );
        true
    }

    fn unary(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32()) else {
            return false;
        };
        let v = self.v(x);
        let op =
            ["Relu", "Sigmoid", "Tanh", "Erf", "Neg", "Abs", "Sqrt"][self.rng.random_range(0..7)];
        let name = if op == "Sqrt" && !v.positive {
            self.make_positive(x)
        } else {
            v.name.clone()
        };
        let y = self.same(op, &[&name], vec![], x);
        self.vals[y].positive = op == "Sqrt";
        true
    }

    /// x*x + 1 or Sigmoid(x) + 0.5: a value Sqrt and Div may take.
    fn make_positive(&mut self, x: usize) -> String {
        let v = self.v(x);
        let y = if self.rng.random_bool(0.5) {
            let sq = self.same("Mul", &[&v.name, &v.name], vec![], x);
            let sqn = self.vals[sq].name.clone();
            let one = self.f32_const(&[], vec![1.0]);
            self.bin("Add", &sqn, &one, true, x)
        } else {
            let s = self.same("Sigmoid", &[&v.name], vec![], x);
            let sn = self.vals[s].name.clone();
            let half = self.f32_const(&[1], vec![0.5]);
            self.bin("Add", &sn, &half, true, x)
        };
        self.vals[y].positive = true;
        self.vals[y].name.clone()
    }

    /// Add, Sub, Mul or Div of a value with another value or a constant, broadcasting.
    fn binary(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32()) else {
            return false;
        };
        let a = self.v(x);
        let op = ["Add", "Sub", "Mul", "Div"][self.rng.random_range(0..4)];
        let other = if self.rng.random_bool(0.5) {
            self.pick(|b| b.f32() && (op != "Div" || b.positive) && broadcast(&a, b).is_some())
                .map(|i| self.v(i))
        } else {
            None
        };
        let other_is_value = other.is_some();
        let b = match other {
            Some(b) => b,
            None => {
                let dims = self.broadcast_dims(&a);
                let n = numel(&dims) as usize;
                let data = if op == "Div" {
                    self.uniform(n, 0.5, 2.0)
                } else {
                    self.normal(n, 1.0)
                };
                Val {
                    name: self.f32_const(&dims, data),
                    ty: F32,
                    sym: vec![false; dims.len()],
                    shape: dims,
                    positive: op == "Div",
                }
            }
        };
        let (shape, sym) = broadcast(&a, &b).unwrap();
        if numel(&shape) > MAX_ELEMS {
            return false;
        }
        // Never Sub(constant, x): tract 0.23.9 computes x - c for it when another, identical
        // Conv computes x (seed 14686), while the same graph after CSE runs correctly.
        let flip = op != "Div" && (op != "Sub" || other_is_value) && self.rng.random_bool(0.5);
        let ins = if flip {
            [&b.name, &a.name]
        } else {
            [&a.name, &b.name]
        };
        let y = self.emit(op, &[ins[0], ins[1]], vec![], F32, shape, sym);
        self.vals[y].positive = a.positive && b.positive && (op == "Mul" || op == "Add");
        true
    }

    fn expand(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() >= 1) else {
            return false;
        };
        let v = self.v(x);
        let mut target: Vec<i64> = v
            .shape
            .iter()
            .zip(&v.sym)
            .map(|(&d, &s)| {
                if d == 1 && !s && self.rng.random_bool(0.5) {
                    self.rng.random_range(2..=3)
                } else if s || self.rng.random_bool(0.3) {
                    1
                } else {
                    d
                }
            })
            .collect();
        let mut shape: Vec<i64> = target
            .iter()
            .zip(&v.shape)
            .map(|(&t, &d)| t.max(d))
            .collect();
        let mut sym = v.sym.clone();
        if self.rng.random_bool(0.3) {
            let d = self.rng.random_range(1..=2);
            target.insert(0, d);
            shape.insert(0, d);
            sym.insert(0, false);
        }
        if numel(&shape) > MAX_ELEMS {
            return false;
        }
        let t = self.i64_const(&target);
        self.emit("Expand", &[&v.name, &t], vec![], v.ty, shape, sym);
        true
    }

    /// A non-symbolic axis of `v`, if any.
    fn fixed_axis(&mut self, v: &Val, min: i64) -> Option<usize> {
        let axes: Vec<usize> = (0..v.rank())
            .filter(|&i| !v.sym[i] && v.shape[i] >= min)
            .collect();
        (!axes.is_empty()).then(|| axes[self.rng.random_range(0..axes.len())])
    }

    fn slice(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() >= 1) else {
            return false;
        };
        let v = self.v(x);
        let Some(axis) = self.fixed_axis(&v, 1) else {
            return false;
        };
        let d = v.shape[axis];
        let step: i64 = [1, 1, 2, -1][self.rng.random_range(0..4)];
        let start = self.rng.random_range(-d..d);
        let mut end = self.rng.random_range(-d..=d);
        if self.rng.random_bool(0.2) {
            end = if step > 0 { i64::MAX } else { i64::MIN };
        }
        let norm = |i: i64, lo: i64, hi: i64| {
            if i < 0 {
                i.saturating_add(d).clamp(lo, hi)
            } else {
                i.clamp(lo, hi)
            }
        };
        // Only steps of 1, 2 and -1: the length formulas below are for those.
        let len = if step > 0 {
            let (s, e) = (norm(start, 0, d), norm(end, 0, d));
            (e - s + step - 1).div_euclid(step).max(0)
        } else {
            let (s, e) = (norm(start, 0, d - 1), norm(end, -1, d - 1));
            (s - e).max(0)
        };
        // An empty slice is valid but leaves nothing to compare.
        if len == 0 {
            return false;
        }
        let written_axis = if self.rng.random_bool(0.3) {
            axis as i64 - v.rank() as i64
        } else {
            axis as i64
        };
        let s = self.i64_const(&[start]);
        let e = self.i64_const(&[end]);
        let a = self.i64_const(&[written_axis]);
        let mut ins = vec![v.name.clone(), s, e, a];
        if step != 1 || self.rng.random_bool(0.3) {
            ins.push(self.i64_const(&[step]));
        }
        let mut shape = v.shape.clone();
        shape[axis] = len;
        let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
        self.emit("Slice", &ins, vec![], v.ty, shape, v.sym);
        true
    }

    fn gather(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() >= 1) else {
            return false;
        };
        let v = self.v(x);
        let Some(axis) = self.fixed_axis(&v, 1) else {
            return false;
        };
        let d = v.shape[axis];
        let n = self.rng.random_range(0..=3);
        let idx: Vec<i64> = (0..n.max(1))
            .map(|_| self.rng.random_range(-d..d))
            .collect();
        let (idims, iname) = if n == 0 {
            (vec![], self.constant(&[], Data::I64(idx)))
        } else {
            (vec![n as i64], self.i64_const(&idx))
        };
        let mut shape = v.shape[..axis].to_vec();
        shape.extend(&idims);
        shape.extend(&v.shape[axis + 1..]);
        let mut sym = v.sym[..axis].to_vec();
        sym.extend(vec![false; idims.len()]);
        sym.extend(&v.sym[axis + 1..]);
        let a = attr_int("axis", axis as i64);
        self.emit("Gather", &[&v.name, &iname], vec![a], v.ty, shape, sym);
        true
    }

    fn concat(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32() && v.rank() >= 1) else {
            return false;
        };
        let v = self.v(x);
        let Some(axis) = self.fixed_axis(&v, 1) else {
            return false;
        };
        let mut parts = vec![v.name.clone()];
        let mut len = v.shape[axis];
        for _ in 0..self.rng.random_range(1..=2) {
            if v.any_sym() || self.rng.random_bool(0.4) {
                // The value itself again: read several times.
                parts.push(v.name.clone());
                len += v.shape[axis];
            } else {
                let mut dims = v.shape.clone();
                dims[axis] = self.rng.random_range(1..=3);
                len += dims[axis];
                parts.push(self.weights(&dims, 1.0));
            }
        }
        let mut shape = v.shape.clone();
        shape[axis] = len;
        if numel(&shape) > MAX_ELEMS {
            return false;
        }
        let k = self.rng.random_range(0..parts.len());
        parts.swap(0, k);
        let written = if self.rng.random_bool(0.3) {
            axis as i64 - v.rank() as i64
        } else {
            axis as i64
        };
        let parts: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
        let a = attr_int("axis", written);
        self.emit("Concat", &parts, vec![a], F32, shape, v.sym);
        true
    }

    fn split(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() >= 1) else {
            return false;
        };
        let v = self.v(x);
        let Some(axis) = self.fixed_axis(&v, 2) else {
            return false;
        };
        let d = v.shape[axis];
        let first = self.rng.random_range(1..d);
        let sizes = if d - first >= 2 && self.rng.random_bool(0.4) {
            let second = self.rng.random_range(1..d - first);
            vec![first, second, d - first - second]
        } else {
            vec![first, d - first]
        };
        let outs: Vec<String> = sizes.iter().map(|_| self.fresh("v")).collect();
        let s = self.i64_const(&sizes);
        let outr: Vec<&str> = outs.iter().map(|s| s.as_str()).collect();
        let mut n = self.node("Split", &[&v.name, &s], &outr);
        n.attribute.push(attr_int("axis", axis as i64));
        self.nodes.push(n);
        for (name, size) in outs.into_iter().zip(sizes) {
            let mut shape = v.shape.clone();
            shape[axis] = size;
            self.vals.push(Val {
                name,
                ty: v.ty,
                shape,
                sym: v.sym.clone(),
                positive: v.positive,
            });
        }
        true
    }

    fn pad(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32() && v.rank() >= 1) else {
            return false;
        };
        let v = self.v(x);
        let mode = ["constant", "constant", "reflect", "edge"][self.rng.random_range(0..4)];
        let r = v.rank();
        let mut pads = vec![0; 2 * r];
        for (i, p) in pads.iter_mut().enumerate() {
            let (d, s) = (v.shape[i % r], v.sym[i % r]);
            let max = if mode == "reflect" { (d - 1).min(2) } else { 2 };
            if !s && max > 0 && self.rng.random_bool(0.5) {
                *p = self.rng.random_range(0..=max);
            }
        }
        let shape: Vec<i64> = (0..r).map(|i| v.shape[i] + pads[i] + pads[r + i]).collect();
        if numel(&shape) > MAX_ELEMS {
            return false;
        }
        let value = (mode == "constant" && self.rng.random_bool(0.5))
            .then(|| self.rng.random_range(-1.0..1.0));
        self.pad_node(x, pads, value, mode);
        true
    }

    fn cast(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32()) else {
            return false;
        };
        let v = self.v(x);
        let to = if self.rng.random_bool(0.7) { F64 } else { I64 };
        let c = self.emit(
            "Cast",
            &[&v.name],
            vec![attr_int("to", to as i64)],
            to,
            v.shape.clone(),
            v.sym.clone(),
        );
        let cname = self.vals[c].name.clone();
        self.same("Cast", &[&cname], vec![attr_int("to", F32 as i64)], x);
        true
    }

    fn pool_on(&mut self, x: usize, op: &str) -> bool {
        let v = self.v(x);
        let nsp = v.rank() - 2;
        if op.starts_with("Global") {
            let mut shape = v.shape.clone();
            shape[2..].fill(1);
            self.emit(op, &[&v.name], vec![], F32, shape, v.sym);
            return true;
        }
        let r = &mut self.rng;
        let k: Vec<i64> = (0..nsp).map(|_| r.random_range(1..=3)).collect();
        let stride: Vec<i64> = (0..nsp).map(|_| r.random_range(1..=2)).collect();
        let pads: Vec<i64> = (0..2 * nsp)
            .map(|i| r.random_range(0..k[i % nsp]).min(1))
            .collect();
        let mut shape = v.shape[..2].to_vec();
        for i in 0..nsp {
            let o = (v.shape[2 + i] + pads[i] + pads[nsp + i] - k[i]).div_euclid(stride[i]) + 1;
            if o < 1 {
                return false;
            }
            shape.push(o);
        }
        let mut attrs = vec![attr_ints("kernel_shape", &k), attr_ints("strides", &stride)];
        if pads.iter().any(|&p| p > 0) || self.rng.random_bool(0.3) {
            attrs.push(attr_ints("pads", &pads));
        }
        if op == "AveragePool" && self.rng.random_bool(0.5) {
            attrs.push(attr_int("count_include_pad", self.rng.random_range(0..=1)));
        }
        self.emit(op, &[&v.name], attrs, F32, shape, v.sym);
        true
    }

    fn pool(&mut self) -> bool {
        let Some(x) = self.pick_spatial() else {
            return false;
        };
        let op = [
            "MaxPool",
            "AveragePool",
            "GlobalAveragePool",
            "GlobalMaxPool",
        ][self.rng.random_range(0..4)];
        self.pool_on(x, op)
    }

    /// Resize of the spatial axes by whole scales, or to given sizes.
    fn resize(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.rank() == 4 && v.f32() && !v.sym[1..].iter().any(|&s| s))
        else {
            return false;
        };
        let v = self.v(x);
        let (sh, sw) = (self.rng.random_range(1..=2), self.rng.random_range(1..=2));
        let shape = vec![v.shape[0], v.shape[1], v.shape[2] * sh, v.shape[3] * sw];
        if numel(&shape) > MAX_ELEMS {
            return false;
        }
        let mode = if self.rng.random_bool(0.5) {
            "nearest"
        } else {
            "linear"
        };
        let scales = self.f32_const(&[4], vec![1.0, 1.0, sh as f32, sw as f32]);
        let attrs = vec![attr_str("mode", mode)];
        self.emit("Resize", &[&v.name, "", &scales], attrs, F32, shape, v.sym);
        true
    }

    /// Re-emits an earlier single-output node under a new output name: a common
    /// subexpression.
    fn duplicate(&mut self) -> bool {
        let cands: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.output.len() == 1 && n.op_type != "If" && n.op_type != "Constant"
            })
            .collect();
        if cands.is_empty() {
            return false;
        }
        let i = cands[self.rng.random_range(0..cands.len())];
        let mut n = self.nodes[i].clone();
        let src = self
            .vals
            .iter()
            .position(|v| v.name == n.output[0])
            .unwrap();
        let name = self.fresh("v");
        n.name = self.fresh("n");
        n.output = vec![name.clone()];
        self.nodes.push(n);
        let v = Val {
            name,
            ..self.v(src)
        };
        self.vals.push(v);
        true
    }

    /// If with a constant condition (an initializer, a Constant, or a Shape test that
    /// folding makes constant) whose branches read outer values by capture.
    fn if_const(&mut self) -> bool {
        let Some(x) = self.pick(|v| v.f32()) else {
            return false;
        };
        let v = self.v(x);
        let cond = match self.rng.random_range(0..3) {
            0 => {
                let b = self.rng.random_bool(0.5);
                self.constant(&[], Data::Bool(b))
            }
            1 => {
                let Some(axis) = self.fixed_axis(&v, 1) else {
                    return false;
                };
                let s = self.emit(
                    "Shape",
                    &[&v.name],
                    vec![],
                    I64,
                    vec![v.rank() as i64],
                    vec![false],
                );
                let sname = self.vals[s].name.clone();
                let i = self.constant(&[], Data::I64(vec![axis as i64]));
                let g = self.emit("Gather", &[&sname, &i], vec![], I64, vec![], vec![]);
                let gname = self.vals[g].name.clone();
                let d = v.shape[axis] + self.rng.random_range(0..=1);
                let k = self.constant(&[], Data::I64(vec![d]));
                let e = self.emit("Equal", &[&gname, &k], vec![], BOOL, vec![], vec![]);
                self.vals[e].name.clone()
            }
            _ => {
                let name = self.fresh("c");
                let mut n = self.node("Constant", &[], &[&name]);
                n.attribute
                    .push(attr_int("value_int", self.rng.random_range(0..=1)));
                self.nodes.push(n);
                let b = self.emit(
                    "Cast",
                    &[&name],
                    vec![attr_int("to", BOOL as i64)],
                    BOOL,
                    vec![],
                    vec![],
                );
                self.vals[b].name.clone()
            }
        };
        // A second captured value of x's shape, where there is one.
        let other = self
            .vals
            .iter()
            .find(|o| o.f32() && o.shape == v.shape && o.sym == v.sym && o.name != v.name)
            .map(|o| o.name.clone());
        let then_branch = self.branch("then", &v, other.as_deref());
        let else_branch = self.branch("else", &v, None);
        let out = self.fresh("v");
        let mut n = self.node("If", &[&cond], &[&out]);
        n.attribute = vec![
            attr_graph("then_branch", then_branch),
            attr_graph("else_branch", else_branch),
        ];
        self.nodes.push(n);
        self.vals.push(Val {
            name: out,
            positive: false,
            ..v
        });
        true
    }

    fn branch(&mut self, what: &str, x: &Val, other: Option<&str>) -> GraphProto {
        let (t, r) = (
            self.fresh(&format!("{what}_t")),
            self.fresh(&format!("{what}_r")),
        );
        let k = self.fresh(&format!("{what}_k"));
        let kd = self.broadcast_dims(x);
        let kv = self.normal(numel(&kd) as usize, 1.0);
        let mut nodes = vec![];
        let op = ["Relu", "Neg", "Sigmoid"][self.rng.random_range(0..3)];
        nodes.push(self.node(op, &[&x.name], &[&t]));
        let second = other.unwrap_or(&k);
        let mul = if self.rng.random_bool(0.5) {
            "Mul"
        } else {
            "Add"
        };
        nodes.push(self.node(mul, &[&t, second], &[&r]));
        let mut initializer = vec![f32_tensor(&k, &kd, &kv)];
        let mut out = r;
        if self.rng.random_bool(0.3) {
            // x * 1 inside the body, for the cleanup passes that run there.
            let one = self.fresh(&format!("{what}_one"));
            let r2 = self.fresh(&format!("{what}_r"));
            nodes.push(self.node("Mul", &[&out, &one], &[&r2]));
            initializer.push(f32_tensor(&one, &[], &[1.0]));
            out = r2;
        }
        GraphProto {
            name: self.fresh(what),
            node: nodes,
            initializer,
            output: vec![ValueInfoProto {
                name: out,
                ..value_info(x)
            }],
            ..Default::default()
        }
    }

    /// The model: every f32 value nothing reads is an output (up to four), and sometimes a
    /// value that is also read.
    fn finish(mut self, seed: u64) -> ModelProto {
        let read: std::collections::HashSet<String> = self
            .nodes
            .iter()
            .flat_map(|n| {
                let subgraph_reads = n
                    .attribute
                    .iter()
                    .filter_map(|a| a.g.as_ref())
                    .flat_map(|g| g.node.iter().flat_map(|n| n.input.clone()));
                n.input
                    .iter()
                    .cloned()
                    .chain(subgraph_reads)
                    .collect::<Vec<_>>()
            })
            .collect();
        let is_input = |v: &Val| self.inputs.iter().any(|i| i.name == v.name);
        let mut outputs: Vec<ValueInfoProto> = self
            .vals
            .iter()
            .filter(|v| v.f32() && !read.contains(&v.name) && !is_input(v))
            .rev()
            .take(4)
            .map(value_info)
            .collect();
        let inner: Vec<&Val> = self
            .vals
            .iter()
            .filter(|v| v.f32() && read.contains(&v.name) && !is_input(v))
            .collect();
        if !inner.is_empty() && (outputs.is_empty() || self.rng.random_bool(0.2)) {
            let v = inner[self.rng.random_range(0..inner.len())];
            outputs.push(value_info(v));
        }
        if outputs.is_empty() {
            let v = self.vals[0].clone();
            let y = self.same("Relu", &[&v.name], vec![], 0);
            outputs.push(value_info(&self.vals[y]));
        }
        ModelProto {
            ir_version: if self.opset >= 19 { 9 } else { 8 },
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            graph: Some(GraphProto {
                name: format!("random{seed}"),
                node: self.nodes,
                input: self.inputs,
                output: outputs,
                initializer: self.inits,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
