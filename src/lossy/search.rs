//! The search for the result that gives back the fewest ops and passes its check: ops ranked
//! by the error they add (see [`super::sensitivity`]), a growing set of the most sensitive
//! given back (to float activations, to float, to f32: the stage's tiers, mildest first) until
//! a set passes, then each op of that set taken back where the check still passes. Every try
//! is one candidate built by the stage and one check in tract.

use anyhow::Result;

/// Sets tried, per tier, before the search gives up.
pub const TRIES: usize = 6;

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
/// returns what it made when it passed. `None` when no tier has a set that passes; `tries`
/// counts attempts either way.
pub fn restore<T>(
    ranked: &[String],
    tiers: usize,
    tries: &mut usize,
    mut attempt: impl FnMut(&[String], usize) -> Result<Option<T>>,
) -> Result<Option<Restored<T>>> {
    for tier in 0..tiers {
        let found = fewest(ranked, TRIES, PUT_BACK, |set| {
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

/// The fewest of `ranked` (op names, most sensitive first) to keep in float for `passes` to
/// hold: the 1, 2, 4, ... most sensitive until a set passes (at most `tries` sets), then each
/// op of that set back in int8, least sensitive first, wherever it still passes (at most
/// `put_back` more tries: doubling overshoots). The set, and what `passes` returned for it.
pub fn fewest<T>(
    ranked: &[String],
    tries: usize,
    put_back: usize,
    mut passes: impl FnMut(&[String]) -> Result<Option<T>>,
) -> Result<Option<(Vec<String>, T)>> {
    let mut found = None;
    for attempt in 0..tries {
        let count = (1usize << attempt).min(ranked.len());
        if let Some(t) = passes(&ranked[..count])? {
            found = Some((ranked[..count].to_vec(), t));
            break;
        }
        if count == ranked.len() {
            break;
        }
    }
    let Some((mut set, mut passed)) = found else {
        return Ok(None);
    };
    // One op alone in float is the least there is: with none, the result already failed.
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
