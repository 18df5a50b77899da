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
pub mod sink_constants;

use anyhow::Result;

use crate::ir::{type_clash, Graph, NodeId, Patch, ValueId};
use crate::passes::Refusal;

/// A node that forwards a value unchanged to its first output: its readers read `input`
/// instead (one of its inputs, or a value further up that it provably equals).
pub struct Forward {
    node: NodeId,
    input: ValueId,
    output: ValueId,
}

/// The forwarding of `n`'s first output to `input`, unless it must stay. Readers of the
/// output read the input instead, so their declared types must agree; when the output is a
/// graph output the input takes its name, which needs the input to be an internal value.
pub fn forward(g: &Graph, n: NodeId, input: ValueId) -> Result<Forward, Refusal> {
    let output = g.node(n).output(0).ok_or(Refusal::NotMine)?;
    if type_clash(g, output, g, input).is_some() {
        return Err("the declared types of its input and output clash".into());
    }
    let input_is_internal = g.producer(input).is_some() && !g.is_output(input);
    if g.is_output(output) && !input_is_internal {
        return Err("its output is a graph output and its input is a graph input, initializer, capture or another output, so removing it would rename the graph's interface".into());
    }
    Ok(Forward {
        node: n,
        input,
        output,
    })
}

/// Removes a forwarding node. Removing it changes no other value's type or shape, so tract's
/// facts, inferred before, stay true.
pub fn remove_forwarding(patch: &mut Patch, f: Forward) -> Result<()> {
    patch.replace_value(f.output, f.input)?;
    patch.remove_node(f.node)
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
