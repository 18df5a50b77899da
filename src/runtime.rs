//! The only code that talks to tract: build a runnable model from our graph, bind symbolic
//! dims, run it, expose intermediate values.
//!
//! tract is handed concrete input shapes and told to ignore declared value_info: exports often
//! declare symbolic dims on inner values that a concrete input does not bind, and declared
//! shapes can be wrong. When typing fails (for instance an If whose branches differ in output
//! shape, which is legal ONNX) the untyped inference model is run instead: slower, but correct.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use rand::Rng;
use tract_onnx::prelude::{
    DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, IntoTValue, TVec,
    Tensor as TTensor, TypedRunnableModel,
};
use tract_onnx::prelude::{InferenceSimplePlan, IntoTensor};

use crate::ir::{BodyFeed, DType, Def, Dim, Graph, Model, NodeId, Tensor, Type};

/// Threads that run tract at once: one per core of the machines we run on. Fixed rather than
/// read from the machine, so that sums split between workers (calibration statistics, moment
/// matrices) add up in the same order everywhere and results stay byte-identical.
pub const WORKERS: usize = 2;

/// Concrete values for symbolic dims: `--input-shape name:1x3x224x224` fixes an input's whole
/// shape; any other symbol or unknown dim becomes `default_dim`, except spatial ones (dims after
/// the first two of a rank >= 3 input) when `spatial_dims` is set.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub input_shapes: HashMap<String, Vec<usize>>,
    pub default_dim: usize,
    /// Sizes for free spatial dims, in order, the last one repeated: image models whose
    /// branches only line up at real image sizes need them larger than `default_dim`.
    pub spatial_dims: Vec<usize>,
    /// The size for the free second dim of a rank-2 input ([batch, steps] token ids or
    /// samples), when set.
    pub sequence_dim: Option<usize>,
}

impl Default for Binding {
    fn default() -> Self {
        Binding {
            input_shapes: HashMap::new(),
            default_dim: 1,
            spatial_dims: Vec::new(),
            sequence_dim: None,
        }
    }
}

impl Binding {
    /// Parses `name:1x3x224x224`.
    pub fn add_spec(&mut self, spec: &str) -> Result<()> {
        let (name, dims) = spec
            .rsplit_once(':')
            .with_context(|| format!("--input-shape '{spec}' must look like name:1x3x224x224"))?;
        let dims = if dims.is_empty() {
            Vec::new()
        } else {
            dims.split(['x', ','])
                .map(|d| d.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--input-shape '{spec}': dims must be numbers"))?
        };
        self.input_shapes.insert(name.to_string(), dims);
        Ok(())
    }

    /// This binding with free spatial dims of `sizes` instead.
    pub fn with_spatial_dims(&self, sizes: Vec<usize>) -> Binding {
        Binding {
            spatial_dims: sizes,
            ..self.clone()
        }
    }

    /// The size a free dim at `axis` of a rank-`rank` input is bound to.
    fn free_dim(&self, axis: usize, rank: usize) -> usize {
        if let (Some(n), 2, 1) = (self.sequence_dim, rank, axis) {
            return n;
        }
        match self.spatial_dims.as_slice() {
            [] => self.default_dim,
            sizes if rank >= 3 && axis >= 2 => sizes[(axis - 2).min(sizes.len() - 1)],
            _ => self.default_dim,
        }
    }
}

/// Whether some input that `binding` does not fix has a symbolic or unknown spatial dim: only
/// then can a larger [`Binding::spatial_dims`] change what the model is run with.
pub fn has_free_spatial_dims(model: &Model, binding: &Binding) -> bool {
    let g = &model.graph;
    g.inputs().iter().any(|&v| {
        let value = g.value(v);
        value.def() == Def::Input
            && value.initializer().is_none()
            && !binding.input_shapes.contains_key(value.name())
            && g.shape(v).is_some_and(|dims| {
                dims.len() >= 3
                    && dims[2..]
                        .iter()
                        .any(|d| !matches!(d, Dim::Known(n) if *n >= 0))
            })
    })
}

/// What a model input needs: name, element type and the concrete shape it will be run with.
#[derive(Clone, Debug)]
pub struct InputSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// The inputs a model is fed: graph inputs without a default value, with symbols bound.
pub fn input_specs(model: &Model, binding: &Binding) -> Result<Vec<InputSpec>> {
    let g = &model.graph;
    let mut specs = Vec::new();
    for &v in g.inputs() {
        let value = g.value(v);
        if value.def() != Def::Input || value.initializer().is_some() {
            continue;
        }
        let name = value.name().to_string();
        let dtype = g
            .dtype(v)
            .with_context(|| format!("graph input '{name}' is not a tensor of known type"))?;
        let shape = match binding.input_shapes.get(&name) {
            Some(s) => s.clone(),
            None => {
                let dims = g.shape(v).with_context(|| {
                    format!(
                        "graph input '{name}' has no declared rank: give --input-shape {name}:..."
                    )
                })?;
                dims.iter()
                    .enumerate()
                    .map(|(axis, d)| match d {
                        Dim::Known(n) if *n >= 0 => *n as usize,
                        _ => binding.free_dim(axis, dims.len()),
                    })
                    .collect()
            }
        };
        specs.push(InputSpec { name, dtype, shape });
    }
    Ok(specs)
}

fn datum(dtype: DType) -> Option<DatumType> {
    Some(match dtype {
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::F16 => DatumType::F16,
        DType::I8 => DatumType::I8,
        DType::U8 => DatumType::U8,
        DType::I16 => DatumType::I16,
        DType::U16 => DatumType::U16,
        DType::I32 => DatumType::I32,
        DType::U32 => DatumType::U32,
        DType::I64 => DatumType::I64,
        DType::U64 => DatumType::U64,
        DType::BOOL => DatumType::Bool,
        DType::STRING => DatumType::String,
        _ => return None,
    })
}

fn dtype_of(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::F16 => DType::F16,
        DatumType::I8 => DType::I8,
        DatumType::U8 => DType::U8,
        DatumType::I16 => DType::I16,
        DatumType::U16 => DType::U16,
        DatumType::I32 => DType::I32,
        DatumType::U32 => DType::U32,
        DatumType::I64 => DType::I64,
        DatumType::U64 => DType::U64,
        DatumType::Bool => DType::BOOL,
        DatumType::String => DType::STRING,
        _ => return None,
    })
}

