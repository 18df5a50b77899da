//! Bytes → decode → lift → verify → lower → encode. Every step may refuse the input; none may
//! panic, and a model that lifts must verify, lower and lift again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onnxsmith::ir::{verify::verify, Model};
use onnxsmith::onnx::decode_model;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(proto) = decode_model(data.to_vec().into(), "fuzz input") else {
        return;
    };
    let Ok(model) = Model::from_proto(proto) else {
        return;
    };
    verify(&model).expect("a lifted model verifies");
    let lowered = model.to_proto().expect("a lifted model lowers");
    let bytes = lowered.encode_to_vec();
    let again = decode_model(bytes.into(), "lowered").expect("a lowered model decodes");
    Model::from_proto(again).expect("a lowered model lifts again");
});
