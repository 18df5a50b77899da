//! Compensation for the channels pruning removes, measured on calibration samples instead of
//! fine-tuning. Every reader of removed channels (a Conv, ConvTranspose-free, or a Gemm) is
//! looked at in the model before pruning, where its input still has every channel:
//!
//! - its bias absorbs the removed channels' mean contribution: b'ₒ = bₒ + Σᵣ Wₒᵣ · E[xᵣ]
//!   (a Conv's kernel taps summed; positions in the padding are counted as if inside);
//! - a reader that multiplies one input vector at a time (a Gemm, a Conv with a 1×1 kernel and
//!   no padding) has its kept weights and bias refitted by least squares, so that on the
//!   samples W'x_kept + b' comes closest to what W x + b gave with every channel, with a
//!   ridge term pulling towards the original weights. The second moments are accumulated as
//!   the samples stream by, at most [`REFIT_MAX_INPUTS`] inputs per reader, so memory stays
//!   bounded; wider readers get the bias correction only.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use serde::Serialize;

use super::groups::{Edit, Groups};
use super::remove::{replace_input, Plan};
use super::Unpruned;
use crate::ir::{Model, NodeId, Patch, Tensor};
use crate::lossy::Samples;
use crate::passes::{Changed, Pass, PassContext};
use crate::runtime::{HostTensor, Plans, WORKERS};

/// Readers with more inputs than this are corrected in their bias only: the moment matrix
/// grows with the square of the inputs and its solve with the cube.
pub const REFIT_MAX_INPUTS: usize = 1024;

/// Positions of a Conv's input sampled per calibration sample for the refit.
const POSITIONS_PER_SAMPLE: usize = 64;

/// Ridge strength, relative to the mean diagonal of the moment matrix.
const RIDGE: f64 = 1e-3;

#[derive(Clone, Debug, Default, Serialize)]
pub struct CompensationReport {
    pub samples: usize,
    /// Readers whose bias absorbed the removed channels' mean contribution.
    pub bias_corrected: usize,
    /// Readers whose weights were refitted too.
    pub refitted: usize,
    /// Readers left as they were, with why.
    pub skipped: Vec<(String, String)>,
}

/// `compensate-pruning`: each reader of removed channels takes in what they contributed,
/// measured on the calibration [`Samples`] in the model the plan was made on ([`Unpruned`]):
///
/// ```text
///   Conv(W[:, kept], b) ─▶ y            ⇒   Conv(W', b + Σ_removed W·E[x]) ─▶ y
///   (W' refitted by least squares where the reader takes one input vector at a time)
/// ```
///
/// Needs the prune stage's [`Plan`] and [`Unpruned`] model and the samples; without them it
/// changes nothing. Main graph only, like pruning. Provides a [`CompensationReport`].
pub struct Compensate;

impl Pass for Compensate {
    fn id(&self) -> &'static str {
        "compensate-pruning"
    }

    fn about(&self) -> &'static str {
        "fold the removed channels' mean contribution into their readers and refit them on the samples (when pruning has samples)"
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed> {
        let (Some(plan), Some(Unpruned(before)), Some(samples)) =
            (cx.get::<Plan>(), cx.get::<Unpruned>(), cx.get::<Samples>())
        else {
            return Ok(Changed::No);
        };
        cx.progress().step("compensating for the removed channels");
        let report = compensate(before, model, plan, &samples.calibration)?;
        let changed = Changed::from_count(report.bias_corrected);
        cx.provide(report);
        Ok(changed)
    }
}