/// A tensor on the host, as fed to or returned by a run.
#[derive(Clone)]
pub struct HostTensor(TTensor);

impl fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}{:?}", self.0.datum_type(), self.0.shape())
    }
}

impl HostTensor {
    /// Seeded data for an input: normal floats, small non-negative integers (valid as indices
    /// and counts for the small dims we bind), random booleans.
    pub fn random(spec: &InputSpec, rng: &mut impl Rng) -> Result<HostTensor> {
        let n: usize = spec.shape.iter().product();
        let dt = datum(spec.dtype)
            .with_context(|| format!("input '{}': cannot make {} data", spec.name, spec.dtype))?;
        let normal = |rng: &mut dyn rand::RngCore| {
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        };
        let t = match dt {
            DatumType::Bool => {
                let v: Vec<bool> = (0..n).map(|_| rng.random()).collect();
                TTensor::from_shape(&spec.shape, &v)?
            }
            DatumType::String => bail!("input '{}': string inputs need --inputs", spec.name),
            dt if dt.is_float() => {
                let v: Vec<f64> = (0..n).map(|_| normal(rng)).collect();
                TTensor::from_shape(&spec.shape, &v)?
                    .cast_to_dt(dt)?
                    .into_owned()
            }
            dt => {
                let v: Vec<i64> = (0..n).map(|_| rng.random_range(0..2)).collect();
                TTensor::from_shape(&spec.shape, &v)?
                    .cast_to_dt(dt)?
                    .into_owned()
            }
        };
        Ok(HostTensor(t))
    }

    /// A tensor from little-endian bytes.
    /// A constant of the IR as a value to feed (`None` for a payload that is not raw bytes,
    /// such as strings).
    pub fn from_constant(t: &Tensor) -> Option<HostTensor> {
        let shape: Vec<usize> = t.dims().iter().map(|&d| d as usize).collect();
        HostTensor::from_le_bytes(t.dtype(), &shape, &t.raw_bytes()?).ok()
    }

    pub fn from_le_bytes(dtype: DType, shape: &[usize], data: &[u8]) -> Result<HostTensor> {
        let dt = datum(dtype).with_context(|| format!("unsupported element type {dtype}"))?;
        if dt == DatumType::String {
            bail!("string tensors are not supported here");
        }
        let need = shape.iter().product::<usize>() * dt.size_of();
        if data.len() != need {
            bail!("{dtype}{shape:?} needs {need} bytes, got {}", data.len());
        }
        // SAFETY: the length matches the shape and type checked above, and every bit pattern
        // is valid for the numeric and bool types `datum` maps to (bool bytes come from files
        // that store 0/1; anything else is read as true by tract's kernels).
        let t = unsafe { TTensor::from_raw_dt(dt, shape, data)? };
        Ok(HostTensor(t))
    }

    pub fn shape(&self) -> &[usize] {
        self.0.shape()
    }

    /// The element type, when ONNX has one for it.
    pub fn dtype(&self) -> Option<DType> {
        dtype_of(self.0.datum_type())
    }

