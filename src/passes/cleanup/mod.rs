//! Cleanup: rewrites that remove work without computing anything.

pub mod constant;
pub mod cse;
pub mod dce;
pub mod dropout;
pub mod identity;
pub mod noop;

use anyhow::Result;

use crate::ir::{Graph, NodeId, Patch, ValueId};

/// A node that forwards `input` unchanged to `output`.
pub struct Forward {
    pub node: NodeId,
    pub input: ValueId,
    pub output: ValueId,
}

/// Why a forwarding node must stay, or `None` when it can go. Readers of the output read the
/// input instead; when the output is a graph output the input takes its name, which needs the
/// input to be an internal value.
pub fn forward_blocker(g: &Graph, input: ValueId, output: ValueId) -> Option<&'static str> {
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

/// Removes a forwarding node, its readers reading its input instead.
pub fn remove_forward(g: &mut Graph, f: Forward) -> Result<usize> {
    let mut patch = Patch::new(g);
    patch.replace_value(f.output, f.input)?;
    patch.remove_node(f.node)?;
    patch.commit()
}
