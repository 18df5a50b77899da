//! Choosing an activation's range from what calibration saw: the extremes (MinMax), a
//! percentile of the magnitudes, or the clipping threshold that loses the least information
//! (Entropy: the KL divergence between the histogram and its 8-bit quantization, as TensorRT
//! calibrates, over bins at least as fine as its 2048 over the extremes).

use serde::Serialize;

/// Bins over the extremes that the histogram is at least as fine as.
const BINS: usize = 2048;

/// How an activation's range is chosen from its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Method {
    MinMax,
    /// The magnitude below which this share (in percent) of the values lie.
    Percentile(f64),
    Entropy,
}

/// What calibration saw of one value: its extremes and a histogram of its magnitudes, both
/// in one pass over the samples. The histogram's range is a power of two at least the
/// largest magnitude seen so far; when a sample exceeds it, the range doubles and neighbouring
/// bins merge. Ranges that are powers of two line up, so the workers' histograms merge
/// exactly, and `HIST_BINS` bins over less than twice the extremes are at least as fine as
/// [`BINS`] over the extremes themselves.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub min: f32,
    pub max: f32,
    pub seen: u64,
    /// The value's rank (the largest seen).
    pub rank: usize,
    hist: Vec<u64>,
    /// The histogram's upper edge; 0 while every value seen was 0 (all in bin 0).
    hist_max: f32,
    /// Sums along axis 1 (a Conv input's channels) and along the last axis (a matrix
    /// product's inner dim), for bias correction.
    pub axis1: ChannelSums,
    pub last: ChannelSums,
}

/// Bins of the histogram calibration fills: twice [`BINS`], since its range may reach twice
/// the largest magnitude.
const HIST_BINS: usize = 2 * BINS;

/// Running sums of a value's elements per index of one axis: their means, once all samples
/// are seen, are E[x] per channel.
#[derive(Clone, Debug, Default)]
pub struct ChannelSums {
    sums: Vec<f64>,
    /// The largest magnitude seen per channel.
    maxima: Vec<f32>,
    /// Elements summed into each channel.
    count: u64,
    /// Samples disagreed on the channel count: no mean.
    mixed: bool,
}

impl ChannelSums {
    /// Adds `values`, of dims `shape`, along `axis` (ignored when the value has no such axis).
    pub fn observe(&mut self, values: &[f32], shape: &[usize], axis: usize) {
        let Some(&channels) = shape.get(axis) else {
            return;
        };
        if self.sums.is_empty() && !self.mixed {
            self.sums = vec![0.0; channels];
            self.maxima = vec![0.0; channels];
        }
        if self.sums.len() != channels || channels == 0 {
            self.mixed = true;
            return;
        }
        let inner: usize = shape[axis + 1..].iter().product();
        if inner == 0 {
            return;
        }
        for block in values.chunks_exact(channels * inner) {
            let runs = block.chunks_exact(inner);
            for ((sum, max), run) in self.sums.iter_mut().zip(&mut self.maxima).zip(runs) {
                *sum += run.iter().map(|&v| v as f64).sum::<f64>();
                *max = run.iter().fold(*max, |m, v| m.max(v.abs()));
            }
        }
        self.count += (values.len() / channels) as u64;
    }

    pub fn merge(&mut self, other: &ChannelSums) {
        if other.count == 0 && !other.mixed {
            return;
        }
        if self.count == 0 && !self.mixed {
            *self = other.clone();
            return;
        }
        if self.sums.len() != other.sums.len() || other.mixed {
            self.mixed = true;
            return;
        }
        for (a, b) in self.sums.iter_mut().zip(&other.sums) {
            *a += b;
        }
        for (a, b) in self.maxima.iter_mut().zip(&other.maxima) {
            *a = a.max(*b);
        }
        self.count += other.count;
    }

    /// The largest magnitude per channel, when every sample had the same channels.
    pub fn maxima(&self) -> Option<Vec<f32>> {
        let finite = self.maxima.iter().all(|m| m.is_finite());
        (!self.mixed && self.count > 0 && finite).then(|| self.maxima.clone())
    }

    /// The mean per channel, when every sample had the same channels.
    /// Infinities or NaNs in the samples give no mean.
    pub fn means(&self) -> Option<Vec<f32>> {
        let finite = self.sums.iter().all(|s| s.is_finite());
        (!self.mixed && self.count > 0 && finite).then(|| {
            self.sums
                .iter()
                .map(|s| (s / self.count as f64) as f32)
                .collect()
        })
    }
}

/// Magnitudes below this are zeros to a histogram: its bins stay representable.
const TINY: f32 = 1e-30;

/// The smallest power of two above `x` (> 0), strictly, so that no value of the histogram sits
/// on its upper edge and widening moves every count where a histogram built wide would have
/// put it.
fn power_of_two_above(x: f32) -> f32 {
    let x = x.max(TINY);
    let mut p = 2f32.powi(x.log2().floor() as i32);
    while p <= x {
        p *= 2.0;
    }
    p
}