/// The mean |x| per channel of one value of each group on `samples` (`None` for a group with
/// no value the samples reach).
pub fn channel_means(
    model: &Model,
    found: &Groups,
    samples: &[Vec<HostTensor>],
) -> Result<Vec<Option<Vec<f64>>>> {
    let g = &model.graph;
    // The value a reader sees is what matters: prefer one read by a Conv or Gemm.
    let pick: Vec<Option<(String, usize)>> = found
        .groups
        .iter()
        .map(|grp| {
            let read = grp.values.iter().find(|(v, _)| {
                g.value(*v).uses().iter().any(|u| {
                    found
                        .edits
                        .iter()
                        .any(|e| matches!(e, Edit::In { node, .. } if *node == u.node))
                })
            });
            read.or(grp.values.first())
                .filter(|(v, _)| g.producer(*v).is_some())
                .map(|(v, axis)| (g.value(*v).name().to_string(), *axis))
        })
        .collect();
    let names: Vec<String> = pick.iter().flatten().map(|(n, _)| n.clone()).collect();
    let axes: HashMap<&str, usize> = pick
        .iter()
        .flatten()
        .map(|(n, a)| (n.as_str(), *a))
        .collect();
    let mut sums: HashMap<String, (Vec<f64>, f64)> = HashMap::new();
    let mut plans = Plans::new(model, &names)?;
    for sample in samples {
        for (name, t) in names.iter().zip(plans.extras(sample)?) {
            let Some(values) = t.to_f32() else { continue };
            let shape = t.shape();
            let axis = axes[name.as_str()];
            let Some(&c) = shape.get(axis) else { continue };
            let inner: usize = shape[axis + 1..].iter().product();
            let entry = sums
                .entry(name.clone())
                .or_insert_with(|| (vec![0.0; c], 0.0));
            if entry.0.len() != c {
                continue;
            }
            for (i, x) in values.iter().enumerate() {
                entry.0[(i / inner.max(1)) % c] += x.abs() as f64;
            }
            entry.1 += (values.len() / c.max(1)) as f64;
        }
    }
    Ok(pick
        .iter()
        .map(|p| {
            let (s, n) = sums.get(&p.as_ref()?.0)?;
            Some(s.iter().map(|x| x / n.max(1.0)).collect())
        })
        .collect())
}

/// One reader to compensate: where it is, what it reads, what it keeps.
struct Reader {
    node: NodeId,
    name: String,
    input: String,
    /// Kept indices along its input's channel axis (after any Flatten: elements).
    kept: Vec<usize>,
    /// Input channels (elements) in the original.
    width: usize,
    /// The outputs it keeps (it may make channels that are pruned too), ascending.
    outputs: Option<Vec<usize>>,
    refit: bool,
    /// Running sums: Σx per input index and the count of vectors seen.
    sum: Vec<f64>,
    count: f64,
    /// Running Σ u uᵀ for u = [x; 1] (refit only), row-major.
    moment: Vec<f64>,
    moment_count: f64,
}

/// Folds the removed channels' contribution into the readers of `pruned`, measured on the
/// model before pruning (`before`, where the plan was made) over `samples`.
pub fn compensate(
    before: &Model,
    pruned: &mut Model,
    plan: &Plan,
    samples: &[Vec<HostTensor>],
) -> Result<CompensationReport> {
    let g = &before.graph;
    let mut report = CompensationReport {
        samples: samples.len(),
        ..Default::default()
    };
    let mut readers: Vec<Reader> = Vec::new();
    for e in &plan.groups.edits {
        let Edit::In { node, layout } = e else {
            continue;
        };
        let kept = layout.kept(&plan.kept);
        if kept.len() == layout.extent() {
            continue;
        }
        let n = g.node(*node);
        let name = n.name().to_string();
        let pointwise = n.is("Gemm") || (n.is("Conv") && conv_pointwise(before, *node));
        let scaled = n.attr_f("alpha").is_some_and(|a| a != 1.0)
            || n.attr_f("beta").is_some_and(|b| b != 1.0);
        if n.is("Gemm") && scaled {
            report
                .skipped
                .push((name, "a Gemm with alpha or beta other than 1".to_string()));
            continue;
        }
        if !(n.is("Gemm") || n.is("Conv")) {
            report.skipped.push((
                name,
                format!("a {} has no bias to absorb the removed channels", n.op()),
            ));
            continue;
        }
        let Some(x) = n.input(0).filter(|&x| g.producer(x).is_some()) else {
            continue;
        };
        let width = layout.extent();
        let refit = pointwise && width <= REFIT_MAX_INPUTS;
        let outputs = plan.groups.edits.iter().find_map(|e| match e {
            Edit::Out { node: o, group } if o == node => Some(plan.kept[*group].clone()),
            _ => None,
        });
        readers.push(Reader {
            node: *node,
            name,
            outputs,
            input: g.value(x).name().to_string(),
            kept,
            width,
            refit,
            sum: vec![0.0; width],
            count: 0.0,
            moment: if refit {
                vec![0.0; (width + 1) * (width + 1)]
            } else {
                Vec::new()
            },
            moment_count: 0.0,
        });
    }
    if readers.is_empty() {
        return Ok(report);
    }
    let mut names: Vec<String> = readers.iter().map(|r| r.input.clone()).collect();
    names.sort();
    names.dedup();
    let mut plans = Plans::new(before, &names)?;
    // Readers take turns between the two workers, so the large ones spread.
    let half = readers.len().div_ceil(WORKERS).max(1);
    for sample in samples {
        let values = plans.extras(sample)?;
        let at = |r: &Reader| &values[names.binary_search(&r.input).expect("listed")];
        std::thread::scope(|s| {
            for part in readers.chunks_mut(half) {
                s.spawn(|| part.iter_mut().for_each(|r| observe(r, at(r))));
            }
        });
    }
    let fits: Vec<Option<Fit>> = std::thread::scope(|s| {
        let workers: Vec<_> = readers
            .chunks(half)
            .map(|part| {
                (
                    part.len(),
                    s.spawn(|| part.iter().map(|r| fit(before, r)).collect::<Vec<_>>()),
                )
            })
            .collect();
        // A worker that panicked fits none of its readers; the others stay in step.
        workers
            .into_iter()
            .flat_map(|(len, w)| {
                w.join()
                    .unwrap_or_else(|_| (0..len).map(|_| None).collect())
            })
            .collect()
    });
    let mut p = Patch::new(&mut pruned.graph);
    for (r, f) in readers.iter().zip(fits) {
        // The pruned model is the model before pruning, edited: its nodes keep their ids.
        let g = p.graph();
        let same = g.contains_node(r.node) && g.node(r.node).op() == before.graph.node(r.node).op();
        let Some(f) = f.filter(|_| same) else {
            continue;
        };
        if write(&mut p, r.node, r, &f)? {
            report.bias_corrected += 1;
            report.refitted += usize::from(f.refitted);
        }
    }
    p.commit()?;
    Ok(report)
}

