//! The search for the result that gives back the fewest ops and passes its check. Ops are
//! ranked by what each costs (see [`super::sensitivity`]), most first. A stage may give an
//! op back mildly (int8: float activations, int8 weights) or wholly (int8: float; fp16: f32).
//!
//! [`fewest`] is the search over one way of giving back:
//!
//! 1. every ranked op given back: when even that fails, nothing in this way can pass;
//! 2. a bisection over the ranking for the fewest most-costly ops that pass: the first k ops
//!    for the smallest k found, one check per halving;
//! 3. each op of that set taken back where the check still passes (the ranking is an
//!    estimate: an op ranked high may not matter), those worth most first (int8: the most
//!    weights, what the result is quantized for), then the least costly.
//!
//! [`restore`] uses it twice where a stage has both ways: every op given back mildly first;
//! where even that fails (some ops' lossy weights alone break the result), the fewest ops to
//! give back wholly, the others mildly; then, with those wholly given back, the fewest to give
//! back mildly. Each way costs 1 + ⌈log₂ n⌉ checks plus at most [`PUT_BACK`]; each check is a
//! candidate built by the stage and run in tract.

use anyhow::Result;

/// Once a set passes, at most this many of its ops are tried back.
pub const PUT_BACK: usize = 4;

/// What the search found: the ops given back mildly and wholly, what the passing try
/// returned, and how many tries it took in all.
pub struct Restored<T> {
    pub mild: Vec<String>,
    pub whole: Vec<String>,
    pub found: T,
    pub tries: usize,
}

/// Searches for the fewest of `ranked` to give back, mildly or wholly; `attempt(mild, whole)`
/// builds and checks a candidate and returns what it made when it passed. Without a mild way
/// (`mild` false), every op is given back wholly. `None` when even every op given back wholly
/// fails; `tries` counts attempts either way.
pub fn restore<T>(
    ranked: &[String],
    worth: &dyn Fn(&str) -> f64,
    mild: bool,
    tries: &mut usize,
    mut attempt: impl FnMut(&[String], &[String]) -> Result<Option<T>>,
) -> Result<Option<Restored<T>>> {
    let mut counted = |m: &[String], w: &[String]| {
        *tries += 1;
        attempt(m, w)
    };
    let mut whole: Vec<String> = Vec::new();
    let mut known = None;
    if mild {
        known = counted(ranked, &[])?;
    }
    if known.is_none() {
        // The mild way fails even for every op: give the fewest back wholly, the others mildly.
        let rest_mild = |set: &[String]| -> Vec<String> {
            if mild {
                ranked
                    .iter()
                    .filter(|n| !set.contains(n))
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            }
        };
        let Some((set, t)) = fewest(ranked, worth, None, |set| counted(&rest_mild(set), set))?
        else {
            return Ok(None);
        };
        if !mild {
            return Ok(Some(Restored {
                mild: Vec::new(),
                whole: set,
                found: t,
                tries: *tries,
            }));
        }
        whole = set;
        known = Some(t);
    }
    let rest: Vec<String> = ranked
        .iter()
        .filter(|n| !whole.contains(n))
        .cloned()
        .collect();
    let (set, found) = match fewest(&rest, worth, known, |set| counted(set, &whole))? {
        Some(found) => found,
        None => unreachable!("every op of `rest` given back passed"),
    };
    Ok(Some(Restored {
        mild: set,
        whole,
        found,
        tries: *tries,
    }))
}

/// The fewest of `ranked` (most costly first) for which `passes` holds, given that it does
/// not hold for none of them: all of them first (`None` if that fails; `all` is what it
/// returned when the caller knows already), then a bisection for the shortest passing
/// prefix, then up to [`PUT_BACK`] ops of it taken back, those `worth` most first (ties:
/// the least costly), wherever `passes` still holds. The set, and what `passes` returned.
pub fn fewest<T>(
    ranked: &[String],
    worth: &dyn Fn(&str) -> f64,
    all: Option<T>,
    mut passes: impl FnMut(&[String]) -> Result<Option<T>>,
) -> Result<Option<(Vec<String>, T)>> {
    let all = match all {
        Some(t) => t,
        None => match passes(ranked)? {
            Some(t) => t,
            None => return Ok(None),
        },
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
    let mut candidates: Vec<String> = set.iter().rev().cloned().collect();
    candidates.sort_by(|a, b| worth(b).total_cmp(&worth(a)));
    for name in candidates.iter().take(PUT_BACK) {
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
