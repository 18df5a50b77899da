//! `optimize` and `verify` over the whole ONNX backend test corpus: no model makes them panic
//! or fail; where tract runs a model, the optimized model matches the original; where tract's
//! run of the original matches the corpus's expected outputs, so does the optimized model's.

mod common;

use std::path::Path;

use bytes::Bytes;
use onnxsmith::check::{compare, CheckOptions, Outcome, Reference, Rule, ScaledTolerance};
use onnxsmith::ir::{DType, Tensor};
use onnxsmith::onnx::proto::TensorProto;
use onnxsmith::passes::PipelineOptions;
use onnxsmith::runtime::{Binding, HostTensor, Runner};
use prost::Message;

/// The first test data set of a corpus model: (inputs, expected outputs), when all are tensors.
fn data_set(model: &Path) -> Option<(Vec<HostTensor>, Vec<HostTensor>)> {
    let dir = model.parent()?.join("test_data_set_0");
    let read = |prefix: &str| -> Option<Vec<HostTensor>> {
        let mut out = Vec::new();
        for i in 0.. {
            let p = dir.join(format!("{prefix}_{i}.pb"));
            if !p.exists() {
                break;
            }
            let t =
                Tensor::from_proto(TensorProto::decode(Bytes::from(std::fs::read(p).ok()?)).ok()?);
            let shape: Vec<usize> = t.dims().iter().map(|&d| d as usize).collect();
            if t.dtype() == DType::UNDEFINED {
                return None;
            }
            out.push(HostTensor::from_le_bytes(t.dtype(), &shape, &t.raw_bytes()?).ok()?);
        }
        Some(out)
    };
    Some((read("input")?, read("output")?))
}

#[test]
fn corpus_optimizes_and_verifies() {
    let Some(dir) = common::corpus_dir() else {
        return;
    };
    let files = common::onnx_files(&dir);
    let (mut verified, mut unverified, mut conform, mut tract_differs) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for path in &files {
        let name = path.strip_prefix(&dir).unwrap().display().to_string();
        let original = match onnxsmith::load(path) {
            Ok(l) => l.model,
            Err(e) => {
                failures.push(format!("{name}: load failed: {e:#}"));
                continue;
            }
        };
        let optimized =
            match onnxsmith::optimize::run_passes(&original, &PipelineOptions::default()) {
                Ok((m, _)) => m,
                Err(e) => {
                    failures.push(format!("{name}: optimize failed: {e:#}"));
                    continue;
                }
            };
        let reference = match Reference::new(&original, &CheckOptions::default()) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: checking failed: {e:#}"));
                continue;
            }
        };
        match reference.check(&optimized) {
            Ok(Outcome::Checked(r)) if r.ok() => verified += 1,
            Ok(Outcome::Checked(r)) => failures.push(format!("{name}: mismatch\n{}", r.to_table())),
            Ok(Outcome::Unverified(_)) => {
                unverified += 1;
                continue;
            }
            Err(e) => {
                failures.push(format!("{name}: checking failed: {e:#}"));
                continue;
            }
        }
        let Some((inputs, expected)) = data_set(path) else {
            continue;
        };
        let mut binding = Binding::default();
        let specs = onnxsmith::runtime::input_specs(&original, &binding).unwrap_or_default();
        if specs.len() != inputs.len() {
            continue;
        }
        for (s, t) in specs.iter().zip(&inputs) {
            binding
                .input_shapes
                .insert(s.name.clone(), t.shape().to_vec());
        }
        let run = |m| -> Option<Vec<HostTensor>> {
            Runner::new(m, &binding, &[]).ok()?.run(&inputs).ok()
        };
        let (Some(a), Some(b)) = (run(&original), run(&optimized)) else {
            continue;
        };
        let names: Vec<String> = (0..expected.len()).map(|i| format!("output_{i}")).collect();
        if a.len() != expected.len() || b.len() != expected.len() {
            continue;
        }
        // The corpus's own tolerance.
        let tol = Rule::Exact(ScaledTolerance {
            rtol: 1e-3,
            atol: 1e-7,
        });
        if !compare(&names, std::slice::from_ref(&expected), &[a], tol).ok() {
            tract_differs += 1;
            continue;
        }
        let r = compare(&names, &[expected], &[b], tol);
        if r.ok() {
            conform += 1;
        } else {
            failures.push(format!(
                "{name}: the original matches the corpus but the optimized model does not\n{}",
                r.to_table()
            ));
        }
    }
    eprintln!(
        "corpus: {} models; {verified} verified equal after optimize, {unverified} unverified (tract cannot run them); \
         {conform} match the corpus's expected outputs after optimize; {tract_differs} where tract's run of the original already differs",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