/// A reader's new weight (in its op's layout) and bias.
struct Fit {
    wdims: Vec<i64>,
    w: Vec<f32>,
    b: Vec<f32>,
    refitted: bool,
}

/// A Conv whose kernel is 1×…×1 with no padding: each output reads one input vector.
fn conv_pointwise(m: &Model, n: NodeId) -> bool {
    let g = &m.graph;
    let node = g.node(n);
    let kernel_ones = node
        .input(1)
        .and_then(|w| g.value(w).constant())
        .is_some_and(|t| t.dims().len() >= 3 && t.dims()[2..].iter().all(|&d| d == 1));
    let no_pads = node
        .attr_ints("pads")
        .is_none_or(|p| p.iter().all(|&x| x == 0));
    let explicit = node
        .attr_s("auto_pad")
        .is_none_or(|a| a == b"NOTSET" || a == b"VALID");
    kernel_ones && no_pads && explicit && node.attr_i("group").unwrap_or(1) == 1
}

/// Accumulates one sample's input of reader `r`: channel sums, and for a refit the moments of
/// up to [`POSITIONS_PER_SAMPLE`] positions picked evenly (and deterministically).
fn observe(r: &mut Reader, t: &HostTensor) {
    let Some(v) = t.to_f32() else { return };
    let shape = t.shape();
    if shape.len() < 2 || shape[1] != r.width {
        return;
    }
    let (n, c) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    for b in 0..n {
        for ch in 0..c {
            let base = (b * c + ch) * inner;
            r.sum[ch] += v[base..base + inner].iter().map(|&x| x as f64).sum::<f64>();
        }
    }
    r.count += (n * inner) as f64;
    if !r.refit {
        return;
    }
    let positions = n * inner;
    let step = positions.div_ceil(POSITIONS_PER_SAMPLE).max(1);
    let d = c + 1;
    let mut u = vec![0f64; d];
    for pos in (0..positions).step_by(step) {
        let (b, i) = (pos / inner.max(1), pos % inner.max(1));
        for ch in 0..c {
            u[ch] = v[(b * c + ch) * inner + i] as f64;
        }
        u[c] = 1.0;
        // The upper triangle only: the moment is symmetric.
        for a in 0..d {
            let ua = u[a];
            if ua == 0.0 {
                continue;
            }
            let row = &mut r.moment[a * d + a..(a + 1) * d];
            for (m, &ub) in row.iter_mut().zip(&u[a..]) {
                *m += ua * ub;
            }
        }
        r.moment_count += 1.0;
    }
}

