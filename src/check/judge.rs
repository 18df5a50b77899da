//! How a candidate's outputs are judged against the original's, output by output.
//!
//! The exact rule judges every element: |a − b| ≤ atol · scale + rtol · |a|. The lossy rule
//! judges what a task sees, since one cosine over a whole output hides a destroyed part of it:
//!
//! - **Parts at their own scale.** Along every short axis (a field or channel axis of at most
//!   [`PART_AXIS_MAX`] entries), the entries whose magnitudes lie more than [`PART_GAP`] apart
//!   form parts, each judged on its own: a detector head that writes boxes in pixels beside
//!   class scores in 0..1 fails when its scores are destroyed, however well its boxes agree.
//! - **The worst sample.** Each sample's cosine counts, not only the cosine over all of them
//!   (samples with little signal, such as a blank page, are judged only in the aggregate).
//! - **Classes at every position.** The argmax along the class axis agrees at every position
//!   where the original is confident: rows of a [batch, classes] output, steps of a
//!   [batch, steps, classes] sequence, pixels of a [batch, classes, h, w] map, cells of a part.
//!   A sequence output also counts the samples whose sequence of labels agrees: the classes at
//!   its confident steps with repeats collapsed (boundaries may move, labels may not).

use serde::Serialize;

use super::{LossyLimits, Rule};
use crate::runtime::HostTensor;

/// Axes at most this long are searched for parts: a field or channel axis (4 box coordinates
/// and 80 class scores), not 8400 anchors or 18,000 classes.
pub const PART_AXIS_MAX: usize = 256;

/// Magnitudes further apart than this split an axis into parts: past it, one int8 scale over
/// both leaves the smaller fewer than 8 levels.
pub const PART_GAP: f64 = 16.0;

/// A sample whose norm is below this share of the typical sample's norm carries too little
/// signal for a cosine of its own (a blank page, a silent chunk).
const QUIET_SAMPLE: f64 = 0.25;

/// A position counts for class agreement where the original's top class leads its second by
/// at least this share of the values' scale: a near tie that flips says nothing.
const CONFIDENT_MARGIN: f64 = 0.1;

/// How one output of the candidate compares with the original's.
#[derive(Clone, Debug, Serialize)]
pub struct OutputDiff {
    pub name: String,
    pub max_abs: f64,
    pub max_rel: f64,
    /// Over every value of every sample.
    pub cosine: f64,
    /// The lowest cosine of a single sample (lossy rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worst_sample: Option<f64>,
    /// The cosine expected of the worst of a hundred samples of the same kind, estimated from
    /// the spread of the samples' errors (lossy rule, from 8 samples on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_worst: Option<f64>,
    /// Share of positions whose argmax agrees: rows of [batch, classes], and, under the lossy
    /// rule, the confident positions of sequences, maps and parts.
    pub top1: Option<f64>,
    /// Share of samples whose sequence of labels (the classes at confident steps, repeats
    /// collapsed) agrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequences: Option<f64>,
    /// The parts an axis splits into, each judged at its own scale (lossy rule).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartDiff>,
    pub ok: bool,
    /// Set when the outputs cannot be compared element by element (shape or type differ).
    pub mismatch: Option<String>,
    /// The limit of the rule this output broke, when it broke one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violation: Option<String>,
    /// What atol and max error are multiplied by: the output's largest magnitude, at least 1.
    pub scale: f64,
}

/// A part of an output: the entries of one axis of similar magnitude.
#[derive(Clone, Debug, Serialize)]
pub struct PartDiff {
    /// Which entries, as `axis 1 [4..21]`.
    pub label: String,
    pub cosine: f64,
    pub worst_sample: Option<f64>,
    pub expected_worst: Option<f64>,
    /// Share of confident positions whose argmax along the axis, within the part, agrees.
    pub top1: Option<f64>,
}

/// One sample of one output, in both models, as numbers.
pub struct Pair {
    pub e: Vec<f64>,
    pub g: Vec<f64>,
    pub shape: Vec<usize>,
}