    /// Values of a float tensor as f32, borrowed when they are f32 already.
    pub fn f32_values(&self) -> Option<std::borrow::Cow<'_, [f32]>> {
        match self.0.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()) {
            Ok(v) => Some(std::borrow::Cow::Borrowed(v)),
            Err(_) => self.to_f32().map(std::borrow::Cow::Owned),
        }
    }

    /// Values of a float tensor as f32, for calibration statistics. `None` for other types.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        if !self.0.datum_type().is_float() {
            return None;
        }
        let t = self.0.cast_to::<f32>().ok()?;
        Some(
            t.to_plain_array_view::<f32>()
                .ok()?
                .iter()
                .copied()
                .collect(),
        )
    }

    /// The tensor as a float model's op reads it: a 16-bit float as f32 (exactly), a shape tract
    /// computed as symbolic dims as the int64 ONNX declares; any other, as it is.
    pub fn widened(&self) -> HostTensor {
        let cast = match self.0.datum_type() {
            DatumType::F16 => self.0.cast_to::<f32>(),
            DatumType::TDim => self.0.cast_to::<i64>(),
            _ => return self.clone(),
        };
        cast.map_or_else(|_| self.clone(), |t| HostTensor(t.into_owned()))
    }

    /// Values as f64, for comparisons. `None` for strings.
    pub fn to_f64(&self) -> Option<Vec<f64>> {
        let t = self.0.cast_to::<f64>().ok()?;
        Some(
            t.to_plain_array_view::<f64>()
                .ok()?
                .iter()
                .copied()
                .collect(),
        )
    }

    /// The value as a constant tensor, for folding. `None` for types ONNX cannot store.
    pub fn to_tensor(&self) -> Option<Tensor> {
        let t = if self.0.datum_type() == DatumType::TDim {
            self.0.cast_to::<i64>().ok()?.into_owned()
        } else {
            self.0.clone()
        };
        let dtype = dtype_of(t.datum_type()).filter(|&d| d != DType::STRING)?;
        let dims = t.shape().iter().map(|&d| d as i64).collect();
        let bytes = t.try_as_plain_ram().ok()?.as_bytes().to_vec();
        Some(Tensor::from_raw(dtype, dims, bytes::Bytes::from(bytes)))
    }

    /// Equal including strings, for outputs that are not numbers.
    pub fn same_as(&self, other: &HostTensor) -> bool {
        self.0 == other.0
    }
}

enum Plan {
    Typed(Arc<TypedRunnableModel>),
    Inference(Arc<InferenceSimplePlan>),
}

/// A model made runnable by tract, with the names of what it returns.
pub struct Runner {
    plan: Plan,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<String>,
}

/// Why tract cannot run a model, worded for the user.
#[derive(Debug, Clone)]
pub struct Unrunnable(pub String);

impl fmt::Display for Unrunnable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unrunnable {}

/// [`input_specs`], where failing to describe an input (a sequence, an optional, no declared
/// rank) makes a check impossible: "unverified", not an error in the model.
pub fn feedable_inputs(model: &Model, binding: &Binding) -> Result<Vec<InputSpec>, Unrunnable> {
    input_specs(model, binding).map_err(|e| Unrunnable(format!("cannot feed this model: {e:#}")))
}

impl Runner {
    /// Builds a runner returning the graph outputs followed by `extra_outputs` (names of
    /// intermediate values). A panic inside tract is reported as "cannot run", not passed on.
    pub fn new(model: &Model, binding: &Binding, extra_outputs: &[String]) -> Result<Runner> {
        contain_panic(|| Runner::build(model, binding, extra_outputs))
    }