/// The pruned reader's weight and bias from `r`'s statistics and its original weight in
/// `before`; `None` when its tensors are not what the statistics describe.
fn fit(before: &Model, r: &Reader) -> Option<Fit> {
    let g0 = &before.graph;
    let orig = g0.node(r.node);
    let w0 = orig
        .input(1)
        .and_then(|w| g0.value(w).constant())
        .and_then(|t| Some((t.dims().to_vec(), t.to_f32_vec()?)))?;
    let b0 = orig
        .input(2)
        .and_then(|b| g0.value(b).constant())
        .and_then(Tensor::to_f32_vec);
    // The original weight as [out][in][taps], whatever the op's layout.
    let (dims, w) = w0;
    let gemm = orig.is("Gemm");
    let trans_b = orig.attr_i("transB") == Some(1);
    let (out_axis, in_axis) = crate::passes::channels::weight_axes(orig);
    let (outs, ins) = (dims[out_axis] as usize, dims[in_axis] as usize);
    if ins != r.width || r.count == 0.0 {
        return None;
    }
    let taps: usize = if gemm {
        1
    } else {
        dims[2..].iter().map(|&d| d as usize).product()
    };
    let at = |o: usize, i: usize, k: usize| -> f64 {
        let idx = if gemm {
            if trans_b {
                o * ins + i
            } else {
                i * outs + o
            }
        } else {
            (o * ins + i) * taps + k
        };
        w[idx] as f64
    };
    let bias: Vec<f64> = b0.map_or(vec![0.0; outs], |b| b.iter().map(|&x| x as f64).collect());
    if bias.len() != outs && bias.len() != 1 {
        return None;
    }
    let bias_of = |o: usize| if bias.len() == 1 { bias[0] } else { bias[o] };
    let kept_outputs: Vec<usize> = r.outputs.clone().unwrap_or_else(|| (0..outs).collect());
    let mean: Vec<f64> = r.sum.iter().map(|s| s / r.count).collect();
    let kept = &r.kept;
    let mut removed = vec![true; ins];
    for &k in kept {
        removed[k] = false;
    }
    // new_w[o][j][k] for kept j, new_b[o].
    let mut new_w: Vec<f64> = Vec::with_capacity(kept_outputs.len() * kept.len() * taps);
    for &o in &kept_outputs {
        for &j in kept {
            for k in 0..taps {
                new_w.push(at(o, j, k));
            }
        }
    }
    let mut new_b: Vec<f64> = kept_outputs
        .iter()
        .map(|&o| {
            let lost: f64 = (0..ins)
                .filter(|&i| removed[i])
                .map(|i| mean[i] * (0..taps).map(|k| at(o, i, k)).sum::<f64>())
                .sum();
            bias_of(o) + lost
        })
        .collect();
    let mut refitted = false;
    if r.refit && r.moment_count > kept.len() as f64 {
        if let Some((w2, b2)) = refit(r, &kept_outputs, &at, &bias_of) {
            (new_w, new_b, refitted) = (w2, b2, true);
        }
    }
    // Write back in the op's layout.
    let k = kept.len();
    let outs = kept_outputs.len();
    let (wdims, wvals): (Vec<i64>, Vec<f32>) = if gemm {
        if trans_b {
            (
                vec![outs as i64, k as i64],
                new_w.iter().map(|&x| x as f32).collect(),
            )
        } else {
            let mut t = vec![0f32; k * outs];
            for o in 0..outs {
                for j in 0..k {
                    t[j * outs + o] = new_w[o * k + j] as f32;
                }
            }
            (vec![k as i64, outs as i64], t)
        }
    } else {
        let mut d = dims.clone();
        d[0] = outs as i64;
        d[1] = k as i64;
        (d, new_w.iter().map(|&x| x as f32).collect())
    };
    Some(Fit {
        wdims,
        w: wvals,
        b: new_b.iter().map(|&x| x as f32).collect(),
        refitted,
    })
}

/// Puts `f` into the pruned reader `n`; false when its weight is not of the shape fitted.
fn write(p: &mut Patch, n: NodeId, r: &Reader, f: &Fit) -> Result<bool> {
    let g = p.graph();
    let node = g.node(n);
    let wv = node
        .input(1)
        .ok_or_else(|| anyhow!("'{}' lost its weight", r.name))?;
    if g.value(wv).constant().map(|t| t.dims()) != Some(&f.wdims[..]) {
        return Ok(false);
    }
    let outs = f.b.len();
    let bias_dims = node
        .input(2)
        .map(|b| g.value(b).constant().map(|t| t.dims().to_vec()));
    // A scalar bias (a Gemm's C) cannot take one correction per output: nothing changes.
    let bias_dims = match bias_dims {
        Some(Some(d)) if d.iter().product::<i64>() as usize == outs => Some(d),
        Some(_) => return Ok(false),
        None => None,
    };
    replace_input(p, n, 1, Tensor::from_f32(f.wdims.clone(), &f.w))?;
    match bias_dims {
        Some(dims) => replace_input(p, n, 2, Tensor::from_f32(dims, &f.b))?,
        None => {
            let v = p.add_initializer(
                &format!("{}.bias", r.name),
                Tensor::from_f32(vec![outs as i64], &f.b),
            )?;
            p.set_input(n, 2, Some(v));
        }
    }
    Ok(true)
}

