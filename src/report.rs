//! What a model holds, for `inspect` and the before/after tables: interface, opsets, op
//! histogram, parameters by dtype, subgraphs.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::ir::{Graph, Model};

#[derive(Serialize, Clone, Debug)]
pub struct Port {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
}

#[derive(Serialize, Clone, Debug, Default)]
pub struct Params {
    pub count: u64,
    pub bytes: u64,
}

#[derive(Serialize, Clone, Debug)]
pub struct Subgraph {
    /// `node/attribute`, nested with `>` for subgraphs within subgraphs.
    pub path: String,
    pub op: String,
    pub nodes: usize,
    pub captures: Vec<String>,
}

#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    pub ir_version: i64,
    pub producer: String,
    pub opsets: BTreeMap<String, i64>,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// Nodes of the main graph and all subgraphs.
    pub nodes: usize,
    /// op (with domain when not the default) ⇒ count, subgraphs included.
    pub ops: BTreeMap<String, usize>,
    pub params: BTreeMap<String, Params>,
    pub subgraphs: Vec<Subgraph>,
    pub functions: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u64>,
}

impl Summary {
    pub fn of(model: &Model) -> Summary {
        let g = &model.graph;
        let port = |v| Port {
            name: g.value(v).name().to_string(),
            ty: g.ty(v).map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
        };
        let mut s = Summary {
            ir_version: model.ir_version(),
            producer: model.producer(),
            opsets: model
                .opsets()
                .map(|(d, v)| (if d.is_empty() { "ai.onnx" } else { d }.to_string(), v))
                .collect(),
            inputs: g.inputs().iter().map(|&v| port(v)).collect(),
            outputs: g.outputs().iter().map(|o| port(o.value)).collect(),
            nodes: 0,
            ops: BTreeMap::new(),
            params: BTreeMap::new(),
            subgraphs: Vec::new(),
            functions: model
                .functions()
                .map(|(d, name)| format!("{d}::{name}"))
                .collect(),
            file_bytes: None,
        };
        s.walk(g, "");
        s
    }

    fn walk(&mut self, g: &Graph, prefix: &str) {
        for &v in g.initializers() {
            if let Some(t) = g.value(v).initializer() {
                let p = self.params.entry(t.dtype().short()).or_default();
                p.count += t.len();
                p.bytes += t.stored_bytes();
            }
        }
        for n in g.topo_order().unwrap_or_else(|_| g.node_ids().collect()) {
            let node = g.node(n);
            self.nodes += 1;
            let op = node.qualified_op();
            *self.ops.entry(op.clone()).or_default() += 1;
            for a in node.attrs() {
                for (i, body) in a.bodies().enumerate() {
                    let mut path = format!("{prefix}{}/{}", node.name(), a.name());
                    if a.bodies().count() > 1 {
                        path.push_str(&format!("[{i}]"));
                    }
                    self.subgraphs.push(Subgraph {
                        path: path.clone(),
                        op: op.clone(),
                        nodes: body.node_count(),
                        captures: body
                            .captures()
                            .iter()
                            .map(|&c| body.value(c).name().to_string())
                            .collect(),
                    });
                    self.walk(body, &format!("{path} > "));
                }
            }
        }
    }

    pub fn param_count(&self) -> u64 {
        self.params.values().map(|p| p.count).sum()
    }

    /// Bytes of all constant tensors, of every type.
    pub fn param_bytes(&self) -> u64 {
        self.params.values().map(|p| p.bytes).sum()
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|(d, v)| format!("{d} {v}"))
            .collect();
        writeln!(
            out,
            "ir_version {}   opsets: {}",
            self.ir_version,
            opsets.join(", ")
        )
        .unwrap();
        if !self.producer.is_empty() {
            writeln!(out, "producer   {}", self.producer).unwrap();
        }
        if let Some(b) = self.file_bytes {
            writeln!(out, "file       {}", human_bytes(b)).unwrap();
        }
        for (title, ports) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            writeln!(out, "{title}:").unwrap();
            for p in ports {
                writeln!(out, "  {:<32} {}", p.name, p.ty).unwrap();
            }
        }
        writeln!(out, "nodes: {}", self.nodes).unwrap();
        let mut ops: Vec<(&String, &usize)> = self.ops.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (op, n) in ops {
            writeln!(out, "  {op:<32} {n:>6}").unwrap();
        }
        writeln!(out, "parameters: {}", self.param_count()).unwrap();
        for (dtype, p) in &self.params {
            writeln!(
                out,
                "  {dtype:<8} {:>12} values {:>12}",
                p.count,
                human_bytes(p.bytes)
            )
            .unwrap();
        }
        if !self.subgraphs.is_empty() {
            writeln!(out, "subgraphs:").unwrap();
            for s in &self.subgraphs {
                let caps = if s.captures.is_empty() {
                    String::new()
                } else {
                    format!(", captures {}", s.captures.join(", "))
                };
                writeln!(out, "  {} ({}): {} nodes{caps}", s.path, s.op, s.nodes).unwrap();
            }
        }
        if !self.functions.is_empty() {
            writeln!(out, "functions: {}", self.functions.join(", ")).unwrap();
        }
        out
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut x = b as f64;
    let mut u = 0;
    while x >= 1024.0 && u < UNITS.len() - 1 {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}