    fn build(model: &Model, binding: &Binding, extra_outputs: &[String]) -> Result<Runner> {
        let inputs = feedable_inputs(model, binding)?;
        if let Some(why) = first_op_tract_crashes_on(&model.graph) {
            return Err(Unrunnable(why).into());
        }
        if let Some((node, op)) = first_opaque_op(model) {
            return Err(Unrunnable(format!(
                "tract cannot run {op} at {node}: operators of this domain are not implemented"
            ))
            .into());
        }
        let tract_proto = tract_proto(model).context("re-reading the model for tract")?;
        let unrunnable =
            |e: anyhow::Error| -> anyhow::Error { Unrunnable(describe_failure(model, &e)).into() };
        let mut inference = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_proto_model(&tract_proto)
            .map_err(unrunnable)?;
        let outlets = inference.input_outlets()?.to_vec();
        for (i, outlet) in outlets.iter().enumerate() {
            let name = inference.node(outlet.node).name.clone();
            let spec = inputs.iter().find(|s| s.name == name).with_context(|| {
                format!("tract sees an input '{name}' the graph does not declare")
            })?;
            let dt =
                datum(spec.dtype).with_context(|| format!("input '{name}': unsupported type"))?;
            inference.set_input_fact(i, InferenceFact::dt_shape(dt, spec.shape.clone()))?;
        }
        let mut outputs: Vec<String> = model
            .graph
            .outputs()
            .iter()
            .map(|o| model.graph.value(o.value).name().to_string())
            .collect();
        outputs.extend(extra_outputs.iter().cloned());
        let selected = outputs
            .iter()
            .map(|name| {
                inference
                    .find_outlet_label(name)
                    .ok_or_else(|| anyhow!("tract does not expose a value named '{name}'"))
            })
            .collect::<Result<Vec<_>>>()?;
        inference.select_output_outlets(&selected)?;
        let typed = inference.clone().into_typed().and_then(|mut m| {
            // tract's declutter without its ChangeAxes pass: for a plan that runs once, moving
            // axes through the graph costs more than it saves, since it copies every weight it
            // touches (ResNet-50's check is about 10% faster without it). Found by name: should
            // a tract upgrade rename it, it stays and checks are only slower.
            let mut declutter = tract_onnx::tract_core::optim::Optimizer::declutter();
            declutter
                .passes
                .retain(|p| format!("{p:?}") != "ChangeAxes");
            declutter.optimize(&mut m)?;
            m.optimize()?;
            m.into_runnable()
        });
        let plan = match typed {
            Ok(plan) => Plan::Typed(plan),
            Err(typed_err) => match inference.into_runnable() {
                Ok(plan) => Plan::Inference(plan),
                Err(_) => return Err(unrunnable(typed_err)),
            },
        };
        Ok(Runner {
            plan,
            inputs,
            outputs,
        })
    }

    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
        contain_panic(|| {
            let tv: TVec<_> = inputs.iter().map(|t| t.0.clone().into_tvalue()).collect();
            let out = match &self.plan {
                Plan::Typed(p) => p.run(tv),
                Plan::Inference(p) => p.run(tv),
            }
            .map_err(|e| anyhow!(Unrunnable(format!("tract failed while running: {e:#}"))))?;
            Ok(out
                .into_iter()
                .map(|v| HostTensor(v.into_tensor()))
                .collect())
        })
    }
}

/// What tract proves about one value: its element type and, when the rank is known, its dims
/// (`Dim::Sym` holds tract's expression of the graph inputs' symbols, so two equal `Sym`s are
/// the same length whatever the inputs are).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fact {
    pub dtype: Option<DType>,
    pub shape: Option<Vec<Dim>>,
}

/// Facts about the values of the top-level graph and of its If, Loop and Scan bodies, by
/// name. Graph inputs keep their declared types and dims, with symbols (and unknown dims) left
/// symbolic; declared shapes of inner values and outputs are ignored, since exports get them
/// wrong. Values tract cannot analyse are absent, and so are names that several graphs define
/// unless each of them gives the same fact.
#[derive(Debug, Default)]
pub struct Facts(HashMap<String, Fact>);

impl Facts {
    pub fn get(&self, name: &str) -> Option<&Fact> {
        self.0.get(name)
    }

    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.get(name)?.dtype
    }

    pub fn shape(&self, name: &str) -> Option<&[Dim]> {
        self.get(name)?.shape.as_deref()
    }

    pub fn rank(&self, name: &str) -> Option<usize> {
        self.shape(name).map(<[Dim]>::len)
    }

    /// The dims, each `Some` when it is the same whatever the inputs are.
    pub fn dims(&self, name: &str) -> Option<Vec<Option<i64>>> {
        Some(
            self.shape(name)?
                .iter()
                .map(|d| match d {
                    Dim::Known(n) => Some(*n),
                    _ => None,
                })
                .collect(),
        )
    }

    /// Whether `a` and `b` provably have the same shape for every input.
    pub fn same_shape(&self, a: &str, b: &str) -> bool {
        let (Some(x), Some(y)) = (self.shape(a), self.shape(b)) else {
            return false;
        };
        x.len() == y.len()
            && x.iter().zip(y).all(|(p, q)| match (p, q) {
                (Dim::Known(m), Dim::Known(n)) => m == n,
                (Dim::Sym(m), Dim::Sym(n)) => m == n,
                _ => false,
            })
    }
}

/// tract's copy of `model`. The main graph's initializer payloads travel beside the protobuf,
/// not in it: encoding every weight into one buffer only for tract to decode it back out would
/// copy each of them twice more, which costs more than building tract's plan for ResNet-50.
fn tract_proto(model: &Model) -> Result<tract_onnx::pb::ModelProto> {
    let mut proto = model.to_proto()?;
    let payloads: Vec<bytes::Bytes> = proto
        .graph
        .iter_mut()
        .flat_map(|g| g.initializer.iter_mut())
        .map(|t| std::mem::take(&mut t.raw_data))
        .collect();
    let mut decoded = tract_onnx::pb::ModelProto::decode(&*proto.encode_to_vec())?;
    if let Some(g) = decoded.graph.as_mut() {
        for (t, raw) in g.initializer.iter_mut().zip(payloads) {
            t.raw_data = raw.to_vec();
        }
    }
    Ok(decoded)
}