/// The least-squares fit of the kept weights and bias: minimizes
/// Σ‖W x + b − W' x_K − b'‖² + λ‖[W'; b'] − [W_K; b]‖² over the sampled vectors, by the normal
/// equations (A + λI) Θ = C with A = Σ z zᵀ, z = [x_K; 1], solved by Cholesky.
fn refit(
    r: &Reader,
    outputs: &[usize],
    at: &dyn Fn(usize, usize, usize) -> f64,
    bias_of: &dyn Fn(usize) -> f64,
) -> Option<(Vec<f64>, Vec<f64>)> {
    let width = r.width;
    let d_all = width + 1;
    let m = |a: usize, b: usize| r.moment[a.min(b) * d_all + a.max(b)] / r.moment_count;
    // z indexes: kept inputs, then the constant 1 (index `width` of u).
    let zi: Vec<usize> = r
        .kept
        .iter()
        .copied()
        .chain(std::iter::once(width))
        .collect();
    let d = zi.len();
    let mut a = vec![0f64; d * d];
    for (i, &ui) in zi.iter().enumerate() {
        for (j, &uj) in zi.iter().enumerate() {
            a[i * d + j] = m(ui, uj);
        }
    }
    let trace: f64 = (0..d).map(|i| a[i * d + i]).sum::<f64>() / d as f64;
    let lambda = RIDGE * trace.max(f64::MIN_POSITIVE);
    for i in 0..d {
        a[i * d + i] += lambda;
    }
    let l = cholesky(&a, d)?;
    // Lᵀ row-major, so back substitution reads rows too.
    let mut lt = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            lt[j * d + i] = l[i * d + j];
        }
    }
    let mut w = Vec::with_capacity(outputs.len() * r.kept.len());
    let mut b = Vec::with_capacity(outputs.len());
    // E[z xᵀ] as dense rows, so each right-hand side is a run of dot products.
    let zx: Vec<Vec<f64>> = zi
        .iter()
        .map(|&ui| (0..width).map(|c| m(ui, c)).collect())
        .collect();
    let mut rhs = vec![0f64; d];
    for &o in outputs {
        let wo: Vec<f64> = (0..width).map(|c| at(o, c, 0)).collect();
        // C = E[z yᵀ] + λΘ₀ with y = W x + b: E[z uᵀ] [Wₒ; bₒ].
        for (i, &ui) in zi.iter().enumerate() {
            let s =
                m(ui, width) * bias_of(o) + zx[i].iter().zip(&wo).map(|(a, b)| a * b).sum::<f64>();
            let prior = if ui == width {
                bias_of(o)
            } else {
                at(o, ui, 0)
            };
            rhs[i] = s + lambda * prior;
        }
        let theta = solve(&l, &lt, d, &rhs);
        w.extend_from_slice(&theta[..d - 1]);
        b.push(theta[d - 1]);
    }
    Some((w, b))
}

/// The lower Cholesky factor of the symmetric positive definite `a` (d×d, row-major).
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = l[i * d..i * d + j]
                .iter()
                .zip(&l[j * d..j * d + j])
                .map(|(a, b)| a * b)
                .sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// Solves L Lᵀ x = b, given L and Lᵀ.
fn solve(l: &[f64], lt: &[f64], d: usize, b: &[f64]) -> Vec<f64> {
    let mut y = vec![0f64; d];
    for i in 0..d {
        let row = &l[i * d..i * d + i];
        let s: f64 = row.iter().zip(&y[..i]).map(|(a, b)| a * b).sum();
        y[i] = (b[i] - s) / l[i * d + i];
    }
    let mut x = vec![0f64; d];
    for i in (0..d).rev() {
        let row = &lt[i * d + i + 1..(i + 1) * d];
        let s: f64 = row.iter().zip(&x[i + 1..]).map(|(a, b)| a * b).sum();
        x[i] = (y[i] - s) / lt[i * d + i];
    }
    x
}
