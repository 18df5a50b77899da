//! A small helper for writing models in code the way an exporter would.

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ir::{Attr, DType, Dim, GraphBuilder, Model, Tensor, Type, ValueId, ValueInfo};

pub struct Builder {
    pub graph: GraphBuilder,
    rng: ChaCha8Rng,
    opset: i64,
}

impl Builder {
    pub fn new(name: &str, opset: i64, seed: u64) -> Builder {
        Builder {
            graph: GraphBuilder::new(name),
            rng: ChaCha8Rng::seed_from_u64(seed),
            opset,
        }
    }

    pub fn input(&mut self, name: &str, dtype: DType, shape: Vec<Dim>) -> Result<ValueId> {
        self.graph
            .input(name, ValueInfo::of(Type::tensor(dtype, shape)))
    }

    pub fn output(&mut self, v: ValueId, dtype: DType, shape: Vec<Dim>) {
        self.graph
            .output(v, ValueInfo::of(Type::tensor(dtype, shape)));
    }

    pub fn init(&mut self, name: &str, dims: Vec<i64>, values: &[f32]) -> Result<ValueId> {
        self.graph.initializer(name, Tensor::from_f32(dims, values))
    }

    /// Standard normal samples (Box–Muller), scaled by `std`.
    pub fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1: f32 = self.rng.random::<f32>().max(f32::MIN_POSITIVE);
            let u2: f32 = self.rng.random::<f32>();
            let r = (-2.0 * u1.ln()).sqrt() * std;
            let t = 2.0 * std::f32::consts::PI * u2;
            out.push(r * t.cos());
            out.push(r * t.sin());
        }
        out.truncate(n);
        out
    }

    pub fn uniform(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.rng.random_range(lo..hi)).collect()
    }

    /// One node with a single output named `<name>_output_0`, as PyTorch's exporter names them.
    pub fn op(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[ValueId],
        attrs: Vec<Attr>,
    ) -> Result<ValueId> {
        let out = format!("{name}_output_0");
        let ins: Vec<Option<ValueId>> = inputs.iter().map(|&v| Some(v)).collect();
        let n = self.graph.node(op, "", name, &ins, &[&out], attrs)?;
        Ok(self.graph.graph().node(n).output(0).unwrap())
    }

    pub fn finish(self, producer: &str) -> Model {
        Model::new(self.graph.finish(), 8, &[("", self.opset)], producer)
    }
}