/// Infers [`Facts`] with tract. Ops tract cannot analyse (an `If` whose branches disagree, a
/// Reshape it cannot resolve, a `Loop`, which tract does not implement) leave their own
/// outputs, and what depends on them, unknown instead of failing the whole model; tract's
/// typed model, when it builds, refines the rest. The bodies of If, Loop and Scan nodes are
/// analysed too (see [`gather`]).
pub fn infer_facts(model: &Model) -> Facts {
    let mut gathered = Gathered::default();
    let main = contain_panic(|| infer(model)).unwrap_or_default();
    gather(model, &model.graph, main, None, &mut gathered);
    gathered.agreed(&model.graph)
}

/// What is known of the values a graph can read: its own, then those of the graphs around it.
struct Visible<'a> {
    own: &'a HashMap<String, Fact>,
    outer: Option<&'a Visible<'a>>,
}

impl Visible<'_> {
    fn get(&self, name: &str) -> Option<&Fact> {
        self.own.get(name).or_else(|| self.outer?.get(name))
    }
}

/// Whether a value so defined belongs to its graph: captures belong to an outer one, and a
/// name only declared in value_info holds nothing.
fn own(def: Def) -> bool {
    !matches!(def, Def::Capture | Def::Declared)
}

/// The facts of every analysed graph, by name: each fact with how many graphs gave it, and
/// the names two graphs gave different facts. Sibling bodies may reuse a name for different
/// values, and [`Facts`] are looked up by name alone.
#[derive(Default)]
struct Gathered {
    agreed: HashMap<String, (Fact, usize)>,
    clashed: HashSet<String>,
}

impl Gathered {
    fn add(&mut self, name: &str, fact: &Fact) {
        if self.clashed.contains(name) {
            return;
        }
        match self.agreed.get_mut(name) {
            Some((known, _)) if known != fact => {
                self.agreed.remove(name);
                self.clashed.insert(name.to_string());
            }
            Some((_, graphs)) => *graphs += 1,
            None => {
                self.agreed.insert(name.to_string(), (fact.clone(), 1));
            }
        }
    }

    /// The facts of names that every graph of `main`'s tree defining them gave alike. A name
    /// also defined in a graph that was not analysed, or where tract learnt nothing of it, is
    /// dropped: a lookup by name could not tell the two values apart, and no fact is better
    /// than a wrong one.
    fn agreed(mut self, main: &Graph) -> Facts {
        fn count(g: &Graph, defined: &mut HashMap<String, usize>) {
            for (_, v) in g.values().filter(|(_, v)| own(v.def())) {
                *defined.entry(v.name().to_string()).or_default() += 1;
            }
            for n in g.node_ids() {
                for body in g.node(n).attrs().iter().flat_map(|a| a.bodies()) {
                    count(body, defined);
                }
            }
        }
        let mut defined = HashMap::new();
        count(main, &mut defined);
        self.agreed
            .retain(|name, (_, graphs)| defined.get(name).is_some_and(|d| d == graphs));
        Facts(self.agreed.into_iter().map(|(n, (f, _))| (n, f)).collect())
    }
}

/// Adds what tract `found` about the values `g` defines, then analyses the bodies of `g`'s If,
/// Loop and Scan nodes in turn, each as a model of its own typed by [`body_types`]. Bodies of
/// other ops, and those whose types are not known, are left unanalysed; the bodies inside them
/// are still tried, since what they capture may come from further out.
fn gather(
    model: &Model,
    g: &Graph,
    mut found: HashMap<String, Fact>,
    outer: Option<&Visible>,
    out: &mut Gathered,
) {
    // A capture's fact in a body's analysis is the outer one, less precise where that had
    // unknown dims.
    found.retain(|name, _| g.find(name).is_some_and(|v| own(g.value(v).def())));
    for (name, fact) in &found {
        out.add(name, fact);
    }
    let visible = Visible { own: &found, outer };
    let mut nodes: Vec<_> = g.node_ids().collect();
    nodes.sort();
    for n in nodes {
        for body in g.node(n).attrs().iter().flat_map(|a| a.bodies()) {
            let found = body_types(g, n, body, &visible)
                .and_then(|t| model.of_body(body, &t.inputs, &t.captures).ok())
                .map(|sub| contain_panic(|| infer(&sub)).unwrap_or_default())
                .unwrap_or_default();
            gather(model, body, found, Some(&visible), out);
        }
    }
}

/// The types a body is analysed with: its own inputs', in order, and its captures'.
struct BodyTypes {
    inputs: Vec<Type>,
    captures: Vec<(String, Type)>,
}

