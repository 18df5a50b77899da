//! The canonical printout used by snapshots and `--explain`: nodes in topological order, values
//! renamed by position (`%0`, `%1`, ...), constants as dtype[shape] and a short content digest.
//! Two graphs that differ only in value names or node ids print the same.

use std::collections::HashMap;
use std::fmt::Write;

use super::graph::{Attr, AttrValue, Graph, ValueId};
use super::tensor::Tensor;
use super::Model;

pub fn print_model(model: &Model) -> String {
    let mut out = String::new();
    let mut opsets: Vec<String> = model
        .opsets()
        .map(|(d, v)| {
            let d = if d.is_empty() { "ai.onnx" } else { d };
            format!("{d}:{v}")
        })
        .collect();
    opsets.sort();
    writeln!(
        out,
        "model ir={} opsets=[{}]",
        model.ir_version(),
        opsets.join(", ")
    )
    .unwrap();
    print_graph(&model.graph, &HashMap::new(), 0, &mut out);
    out
}

fn print_graph(g: &Graph, outer: &HashMap<String, String>, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    let mut ids: HashMap<ValueId, String> = HashMap::new();
    let mut next = 0usize;
    let mut fresh = |v: ValueId, ids: &mut HashMap<ValueId, String>| {
        let s = format!("%{next}");
        next += 1;
        ids.insert(v, s.clone());
        s
    };
    for &c in g.captures() {
        let shown = outer
            .get(g.value(c).name())
            .cloned()
            .unwrap_or_else(|| "^?".to_string());
        ids.insert(c, format!("^{}", shown.trim_start_matches(['%', '^'])));
    }
    let ty = |v: ValueId| g.ty(v).map(|t| t.to_string()).unwrap_or_else(|| "?".into());
    let mut header = Vec::new();
    for &v in g.inputs() {
        let s = fresh(v, &mut ids);
        header.push(format!("{s}: {}", ty(v)));
    }
    writeln!(out, "{pad}graph({}) {{", header.join(", ")).unwrap();
    for &v in g.initializers() {
        let value = g.value(v);
        if !ids.contains_key(&v) {
            fresh(v, &mut ids);
        }
        if let Some(t) = value.initializer() {
            writeln!(out, "{pad}  {} = const {}", ids[&v], tensor(t)).unwrap();
        }
    }
    for &v in g.sparse_initializers() {
        let s = fresh(v, &mut ids);
        writeln!(out, "{pad}  {s} = sparse_const").unwrap();
    }
    let order = g.topo_order().unwrap_or_else(|_| g.node_ids().collect());
    for n in order {
        let node = g.node(n);
        let args: Vec<String> = node
            .inputs()
            .iter()
            .map(|v| {
                v.map_or("_".to_string(), |v| {
                    ids.get(&v).cloned().unwrap_or("%?".into())
                })
            })
            .collect();
        let outs: Vec<String> = node
            .outputs()
            .iter()
            .map(|v| v.map_or("_".to_string(), |v| fresh(v, &mut ids)))
            .collect();
        let op = node.qualified_op();
        let mut attrs: Vec<&Attr> = node.attrs().iter().collect();
        attrs.sort_by(|a, b| a.name().cmp(b.name()));
        let shown: Vec<String> = attrs
            .iter()
            .filter(|a| !matches!(a.value(), AttrValue::Graph | AttrValue::Graphs))
            .map(|a| format!("{}={}", a.name(), attr_value(a)))
            .collect();
        let attr_text = if shown.is_empty() {
            String::new()
        } else {
            format!(" {{{}}}", shown.join(", "))
        };
        writeln!(
            out,
            "{pad}  {} = {op}({}){attr_text}",
            outs.join(", "),
            args.join(", ")
        )
        .unwrap();
        let names: HashMap<String, String> = ids
            .iter()
            .map(|(v, s)| (g.value(*v).name().to_string(), s.clone()))
            .collect();
        let mut bodies: Vec<_> = node
            .attrs()
            .iter()
            .filter(|a| a.bodies().next().is_some())
            .collect();
        bodies.sort_by(|a, b| a.name().cmp(b.name()));
        for a in bodies {
            writeln!(out, "{pad}    {}:", a.name()).unwrap();
            for b in a.bodies() {
                print_graph(b, &names, depth + 2, out);
            }
        }
    }
    let rets: Vec<String> = g
        .outputs()
        .iter()
        .map(|o| {
            let t = o
                .info
                .ty
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into());
            format!("{}: {t}", ids.get(&o.value).cloned().unwrap_or("%?".into()))
        })
        .collect();
    writeln!(out, "{pad}  return {}", rets.join(", ")).unwrap();
    writeln!(out, "{pad}}}").unwrap();
}

fn tensor(t: &Tensor) -> String {
    let dims: Vec<String> = t.dims().iter().map(|d| d.to_string()).collect();
    let digest = t.digest();
    let small = if t.len() <= 8 {
        t.to_i64_vec()
            .map(|v| format!(" {v:?}"))
            .or_else(|| t.to_f32_vec().map(|v| format!(" {v:?}")))
            .unwrap_or_default()
    } else {
        String::new()
    };
    format!(
        "{}[{}] #{:08x}{small}",
        t.dtype(),
        dims.join(","),
        digest >> 32
    )
}

fn attr_value(a: &Attr) -> String {
    match a.value() {
        AttrValue::Float(f) => format!("{f:?}"),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::String(s) => format!("{:?}", String::from_utf8_lossy(s)),
        AttrValue::Floats(v) => format!("{v:?}"),
        AttrValue::Ints(v) => format!("{v:?}"),
        AttrValue::Strings(v) => {
            let v: Vec<String> = v
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            format!("{v:?}")
        }
        AttrValue::Tensor(t) => tensor(t),
        AttrValue::Graph | AttrValue::Graphs => String::new(),
        AttrValue::Opaque(_) => a.describe_opaque(),
    }
}
