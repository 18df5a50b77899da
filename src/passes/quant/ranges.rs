//! Choosing an activation's range from what calibration saw: the extremes (MinMax), a
//! percentile of the magnitudes, or the clipping threshold that loses the least information
//! (Entropy: the KL divergence between the histogram and its 8-bit quantization, over 2048
//! bins, as TensorRT calibrates).

use serde::Serialize;

/// Bins of a magnitude histogram.
pub const BINS: usize = 2048;

/// How an activation's range is chosen from its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Method {
    MinMax,
    /// The magnitude below which this share (in percent) of the values lie.
    Percentile(f64),
    Entropy,
}

/// What calibration saw of one value: its extremes and a histogram of its magnitudes over
/// [0, `hist_max`], filled in a second pass once the extremes are known.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub min: f32,
    pub max: f32,
    pub seen: u64,
    pub hist: Vec<u64>,
    pub hist_max: f32,
    /// Sums along axis 1 (a Conv input's channels) and along the last axis (a matrix
    /// product's inner dim), for bias correction.
    pub axis1: ChannelSums,
    pub last: ChannelSums,
}

/// Running sums of a value's elements per index of one axis: their means, once all samples
/// are seen, are E[x] per channel.
#[derive(Clone, Debug, Default)]
pub struct ChannelSums {
    sums: Vec<f64>,
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
        }
        if self.sums.len() != channels || channels == 0 {
            self.mixed = true;
            return;
        }
        let inner: usize = shape[axis + 1..].iter().product();
        for (r, run) in values.chunks(inner.max(1)).enumerate() {
            self.sums[r % channels] += run.iter().map(|&v| v as f64).sum::<f64>();
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
        self.count += other.count;
    }

    /// The mean per channel, when every sample had the same channels.
    pub fn means(&self) -> Option<Vec<f32>> {
        (!self.mixed && self.count > 0).then(|| {
            self.sums
                .iter()
                .map(|s| (s / self.count as f64) as f32)
                .collect()
        })
    }
}

impl Stats {
    pub fn observe_extremes(&mut self, values: &[f32]) {
        for &v in values.iter().filter(|v| v.is_finite()) {
            if self.seen == 0 {
                (self.min, self.max) = (v, v);
            }
            self.min = self.min.min(v);
            self.max = self.max.max(v);
            self.seen += 1;
        }
    }

    /// The magnitude histogram's range: the largest magnitude seen.
    pub fn amax(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    pub fn observe_histogram(&mut self, values: &[f32]) {
        if self.hist.is_empty() {
            self.hist = vec![0; BINS];
            self.hist_max = self.amax();
        }
        let width = self.hist_max / BINS as f32;
        for &v in values.iter().filter(|v| v.is_finite()) {
            let bin = if width > 0.0 {
                ((v.abs() / width) as usize).min(BINS - 1)
            } else {
                0
            };
            self.hist[bin] += 1;
        }
    }

    pub fn merge(&mut self, other: &Stats) {
        if other.seen > 0 {
            if self.seen == 0 {
                (self.min, self.max) = (other.min, other.max);
            }
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
            self.seen += other.seen;
            self.axis1.merge(&other.axis1);
            self.last.merge(&other.last);
        }
        // A histogram pass's statistics count no extremes of their own, only the bins.
        if other.hist.is_empty() {
            return;
        }
        if self.hist.is_empty() {
            self.hist = other.hist.clone();
            self.hist_max = other.hist_max;
        } else {
            for (a, b) in self.hist.iter_mut().zip(&other.hist) {
                *a += b;
            }
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
        self.hist_max / BINS as f32
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
                return (i + 1) as f32 * self.bin_width();
            }
        }
        self.hist_max
    }

    /// The threshold whose 128-level quantization of the clipped histogram diverges least
    /// from the histogram itself.
    fn entropy(&self) -> f32 {
        const LEVELS: usize = 128;
        if self.hist.iter().sum::<u64>() == 0 {
            return self.amax();
        }
        let mut best = (f64::INFINITY, BINS);
        for i in LEVELS..=BINS {
            // P: the first i bins, everything beyond clipped into the last.
            let mut p: Vec<f64> = self.hist[..i].iter().map(|&n| n as f64).collect();
            p[i - 1] += self.hist[i..].iter().sum::<u64>() as f64;
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
        (best.1 as f32 + 0.5) * self.bin_width()
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
