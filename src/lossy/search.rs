//! The search for the result that gives back the fewest ops and passes its check. Ops are
//! ranked by the error each adds by itself (see [`super::sensitivity`]); a stage gives an op
//! back in one of its tiers, mildest first (int8: float activations with int8 weights, then
//! wholly float; fp16: f32). In each tier:
//!
//! 1. every ranked op given back: when even that fails, the tier cannot pass;
//! 2. a bisection over the ranking for the fewest most-sensitive ops that pass: the first k
//!    ops for the smallest k found, one check per halving;
//! 3. each op of that set taken back, least sensitive first, where the check still passes
//!    (the ranking is a guess: an op ranked high may not matter).
//!
//! So a tier costs 1 + ⌈log₂ n⌉ checks plus at most [`PUT_BACK`]; each check is one candidate
//! built by the stage and run in tract.

use anyhow::Result;

/// Once a set passes, at most this many of its ops are tried back.
pub const PUT_BACK: usize = 4;

/// What the search found: the ops given back, in which tier, what the try returned for
/// them, and how many tries it took in all.
pub struct Restored<T> {
    pub set: Vec<String>,
    pub tier: usize,
    pub found: T,
    pub tries: usize,
}

/// Searches each of `tiers` tiers in turn, mildest first, for the fewest of `ranked` (most
/// sensitive first) to give back: `attempt(set, tier)` builds and checks a candidate, and
/// returns what it made when it passed. `None` when no tier passes even with every op given
/// back; `tries` counts attempts either way.
pub fn restore<T>(
    ranked: &[String],
    tiers: usize,
    tries: &mut usize,
    mut attempt: impl FnMut(&[String], usize) -> Result<Option<T>>,
) -> Result<Option<Restored<T>>> {
    for tier in 0..tiers {
        let found = fewest(ranked, PUT_BACK, |set| {
            *tries += 1;
            attempt(set, tier)
        })?;
        if let Some((set, found)) = found {
            return Ok(Some(Restored {
                set,
                tier,
                found,
                tries: *tries,
            }));
        }
    }
    Ok(None)
}

/// The fewest of `ranked` (most sensitive first) for which `passes` holds, given that it does
/// not hold for none of them: all of them first (`None` if that fails), then a bisection for
/// the shortest passing prefix, then up to `put_back` ops of it taken back, least sensitive
/// first, wherever `passes` still holds. The set, and what `passes` returned for it.
pub fn fewest<T>(
    ranked: &[String],
    put_back: usize,
    mut passes: impl FnMut(&[String]) -> Result<Option<T>>,
) -> Result<Option<(Vec<String>, T)>> {
    let Some(all) = passes(ranked)? else {
        return Ok(None);
    };
    // Invariant: the first `lo` fail (none of them: the result that failed), the first `hi`
    // pass, with what `passes` returned for them.
    let (mut lo, mut hi, mut passed) = (0, ranked.len(), all);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match passes(&ranked[..mid])? {
            Some(t) => (hi, passed) = (mid, t),
            None => lo = mid,
        }
    }
    let mut set = ranked[..hi].to_vec();
    // One op alone is the least there is: with none, the result already failed.
    let candidates: Vec<String> = set.iter().rev().cloned().collect();
    for name in candidates.iter().take(put_back) {
        if set.len() == 1 {
            break;
        }
        let fewer: Vec<String> = set.iter().filter(|n| *n != name).cloned().collect();
        if let Some(t) = passes(&fewer)? {
            (set, passed) = (fewer, t);
        }
    }
    Ok(Some((set, passed)))
}
