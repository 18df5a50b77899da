//! A decoded model through the default pipeline (without the tract check, which would halve the
//! rate: the passes already run tract for folding and shapes), verified after every pass, then
//! lowered. The pipeline may refuse a model; it may not panic, leave a graph that fails to
//! verify or lower, or cycle without a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onnxsmith::ir::Model;
use onnxsmith::onnx::decode_model;
use onnxsmith::passes::{run_pipeline, PipelineOptions};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(proto) = decode_model(data.to_vec().into(), "fuzz input") else {
        return;
    };
    let Ok(mut model) = Model::from_proto(proto) else {
        return;
    };
    let opts = PipelineOptions {
        verify_each: true,
        ..Default::default()
    };
    if let Err(e) = run_pipeline(&mut model, &opts) {
        // A pass may refuse a model it cannot make sense of; breaking the IR or never settling
        // is a bug in the passes, whatever the input.
        let e = format!("{e:#}");
        assert!(
            !e.contains("broke the IR") && !e.contains("did not reach a fixed point"),
            "{e}"
        );
        return;
    }
    let lowered = model.to_proto().expect("an optimized model lowers");
    let bytes = lowered.encode_to_vec();
    let again = decode_model(bytes.into(), "lowered").expect("a lowered model decodes");
    Model::from_proto(again).expect("a lowered model lifts again");
});