/// The types body `body` of node `n` of `g` is analysed with, or `None` when they are not
/// known: only what holds on every run of the body. Captures are the same outer values on
/// every run, so they are typed by what is known of them outside. A Loop's iteration number and condition are an int64 and a bool scalar, as
/// the operator defines. Loop-carried values, Scan states and scan slices may change shape
/// from one iteration to the next, so they get only their element type: the initial value's,
/// or else the body's declaration of it.
fn body_types(g: &Graph, n: NodeId, body: &Graph, visible: &Visible) -> Option<BodyTypes> {
    let node = g.node(n);
    if !["If", "Loop", "Scan"].iter().any(|op| node.is(op)) {
        return None;
    }
    let captures = (body.captures().iter())
        .map(|&v| {
            let name = body.value(v).name();
            let fact = visible.get(name)?;
            Some((
                name.to_string(),
                Type::tensor(fact.dtype?, fact.shape.clone()?),
            ))
        })
        .collect::<Option<_>>()?;
    if node.inputs().len() < body.inputs().len() {
        return None;
    }
    let feeds = g.body_feeds(n, body.inputs().len());
    let inputs = (body.inputs().iter().zip(feeds))
        .map(|(&v, feed)| match feed {
            BodyFeed::Made(dtype) => Some(Type::tensor(dtype, Vec::new())),
            BodyFeed::Input(fed) => {
                let dtype = fed
                    .and_then(|x| visible.get(g.value(x).name())?.dtype)
                    .or_else(|| body.dtype(v))?;
                Some(Type::Tensor { dtype, shape: None })
            }
        })
        .collect::<Option<_>>()?;
    Some(BodyTypes { inputs, captures })
}

fn dim_of(d: &tract_onnx::prelude::TDim) -> Dim {
    match d.as_i64() {
        Some(n) => Dim::Known(n),
        None => Dim::Sym(d.to_string()),
    }
}

/// A graph input's declared dims, each unknown, negative or `?` one (exports write -1 or `?`
/// for "any", which must not make two such dims equal) turned into a symbol of its own.
fn input_shape(g: &crate::ir::Graph, v: crate::ir::ValueId) -> Option<Vec<Dim>> {
    let name = g.value(v).name();
    let dims = g.shape(v)?.iter().enumerate().map(|(j, d)| match d {
        Dim::Known(n) if *n >= 0 => Dim::Known(*n),
        Dim::Sym(s) if s != "?" => Dim::Sym(s.clone()),
        _ => Dim::Sym(format!("unknown_{name}_{j}")),
    });
    Some(dims.collect())
}

fn infer(model: &Model) -> Result<HashMap<String, Fact>> {
    if let Some(why) = first_op_tract_crashes_on(&model.graph) {
        bail!(why);
    }
    use tract_hir::infer::Factoid;
    use tract_onnx::prelude::{OutletId, TDim};
    let mut proto = model.to_proto()?;
    // Large constants (weights) only matter to shapes through their dims: hand them to tract as
    // inputs of known shape, so analysis does not copy or fold megabytes of weights.
    let mut weights: HashMap<String, (DType, Vec<i64>)> = HashMap::new();
    if let Some(gp) = proto.graph.as_mut() {
        gp.initializer.retain(|t| {
            let big = Tensor::from_proto(t.clone()).stored_bytes() > 4096;
            if big {
                weights.insert(t.name.clone(), (DType(t.data_type), t.dims.clone()));
            }
            !big
        });
        let mut names: Vec<&String> = weights.keys().collect();
        names.sort();
        for name in names {
            let (dtype, dims) = &weights[name];
            let shape = dims.iter().map(|&d| Dim::Known(d)).collect();
            gp.input.push(
                crate::ir::ValueInfo::of(crate::ir::Type::tensor(*dtype, shape)).to_proto(name),
            );
        }
    }
    let tract_proto = tract_onnx::pb::ModelProto::decode(&*proto.encode_to_vec())?;
    let mut inference = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true)
        .model_for_proto_model(&tract_proto)?;
    let g = &model.graph;
    let outlets = inference.input_outlets()?.to_vec();
    for (i, outlet) in outlets.iter().enumerate() {
        let name = inference.node(outlet.node).name.clone();
        if let Some((dtype, dims)) = weights.get(&name) {
            let dt = datum(*dtype).context("weight of unknown type")?;
            let dims: Vec<TDim> = dims.iter().map(|&d| TDim::from(d)).collect();
            inference.set_input_fact(i, InferenceFact::dt_shape(dt, dims))?;
            continue;
        }
        let v = g.find(&name).context("tract input not in the graph")?;
        let dt = g
            .dtype(v)
            .and_then(datum)
            .context("input of unknown type")?;
        // An input of unknown rank (a loop-carried value, whose shape may change from one
        // iteration to the next) is told its element type alone.
        let Some(shape) = input_shape(g, v) else {
            inference.set_input_fact(i, InferenceFact::dt(dt))?;
            continue;
        };
        let dims: Vec<TDim> = shape
            .iter()
            .map(|d| match d {
                Dim::Known(n) => TDim::from(*n),
                _ => TDim::from(inference.symbols.sym(&d.to_string())),
            })
            .collect();
        inference.set_input_fact(i, InferenceFact::dt_shape(dt, dims))?;
    }
    // Obstinate: an op that fails analysis does not stop the others.
    let _ = inference.analyse(true);
    let mut out: HashMap<String, Fact> = HashMap::new();
    for node in inference.nodes() {
        for (slot, fact) in node.outputs.iter().enumerate() {
            let Some(label) = inference.outlet_label(OutletId::new(node.id, slot)) else {
                continue;
            };
            let shape = (!fact.fact.shape.is_open()).then(|| {
                fact.fact
                    .shape
                    .dims()
                    .map(|d| d.concretize().map_or(Dim::Unknown, |d| dim_of(&d)))
                    .collect()
            });
            let dtype = fact.fact.datum_type.concretize().and_then(dtype_of);
            out.insert(label.to_string(), Fact { dtype, shape });
        }
    }
    if let Ok(typed) = inference.into_typed() {
        for node in typed.nodes() {
            for (slot, fact) in node.outputs.iter().enumerate() {
                let Some(label) = typed.outlet_label(OutletId::new(node.id, slot)) else {
                    continue;
                };
                let shape = fact.fact.shape.iter().map(dim_of).collect();
                let dtype = dtype_of(fact.fact.datum_type);
                out.insert(
                    label.to_string(),
                    Fact {
                        dtype,
                        shape: Some(shape),
                    },
                );
            }
        }
    }
    // Graph inputs are the interface: their declared types and dims hold by definition.
    for &v in g.inputs() {
        out.insert(
            g.value(v).name().to_string(),
            Fact {
                dtype: g.dtype(v),
                shape: input_shape(g, v),
            },
        );
    }
    for (name, (dtype, dims)) in weights {
        let shape = dims.into_iter().map(Dim::Known).collect();
        out.insert(
            name,
            Fact {
                dtype: Some(dtype),
                shape: Some(shape),
            },
        );
    }
    Ok(out)
}

