//! Disjoint sets over any copyable key, for analyses that join things into classes as they
//! find edges between them: channels that must be pruned together, values that must share one
//! quantization range.

use std::collections::HashMap;
use std::hash::Hash;

/// A forest of keys, each tree one class.
#[derive(Clone, Debug, Default)]
pub struct UnionFind<K> {
    parent: HashMap<K, K>,
}

impl<K: Copy + Eq + Hash> UnionFind<K> {
    pub fn new() -> UnionFind<K> {
        UnionFind {
            parent: HashMap::new(),
        }
    }

    /// The root of `k`'s class (`k` itself when it was never joined), halving the path on
    /// the way.
    pub fn root(&mut self, k: K) -> K {
        let mut k = k;
        loop {
            let p = *self.parent.get(&k).unwrap_or(&k);
            if p == k {
                return k;
            }
            let gp = *self.parent.get(&p).unwrap_or(&p);
            self.parent.insert(k, gp);
            k = gp;
        }
    }

    /// Puts `a` and `b` in one class, whose root stays `a`'s. When they were apart, returns
    /// the two roots (kept, absorbed), so that a caller holding data per class can merge it.
    pub fn join(&mut self, a: K, b: K) -> Option<(K, K)> {
        self.parent.entry(a).or_insert(a);
        self.parent.entry(b).or_insert(b);
        let (ra, rb) = (self.root(a), self.root(b));
        if ra == rb {
            return None;
        }
        self.parent.insert(rb, ra);
        Some((ra, rb))
    }

    /// Every key joined so far.
    pub fn keys(&self) -> impl Iterator<Item = K> + '_ {
        self.parent.keys().copied()
    }
}