/// Judges output `name` over `expected` and `got` (one tensor per sample).
pub fn judge(name: &str, expected: &[&HostTensor], got: &[&HostTensor], rule: &Rule) -> OutputDiff {
    let mut mismatch = None;
    let mut pairs = Vec::new();
    for (e, g) in expected.iter().zip(got) {
        if e.shape() != g.shape() {
            mismatch = Some(format!("shape {:?} vs {:?}", e.shape(), g.shape()));
            continue;
        }
        match (e.to_f64(), g.to_f64()) {
            (Some(ev), Some(gv)) => pairs.push(Pair {
                e: ev,
                g: gv,
                shape: e.shape().to_vec(),
            }),
            _ if e.same_as(g) => {}
            _ => mismatch = Some("non-numeric values differ".into()),
        }
    }
    let mut acc = Acc::default();
    for p in &pairs {
        acc.add(&p.e, &p.g, rule);
    }
    let mut d = acc.finish(name, rule);
    d.top1 = row_agreement(&pairs);
    if let Rule::Lossy(limits) = rule {
        lossy(&mut d, &pairs, limits);
    }
    d.ok = d.violation.is_none() && mismatch.is_none();
    d.mismatch = mismatch;
    d
}

/// A relative difference is taken against the value, or against this share of the output's
/// largest magnitude where the value is smaller: the relative error of a value near zero
/// (a ReLU's zero, a padded border) is a division by nearly nothing and says nothing.
const REL_FLOOR: f64 = 1e-3;

/// Sums over all elements: the cosine, the largest differences, the exact rule's verdict.
#[derive(Default)]
struct Acc {
    scale: f64,
    max_abs: f64,
    max_rel: f64,
    dot: f64,
    ee: f64,
    gg: f64,
    values: usize,
    /// Values past the scaled tolerance, under the exact rule.
    violations: usize,
}

impl Acc {
    fn add(&mut self, e: &[f64], g: &[f64], rule: &Rule) {
        // An element passes when |a - b| <= atol * max(1, scale) + rtol * |a|, where scale is the
        // largest finite magnitude in this output: fp32 rounding differences (a fused weight,
        // a reordered sum) are relative to the values that flow through the network, so a
        // logit near zero next to logits of 25 carries the error of 25, not of 0.
        let scale = e
            .iter()
            .filter(|x| x.is_finite())
            .fold(1.0f64, |m, x| m.max(x.abs()));
        self.scale = self.scale.max(scale);
        self.values += e.len();
        for (&x, &y) in e.iter().zip(g) {
            if x.is_nan() && y.is_nan() || x == y {
                self.dot += if x.is_finite() { x * y } else { 0.0 };
                self.ee += if x.is_finite() { x * x } else { 0.0 };
                self.gg += if y.is_finite() { y * y } else { 0.0 };
                continue;
            }
            let d = (x - y).abs();
            let d = if d.is_nan() { f64::INFINITY } else { d };
            self.max_abs = self.max_abs.max(d);
            self.max_rel = self.max_rel.max(d / x.abs().max(REL_FLOOR * scale));
            if let Rule::Exact(tol) = rule {
                if d > tol.atol * scale + tol.rtol * x.abs() {
                    self.violations += 1;
                }
            }
            self.dot += x * y;
            self.ee += x * x;
            self.gg += y * y;
        }
    }

    fn finish(self, name: &str, rule: &Rule) -> OutputDiff {
        let cosine = cosine(self.dot, self.ee, self.gg);
        let violation = match rule {
            Rule::Exact(_) => (self.violations > 0).then(|| {
                format!(
                    "{} of {} values past the tolerance",
                    self.violations, self.values
                )
            }),
            // NaN fails every limit: a result that computes NaN where the original did not is
            // not close to it.
            Rule::Lossy(l) => (cosine.is_nan() || cosine < l.min_cosine)
                .then(|| format!("cosine {cosine:.6} < {}", l.min_cosine)),
        };
        OutputDiff {
            name: name.to_string(),
            max_abs: self.max_abs,
            max_rel: self.max_rel,
            cosine,
            worst_sample: None,
            expected_worst: None,
            top1: None,
            sequences: None,
            parts: Vec::new(),
            ok: false,
            mismatch: None,
            violation,
            scale: self.scale,
        }
    }
}

fn cosine(dot: f64, ee: f64, gg: f64) -> f64 {
    if ee == 0.0 && gg == 0.0 {
        1.0
    } else {
        dot / (ee.sqrt() * gg.sqrt()).max(f64::MIN_POSITIVE)
    }
}