thread_local! {
    /// Whether this thread is inside [`contain_panic`].
    static CONTAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside tract into an `Unrunnable` error. tract's panic message
/// goes into that error instead of onto stderr, where it would read as our crash. The panic
/// hook is installed once and silences only the threads inside this call: swapping the
/// process-wide hook per call would race between threads (the check runs two models at once)
/// and could leave every later panic silent.
fn contain_panic<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(|c| c.get()) {
                previous(info);
            }
        }));
    });
    let outer = CONTAINED.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(outer));
    result.unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(Unrunnable(format!("tract cannot run this model: it panicked: {msg}")).into())
    })
}

/// Operators and the least rank of their first input that tract handles: below it, tract
/// indexes the channel axis out of bounds (a crash no panic guard catches), so such a model
/// must never reach it. Each is either invalid ONNX there or, for a rank-1 BatchNormalization,
/// a corner tract does not implement.
const MIN_RANK: &[(&str, usize)] = &[
    ("BatchNormalization", 2),
    ("InstanceNormalization", 3),
    ("LRN", 3),
    ("Conv", 3),
    ("ConvTranspose", 3),
    ("MaxPool", 3),
    ("AveragePool", 3),
    ("LpPool", 3),
    ("GlobalAveragePool", 3),
    ("GlobalMaxPool", 3),
    ("GlobalLpPool", 3),
];

/// The first node, in any graph, that would crash tract rather than fail in it: one whose
/// first input is known before any inference (an initializer, or a graph input as declared,
/// which is what tract is told) to have a rank below what tract handles for its operator, or a
/// Transpose whose perm repeats or skips an axis (tract, decomposing it into axis moves, grows
/// a list until memory runs out); described for the user.
fn first_op_tract_crashes_on(g: &crate::ir::Graph) -> Option<String> {
    for n in g.node_ids() {
        let node = g.node(n);
        if let Some(found) = node
            .attrs()
            .iter()
            .flat_map(|a| a.bodies())
            .find_map(first_op_tract_crashes_on)
        {
            return Some(found);
        }
        if let Some(perm) = node.attr_ints("perm").filter(|_| node.is("Transpose")) {
            let mut sorted = perm.to_vec();
            sorted.sort_unstable();
            if !sorted.iter().copied().eq(0..perm.len() as i64) {
                return Some(format!(
                    "tract cannot run Transpose at node '{}': perm {perm:?} is not a permutation of its axes",
                    node.name()
                ));
            }
        }
        let Some(&(_, least)) = MIN_RANK.iter().find(|(op, _)| node.is(op)) else {
            continue;
        };
        let Some(x) = node.input(0) else { continue };
        let rank = match g.value(x).def() {
            Def::Initializer => g.value(x).initializer().map(|t| t.dims().len()),
            Def::Input => g.shape(x).map(<[Dim]>::len),
            _ => None,
        };
        if let Some(rank) = rank.filter(|&r| r < least) {
            return Some(format!(
                "tract cannot run {} at node '{}': its input has rank {rank}, below {least}",
                node.op(),
                node.name()
            ));
        }
    }
    None
}