impl Stats {
    /// Adds one sample's values to the extremes and, when `histogram`, to the histogram.
    /// Infinities and NaNs are left out.
    pub fn observe(&mut self, values: &[f32], histogram: bool) {
        // min and max pass NaNs over, so they are looked for on their own.
        let odd = values.iter().fold(false, |odd, v| odd | !v.is_finite());
        let (lo, hi) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        if odd {
            // Rare, so the common case keeps its tight loops.
            let finite: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
            if !finite.is_empty() {
                self.observe(&finite, histogram);
            }
            return;
        }
        if self.seen == 0 {
            (self.min, self.max) = (lo, hi);
        }
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        self.seen += values.len() as u64;
        if !histogram {
            return;
        }
        if self.hist.is_empty() {
            self.hist = vec![0; HIST_BINS];
        }
        let amax = lo.abs().max(hi.abs());
        if amax >= self.hist_max && amax > TINY {
            self.widen(power_of_two_above(amax));
        }
        let per_unit = if self.hist_max > 0.0 {
            HIST_BINS as f32 / self.hist_max
        } else {
            0.0
        };
        for &v in values {
            self.hist[((v.abs() * per_unit) as usize).min(HIST_BINS - 1)] += 1;
        }
    }

    /// Raises the histogram's range to `to` (a power of two), merging bins pairwise per
    /// doubling. From 0, every count is a zero and stays in bin 0.
    fn widen(&mut self, to: f32) {
        if self.hist_max > 0.0 {
            while self.hist_max < to {
                for i in 0..HIST_BINS / 2 {
                    self.hist[i] = self.hist[2 * i] + self.hist[2 * i + 1];
                }
                self.hist[HIST_BINS / 2..].fill(0);
                self.hist_max *= 2.0;
            }
        }
        self.hist_max = self.hist_max.max(to);
    }

    /// The largest magnitude seen.
    pub fn amax(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    pub fn merge(&mut self, other: &Stats) {
        if other.seen == 0 {
            return;
        }
        if self.seen == 0 {
            *self = other.clone();
            return;
        }
        self.rank = self.rank.max(other.rank);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.seen += other.seen;
        self.axis1.merge(&other.axis1);
        self.last.merge(&other.last);
        if other.hist.is_empty() {
            return;
        }
        let mut other = other.clone();
        if self.hist.is_empty() {
            self.hist = vec![0; HIST_BINS];
        }
        let to = self.hist_max.max(other.hist_max);
        self.widen(to);
        other.widen(to);
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            *a += b;
        }
    }

    /// The magnitude to clip at, by `method`.
    pub fn threshold(&self, method: Method) -> f32 {
        match method {
            Method::MinMax => self.amax(),
            Method::Percentile(p) => self.percentile(p),
            Method::Entropy => self.entropy(),
        }
    }

    fn bin_width(&self) -> f32 {
        self.hist_max / HIST_BINS as f32
    }

    /// The histogram up to its last non-empty bin.
    fn occupied(&self) -> &[u64] {
        let end = self.hist.iter().rposition(|&n| n > 0).map_or(0, |i| i + 1);
        &self.hist[..end]
    }

    fn percentile(&self, p: f64) -> f32 {
        let total: u64 = self.hist.iter().sum();
        if total == 0 {
            return self.amax();
        }
        let want = (p / 100.0 * total as f64).ceil() as u64;
        let mut acc = 0;
        for (i, &n) in self.hist.iter().enumerate() {
            acc += n;
            if acc >= want {
                return ((i + 1) as f32 * self.bin_width()).min(self.amax());
            }
        }
        self.amax()
    }

    /// The threshold whose 128-level quantization of the clipped histogram diverges least
    /// from the histogram itself.
    fn entropy(&self) -> f32 {
        const LEVELS: usize = 128;
        let hist = self.occupied();
        if hist.len() <= LEVELS {
            return self.amax();
        }
        // TensorRT's candidates: from a sixteenth of the extremes up, at most BINS of them.
        let n = hist.len();
        let step = n.div_ceil(BINS);
        let mut beyond: Vec<u64> = vec![0; n + 1];
        for i in (0..n).rev() {
            beyond[i] = beyond[i + 1] + hist[i];
        }
        let mut best = (f64::INFINITY, n);
        for i in (LEVELS.max(n / 16)..=n).step_by(step) {
            // P: the first i bins, everything beyond clipped into the last.
            let mut p: Vec<f64> = hist[..i].iter().map(|&n| n as f64).collect();
            p[i - 1] += beyond[i] as f64;
            // Q: the same bins merged into LEVELS levels, each level's mass spread evenly
            // over the bins it merged that were not empty.
            let mut q = vec![0.0; i];
            for level in 0..LEVELS {
                let (start, end) = (level * i / LEVELS, (level + 1) * i / LEVELS);
                let mass: f64 = p[start..end].iter().sum();
                let filled = p[start..end].iter().filter(|&&n| n > 0.0).count();
                if filled > 0 {
                    for j in start..end {
                        if p[j] > 0.0 {
                            q[j] = mass / filled as f64;
                        }
                    }
                }
            }
            let kl = divergence(&p, &q);
            if kl < best.0 {
                best = (kl, i);
            }
        }
        ((best.1 as f32 + 0.5) * self.bin_width()).min(self.amax())
    }
}

/// KL(p ‖ q) of two unnormalized distributions; bins where q is empty but p is not count as
/// a large fixed penalty instead of infinity, so clipping thresholds remain comparable.
fn divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    p.iter()
        .zip(q)
        .filter(|(&p, _)| p > 0.0)
        .map(|(&p, &q)| {
            let (p, q) = (p / sp, q / sq);
            if q > 0.0 {
                p * (p / q).ln()
            } else {
                p * 20.0
            }
        })
        .sum()
}