/// Share of rows of a [batch, classes] output whose argmax agrees, every row counted.
fn row_agreement(pairs: &[Pair]) -> Option<f64> {
    let (mut rows, mut agree) = (0usize, 0usize);
    for p in pairs {
        if let [n, classes] = p.shape[..] {
            if classes > 1 {
                for r in 0..n {
                    let row = |v: &[f64]| argmax(&v[r * classes..(r + 1) * classes]);
                    rows += 1;
                    agree += usize::from(row(&p.e) == row(&p.g));
                }
            }
        }
    }
    (rows > 0).then(|| agree as f64 / rows as f64)
}

/// The lossy rule's judgment beyond the cosine over everything: the worst sample, the parts,
/// the classes at confident positions; the first limit broken becomes the violation.
fn lossy(d: &mut OutputDiff, pairs: &[Pair], limits: &LossyLimits) {
    let all = |_: usize| true;
    (d.worst_sample, d.expected_worst) = worst_sample(pairs, None, &all);
    d.parts = parts(pairs);
    if d.parts.is_empty() {
        if let Some(axis) = class_axis(pairs) {
            let (positions, sequences) = agreement(pairs, axis, &all);
            d.top1 = d.top1.or(positions);
            d.sequences = sequences.filter(|_| axis == 2 && pairs[0].shape.len() == 3);
        }
    }
    if d.violation.is_none() {
        d.violation = violation(d, limits);
    }
}

/// The first limit of `limits` that `d` breaks beyond its overall cosine: its worst sample
/// (seen, then expected of a hundred), its parts, its classes, its sequences, its max error.
fn violation(d: &OutputDiff, limits: &LossyLimits) -> Option<String> {
    let min = limits.min_cosine;
    let low = |c: &f64| c.is_nan() || *c < min;
    let share = |t: f64| format!("{:.1}% < {:.1}%", t * 100.0, limits.min_top1 * 100.0);
    let few = |t: &f64| *t < limits.min_top1;
    if let Some(w) = d.worst_sample.filter(low) {
        return Some(format!("worst sample cosine {w:.6} < {min}"));
    }
    if let Some(w) = d.expected_worst.filter(low) {
        return Some(format!(
            "the worst of 100 samples like these would reach cosine {w:.6} < {min}"
        ));
    }
    for p in &d.parts {
        if low(&p.cosine) {
            return Some(format!("{} cosine {:.6} < {min}", p.label, p.cosine));
        }
        if let Some(w) = p.worst_sample.filter(low) {
            return Some(format!("{} worst sample cosine {w:.6} < {min}", p.label));
        }
        if let Some(w) = p.expected_worst.filter(low) {
            return Some(format!(
                "{}: the worst of 100 samples would reach cosine {w:.6} < {min}",
                p.label
            ));
        }
    }
    if let Some(t) = d.top1.filter(few) {
        return Some(format!("top-1 {}", share(t)));
    }
    if let Some((p, t)) = d.parts.iter().find_map(|p| Some((p, p.top1.filter(few)?))) {
        return Some(format!("{} top-1 {}", p.label, share(t)));
    }
    if let Some(s) = d.sequences.filter(few) {
        return Some(format!("sequences {}", share(s)));
    }
    let error = d.max_abs / d.scale.max(1.0);
    limits
        .max_error
        .filter(|&m| error.is_nan() || error > m)
        .map(|m| format!("max error {error:.3e} * scale > {m:e}"))
}

/// Where along `axis` (of extent `k`) element `i` of a tensor of `shape` lies.
fn index_on(shape: &[usize], axis: usize, i: usize) -> usize {
    let inner: usize = shape[axis + 1..].iter().product();
    (i / inner.max(1)) % shape[axis]
}

/// The lowest cosine of one sample, over the elements `keep` accepts of `axis` (or all),
/// among samples carrying at least [`QUIET_SAMPLE`] of the typical sample's norm; and, from
/// [`TAIL_SAMPLES`] such samples on, the cosine expected of the worst of a hundred
/// ([`expected_worst`]).
fn worst_sample(
    pairs: &[Pair],
    axis: Option<usize>,
    keep: &dyn Fn(usize) -> bool,
) -> (Option<f64>, Option<f64>) {
    let sums: Vec<(f64, f64, f64)> = pairs
        .iter()
        .map(|p| {
            let mut s = (0.0, 0.0, 0.0);
            for (i, (&x, &y)) in p.e.iter().zip(&p.g).enumerate() {
                if axis.is_none_or(|a| keep(index_on(&p.shape, a, i))) && x.is_finite() {
                    s = (s.0 + x * y, s.1 + x * x, s.2 + y * y);
                }
            }
            s
        })
        .collect();
    if sums.len() < 2 {
        return (None, None);
    }
    let typical = (sums.iter().map(|s| s.1).sum::<f64>() / sums.len() as f64).sqrt();
    let cosines: Vec<f64> = sums
        .iter()
        .filter(|s| s.1.sqrt() >= QUIET_SAMPLE * typical && typical > 0.0)
        .map(|s| cosine(s.0, s.1, s.2))
        .collect();
    let worst = cosines.iter().copied().reduce(f64::min);
    (worst, expected_worst(&cosines))
}