/// The first operator of a domain tract has no operators for.
fn first_opaque_op(model: &Model) -> Option<(String, String)> {
    let g = &model.graph;
    let n = g
        .topo_order()
        .ok()?
        .into_iter()
        .find(|&n| !g.node(n).in_standard_domain())?;
    let node = g.node(n);
    Some((format!("node '{}'", node.name()), node.qualified_op()))
}

/// Turns tract's error chain into "tract cannot run <op> at <node>: <reason>".
fn describe_failure(model: &Model, e: &anyhow::Error) -> String {
    let chain = format!("{e:#}");
    let g = &model.graph;
    let culprit = g.node_ids().find(|&n| {
        let name = g.node(n).name();
        !name.is_empty() && chain.contains(&format!("\"{name}\""))
    });
    let root = e.root_cause().to_string();
    match culprit {
        Some(n) => {
            let node = g.node(n);
            format!(
                "tract cannot run {} at node '{}': {root}",
                node.op(),
                node.name()
            )
        }
        None => format!("tract cannot run this model: {chain}"),
    }
}

/// Computes constant regions of a model's graphs in tract: what folding needs, with the
/// model's opsets, and nothing else of it.
pub struct Evaluator {
    ir_version: i64,
    opsets: Vec<(String, i64)>,
}

impl Evaluator {
    pub fn of(model: &Model) -> Evaluator {
        Evaluator {
            ir_version: model.ir_version(),
            opsets: model.opsets().map(|(d, v)| (d.to_string(), v)).collect(),
        }
    }

    /// The values of `outputs`, computed by `nodes` of `g` (in an order where each runs after
    /// what it reads) from the constants they read.
    pub fn evaluate(
        &self,
        g: &crate::ir::Graph,
        nodes: &[crate::ir::NodeId],
        outputs: &[crate::ir::ValueId],
    ) -> Result<Vec<Tensor>> {
        // The guard against ops tract crashes on sees only the ranks of constants, not of values
        // computed inside a cone: such an op is evaluated alone, once what it reads is constant
        // (found by the pipeline fuzzer: a Conv of a scalar computed by a Mul).
        let guarded = |n: crate::ir::NodeId| MIN_RANK.iter().any(|(op, _)| g.node(n).is(op));
        if nodes.len() > 1 && nodes.iter().any(|&n| guarded(n)) {
            bail!("the constants read by a Conv-like op are computed first");
        }
        let opsets: Vec<(&str, i64)> = self.opsets.iter().map(|(d, v)| (d.as_str(), *v)).collect();
        let sub = Model::new(g.extract(nodes, outputs)?, self.ir_version, &opsets, "");
        let runner = Runner::new(&sub, &Binding::default(), &[])?;
        runner
            .run(&[])?
            .iter()
            .map(|v| {
                v.to_tensor()
                    .ok_or_else(|| anyhow!("a folded value has a type ONNX cannot store"))
            })
            .collect()
    }
}

/// tract plans of one model that also return `extra` values, one plan per set of input
/// shapes: samples may differ in their dynamic dims.
pub struct Plans<'a> {
    model: &'a Model,
    extra: &'a [String],
    inputs: Vec<String>,
    built: Vec<(Vec<Vec<usize>>, Runner)>,
}

impl<'a> Plans<'a> {
    pub fn new(model: &'a Model, extra: &'a [String]) -> Result<Plans<'a>> {
        let inputs = input_specs(model, &Binding::default())?
            .into_iter()
            .map(|s| s.name)
            .collect();
        Ok(Plans {
            model,
            extra,
            inputs,
            built: Vec::new(),
        })
    }

    /// The `extra` values of the model run on `sample` (one value per input, in order).
    pub fn extras(&mut self, sample: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let mut out = self.run(sample)?;
        Ok(out.split_off(out.len() - self.extra.len()))
    }

    fn run(&mut self, sample: &[HostTensor]) -> Result<Vec<HostTensor>> {
        let shapes: Vec<Vec<usize>> = sample.iter().map(|t| t.shape().to_vec()).collect();
        let at = match self.built.iter().position(|(s, _)| *s == shapes) {
            Some(i) => i,
            None => {
                let mut binding = Binding::default();
                for (name, shape) in self.inputs.iter().zip(&shapes) {
                    binding.input_shapes.insert(name.clone(), shape.clone());
                }
                let runner = Runner::new(self.model, &binding, self.extra)?;
                self.built.push((shapes, runner));
                self.built.len() - 1
            }
        };
        self.built[at].1.run(sample)
    }
}
