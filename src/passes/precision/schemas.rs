//! The operator schemas of the default domain, as far as lowering precision needs them: for
//! each version of each operator, which element types each formal input and output accepts,
//! and which of them must share one (a type parameter such as `T`). Read from `schemas.txt`,
//! which `schemas.py` writes from the `onnx` package's own definitions, so that what we write
//! is what `onnx.checker` accepts: an op takes bf16 only from the opset where its schema does
//! (Conv from 22), and an input the schema types as float alone stays float (Resize's
//! `scales`, NonMaxSuppression's boxes).

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::ir::DType;

/// How a formal parameter's type relates to the others'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tie {
    /// A type parameter: every formal naming it has the same element type.
    Param(&'static str),
    /// One type of its own, whatever the others are.
    Fixed,
    /// Each member of this variadic may have a type of its own (a Loop's carried values).
    Free,
}

/// One formal input or output.
#[derive(Clone, Copy, Debug)]
pub struct Formal {
    pub tie: Tie,
    /// Which of f32, f16 and bf16 it accepts (bits of [`FLOATS`]).
    accepts: u8,
    /// The one element type it accepts, when there is just one.
    pub only: Option<DType>,
    pub variadic: bool,
}

/// The float types a formal may accept, in the order of `accepts`' bits.
const FLOATS: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

impl Formal {
    pub fn accepts(&self, d: DType) -> bool {
        FLOATS
            .iter()
            .position(|&f| f == d)
            .is_some_and(|i| self.accepts & (1 << i) != 0)
    }

    fn parse(text: &'static str) -> Formal {
        let variadic = text.ends_with('*');
        let text = text.trim_end_matches(['*', '?']);
        let (tie, rest) = text.split_once(':').expect("TIE:TYPES");
        let (letters, only) = match rest.split_once('#') {
            Some((l, n)) => (l, Some(DType(n.parse().expect("an element type")))),
            None => (rest, None),
        };
        let accepts = (letters.chars())
            .map(|c| match c {
                'f' => 1,
                'h' => 2,
                'b' => 4,
                _ => 0,
            })
            .sum();
        Formal {
            tie: match tie {
                "=" => Tie::Fixed,
                "~" => Tie::Free,
                t => Tie::Param(t),
            },
            accepts,
            only,
            variadic,
        }
    }
}

/// One version of an operator.
#[derive(Debug)]
pub struct Schema {
    pub since: i64,
    inputs: Vec<Formal>,
    outputs: Vec<Formal>,
}

impl Schema {
    /// The formal of input `slot` (a variadic last formal stands for every slot from its own).
    pub fn input(&self, slot: usize) -> Option<&Formal> {
        at(&self.inputs, slot)
    }

    pub fn output(&self, slot: usize) -> Option<&Formal> {
        at(&self.outputs, slot)
    }
}

fn at(formals: &[Formal], slot: usize) -> Option<&Formal> {
    formals
        .get(slot)
        .or_else(|| formals.last().filter(|f| f.variadic))
}

static TABLE: LazyLock<HashMap<&'static str, Vec<Schema>>> = LazyLock::new(|| {
    let mut table: HashMap<&str, Vec<Schema>> = HashMap::new();
    for line in include_str!("schemas.txt").lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let mut parts = line.split('|');
        let (head, ins, outs) = (parts.next(), parts.next(), parts.next());
        let (Some(head), Some(ins), Some(outs)) = (head, ins, outs) else {
            panic!("schemas.txt: bad line '{line}'");
        };
        let mut head = head.split_whitespace();
        let (op, since) = (head.next().expect("op"), head.next().expect("since"));
        let formals = |s: &'static str| s.split_whitespace().map(Formal::parse).collect();
        table.entry(op).or_default().push(Schema {
            since: since.parse().expect("a version"),
            inputs: formals(ins),
            outputs: formals(outs),
        });
    }
    table
});

/// The schema of default-domain operator `op` in effect at `opset`: its latest version not
/// newer than the opset. `None` for an operator the table does not know.
pub fn schema(op: &str, opset: i64) -> Option<&'static Schema> {
    TABLE.get(op)?.iter().rev().find(|s| s.since <= opset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_checker_accepts() {
        let conv = |opset| schema("Conv", opset).unwrap().input(0).unwrap();
        assert!(conv(17).accepts(DType::F16) && !conv(17).accepts(DType::BF16));
        assert!(conv(22).accepts(DType::BF16));
        let resize = schema("Resize", 13).unwrap();
        assert_eq!(resize.input(2).unwrap().tie, Tie::Fixed);
        assert_eq!(resize.input(2).unwrap().only, Some(DType::F32));
        assert_eq!(
            schema("Shape", 15).unwrap().output(0).unwrap().only,
            Some(DType::I64)
        );
        let concat = schema("Concat", 13).unwrap();
        assert_eq!(concat.input(5).unwrap().tie, Tie::Param("T"));
        assert!(!schema("Range", 11)
            .unwrap()
            .input(0)
            .unwrap()
            .accepts(DType::F16));
        assert_eq!(schema("Loop", 16).unwrap().input(3).unwrap().tie, Tie::Free);
    }
}