/// Samples from which the tail of their errors is estimated.
const TAIL_SAMPLES: usize = 8;

/// How rare a sample the expected worst stands for: the worst of a hundred.
const TAIL_SHARE: f64 = 0.01;

/// Errors below this share of the largest are floored to it: samples a result gets nearly
/// exactly (a saturated classifier) say nothing of the tail.
const TAIL_FLOOR: f64 = 0.01;

/// The expected worst error is at most this many times the worst seen: an extrapolation from
/// a few samples is no more trusted than that.
const TAIL_REACH: f64 = 4.0;

/// The cosine the worst of a hundred samples like these is expected to have, so that a check
/// on 16 held-back samples speaks for the next hundred inputs of the same kind, which its
/// worst sample alone does not. The errors 1 − cosine above the k-th largest (k a quarter of
/// the samples, at least 4) are taken as a Pareto tail, as errors of a few hard inputs are:
/// with β the mean of ln(e / u) over them (Hill's estimate, u the k-th largest), the 1-in-100
/// error is u · (k / (n · 0.01))^β; never better than the worst seen, never past
/// [`TAIL_REACH`] times it. `None` below [`TAIL_SAMPLES`] samples.
fn expected_worst(cosines: &[f64]) -> Option<f64> {
    let n = cosines.len();
    if n < TAIL_SAMPLES || cosines.iter().any(|c| c.is_nan()) {
        return None;
    }
    let mut errors: Vec<f64> = cosines.iter().map(|c| (1.0 - c).max(0.0)).collect();
    errors.sort_by(|a, b| b.total_cmp(a));
    let worst = errors[0];
    if worst <= 0.0 {
        return Some(1.0);
    }
    let floor = worst * TAIL_FLOOR;
    let k = (n / 4).max(4).min(n - 1);
    let threshold = errors[k].max(floor);
    let beta = errors[..k]
        .iter()
        .map(|e| (e.max(floor) / threshold).ln())
        .sum::<f64>()
        / k as f64;
    let reach = (k as f64 / (n as f64 * TAIL_SHARE)).max(1.0);
    let expected = threshold * reach.powf(beta);
    Some(1.0 - expected.clamp(worst, worst * TAIL_REACH))
}

/// The parts the output's short axes split into by magnitude, each judged: its cosine over
/// all samples, its worst sample, and its classes at confident positions along the axis.
fn parts(pairs: &[Pair]) -> Vec<PartDiff> {
    let Some(rank) = pairs.first().map(|p| p.shape.len()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for axis in 0..rank {
        let Some(groups) = split(pairs, axis) else {
            continue;
        };
        for group in groups {
            let keep = |c: usize| group.binary_search(&c).is_ok();
            let (mut dot, mut ee, mut gg) = (0.0, 0.0, 0.0);
            for p in pairs {
                for (i, (&x, &y)) in p.e.iter().zip(&p.g).enumerate() {
                    if keep(index_on(&p.shape, axis, i)) && x.is_finite() {
                        (dot, ee, gg) = (dot + x * y, ee + x * x, gg + y * y);
                    }
                }
            }
            let top1 = (group.len() > 1)
                .then(|| agreement(pairs, axis, &keep).0)
                .flatten();
            let (worst, expected) = worst_sample(pairs, Some(axis), &keep);
            out.push(PartDiff {
                label: format!("axis {axis} {}", ranges(&group)),
                cosine: cosine(dot, ee, gg),
                worst_sample: worst,
                expected_worst: expected,
                top1,
            });
        }
    }
    out
}

/// The entries of `axis` grouped by magnitude (the largest |value| each holds over every
/// sample), when they form two groups or more [`PART_GAP`] apart; entries that are all zeros
/// belong to none. `None` for an axis too long, of one entry, or of changing extent.
fn split(pairs: &[Pair], axis: usize) -> Option<Vec<Vec<usize>>> {
    let k = pairs[0].shape[axis];
    if !(2..=PART_AXIS_MAX).contains(&k) || pairs.iter().any(|p| p.shape[axis] != k) {
        return None;
    }
    let mut magnitude = vec![0f64; k];
    for p in pairs {
        for (i, x) in p.e.iter().enumerate() {
            if x.is_finite() {
                let c = index_on(&p.shape, axis, i);
                magnitude[c] = magnitude[c].max(x.abs());
            }
        }
    }
    let mut order: Vec<usize> = (0..k).filter(|&c| magnitude[c] > 0.0).collect();
    order.sort_by(|&a, &b| magnitude[a].total_cmp(&magnitude[b]).then(a.cmp(&b)));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut last = 0.0;
    for c in order {
        match groups.last_mut() {
            Some(g) if magnitude[c] <= PART_GAP * last => g.push(c),
            _ => groups.push(vec![c]),
        }
        last = magnitude[c];
    }
    for g in &mut groups {
        g.sort_unstable();
    }
    (groups.len() > 1).then_some(groups)
}

/// `[4..21]`, `[0..3, 7]`: sorted entries as ranges.
fn ranges(entries: &[usize]) -> String {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &c in entries {
        match runs.last_mut() {
            Some(r) if r.1 + 1 == c => r.1 = c,
            _ => runs.push((c, c)),
        }
    }
    let text: Vec<String> = runs
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}..{b}")
            }
        })
        .collect();
    format!("[{}]", text.join(", "))
}

