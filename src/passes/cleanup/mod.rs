//! Cleanup: rewrites that remove work without computing anything.

pub mod commute;
pub mod constant;
pub mod cse;
pub mod dce;
pub mod dropout;
pub mod identity;
pub mod merge_reshape;
pub mod merge_squeeze;
pub mod merge_transpose;
pub mod noop;

use anyhow::Result;

use crate::ir::{type_clash, Graph, Model, NodeId, Patch, ValueId};
use crate::passes::{for_each_graph, Changed, PassContext, Scope};
use crate::runtime::Facts;

/// What a forwarding pass says of a node: not its pattern, a node to remove (and the value its
/// readers read instead: one of its inputs, or a value further up that it provably equals), or
/// one that must stay for the reason given.
pub enum Verdict {
    NotMine,
    /// Its output equals this value.
    Forwards(ValueId),
    Keep(&'static str),
}

/// How a forwarding pass judges a node: the graph, the node, and tract's facts when the graph
/// is the main one.
pub type Judge<'a> = &'a dyn Fn(&Graph, NodeId, Option<&Facts>) -> Verdict;

/// Removes every node that `judge` says forwards one of its inputs unchanged to its first
/// output, in every graph of the model, one at a time: removing one can turn the next one's
/// output into a renamed interface. Removing a forwarding node changes no other value's type
/// or shape, so `facts` (of the main graph, inferred before) stay true throughout.
pub fn remove_forwarding(
    model: &mut Model,
    pass: &str,
    cx: &mut PassContext,
    facts: &Facts,
    judge: Judge,
) -> Result<Changed> {
    let n = for_each_graph(&mut model.graph, &mut |g, scope| {
        let facts = (scope == Scope::Main).then_some(facts);
        let mut done = 0;
        while let Some((node, input, output)) = next_forward(g, pass, cx, facts, judge) {
            let mut patch = Patch::new(g);
            patch.replace_value(output, input)?;
            patch.remove_node(node)?;
            done += patch.commit()?;
        }
        Ok(done)
    })?;
    Ok(Changed::from_count(n))
}

fn next_forward(
    g: &Graph,
    pass: &str,
    cx: &mut PassContext,
    facts: Option<&Facts>,
    judge: Judge,
) -> Option<(NodeId, ValueId, ValueId)> {
    let mut nodes: Vec<NodeId> = g.node_ids().collect();
    nodes.sort();
    for n in nodes {
        let node = g.node(n);
        let Some(output) = node.output(0) else {
            continue;
        };
        let why = match judge(g, n, facts) {
            Verdict::NotMine => continue,
            Verdict::Keep(why) => why,
            Verdict::Forwards(input) => match forward_blocker(g, input, output) {
                None => return Some((n, input, output)),
                Some(why) => why,
            },
        };
        cx.refuse(pass, &node.name, &node.op, why);
    }
    None
}

/// Why a forwarding node must stay, or `None` when it can go. Readers of the output read the
/// input instead, so their declared types must agree; when the output is a graph output the
/// input takes its name, which needs the input to be an internal value.
fn forward_blocker(g: &Graph, input: ValueId, output: ValueId) -> Option<&'static str> {
    if type_clash(g, output, g, input).is_some() {
        return Some("the declared types of its input and output clash");
    }
    if !g.is_output(output) {
        return None;
    }
    let input_is_internal = g.producer(input).is_some() && !g.is_output(input);
    if input_is_internal {
        None
    } else {
        Some("its output is a graph output and its input is a graph input, initializer, capture or another output, so removing it would rename the graph's interface")
    }
}

/// The axes Squeeze or Unsqueeze `n` names (its second input from opset 13, its attribute
/// before), made non-negative against `rank` (the rank they index: a Squeeze's input's, an
/// Unsqueeze's output's) and sorted. `None` when they are not constant, absent (a Squeeze of
/// every unit dim), repeated or out of range, or negative with the rank unknown.
pub fn squeeze_axes(g: &Graph, n: NodeId, rank: Option<usize>) -> Option<Vec<i64>> {
    let node = g.node(n);
    let axes = match node.input(1) {
        Some(a) => g.const_ints(a)?,
        None => node.attr_ints("axes")?.to_vec(),
    };
    let mut axes = axes
        .into_iter()
        .map(|a| match (a < 0, rank) {
            (false, _) => Some(a),
            (true, Some(r)) => Some(a + r as i64),
            (true, None) => None,
        })
        .collect::<Option<Vec<i64>>>()?;
    axes.sort_unstable();
    let in_range = |a: i64| a >= 0 && rank.is_none_or(|r| a < r as i64);
    let distinct = axes.windows(2).all(|w| w[0] != w[1]);
    (!axes.is_empty() && distinct && axes.iter().all(|&a| in_range(a))).then_some(axes)
}
