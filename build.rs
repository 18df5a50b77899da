//! Compiles the vendored ONNX schema into prost types. protox parses the .proto in pure Rust,
//! so building needs no system `protoc`.

fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto3");
    let fds = protox::compile(["onnx.proto3"], ["proto"]).expect("proto/onnx.proto3 must parse");
    let mut config = prost_build::Config::new();
    // Every `bytes` field becomes `bytes::Bytes`, so decoding from a memory-mapped file slices
    // tensor payloads instead of copying them onto the heap.
    config.bytes(["."]);
    config
        .compile_fds(fds)
        .expect("prost-build must generate the ONNX types");
}