/// The axis holding classes at each position, for outputs of more than one position per
/// sample: the last of [batch, steps, classes], the second of [batch, classes, h, w].
fn class_axis(pairs: &[Pair]) -> Option<usize> {
    match pairs.first()?.shape.len() {
        3 => Some(2),
        4 => Some(1),
        _ => None,
    }
}

/// Along `axis`, within the entries `keep` accepts: the share of positions where the
/// original is confident whose argmax agrees, and the share of samples that agree at every
/// such position. `None` for either where there is none to count.
fn agreement(
    pairs: &[Pair],
    axis: usize,
    keep: &dyn Fn(usize) -> bool,
) -> (Option<f64>, Option<f64>) {
    let scale = pairs
        .iter()
        .flat_map(|p| {
            p.e.iter()
                .enumerate()
                .filter(|(i, _)| keep(index_on(&p.shape, axis, *i)))
        })
        .map(|(_, x)| x.abs())
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max);
    let (mut positions, mut agree, mut samples, mut whole) = (0usize, 0usize, 0usize, 0usize);
    for p in pairs {
        let k = p.shape[axis];
        let inner: usize = p.shape[axis + 1..].iter().product();
        let outer: usize = p.shape[..axis].iter().product();
        let entries: Vec<usize> = (0..k).filter(|&c| keep(c)).collect();
        if entries.len() < 2 {
            continue;
        }
        // The classes at the confident positions, in order, in both models.
        let (mut expected, mut got) = (Vec::new(), Vec::new());
        for o in 0..outer {
            for i in 0..inner {
                let at = |c: usize| o * k * inner + c * inner + i;
                let (best, lead) = top_two(&entries, |c| p.e[at(c)]);
                if lead < CONFIDENT_MARGIN * scale {
                    continue;
                }
                let (g, _) = top_two(&entries, |c| p.g[at(c)]);
                agree += usize::from(g == best);
                expected.push(best);
                got.push(g);
            }
        }
        positions += expected.len();
        if !expected.is_empty() {
            samples += 1;
            whole += usize::from(runs(&expected) == runs(&got));
        }
    }
    let share = |a: usize, n: usize| (n > 0).then(|| a as f64 / n as f64);
    (share(agree, positions), share(whole, samples))
}

/// `classes` with each run of repeats collapsed to one: the labels of a sequence in order,
/// whatever their boundaries (a step moved from one label to the next changes nothing, a
/// label that appears, vanishes or changes does).
fn runs(classes: &[usize]) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for &c in classes {
        if out.last() != Some(&c) {
            out.push(c);
        }
    }
    out
}

/// The entry of `entries` with the largest value, and by how much it leads the second.
fn top_two(entries: &[usize], value: impl Fn(usize) -> f64) -> (usize, f64) {
    let (mut best, mut first, mut second) = (entries[0], f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &c in entries {
        let v = value(c);
        if v > first {
            (second, first, best) = (first, v, c);
        } else if v > second {
            second = v;
        }
    }
    (best, first - second)
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}
