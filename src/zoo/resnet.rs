//! ResNet-50 v1.5 in torchvision's layout, as `torch.onnx.export` writes it without fusing:
//! 7x7 stem, max-pool, bottlenecks [3, 4, 6, 3] with the stride on the 3x3 conv, 1x1 conv + BN
//! downsample, bias-free Conv followed by BatchNormalization, Relu, residual Add,
//! GlobalAveragePool, Flatten, Gemm to 1000 classes. Opset 17, input `input` f32[N,3,224,224],
//! output `logits` f32[N,1000].
//!
//! Weights are seeded: He-normal convolutions, BN gamma and running_var in [0.5, 1.5], small
//! beta and running_mean. He-normal alone lets the residual stream double in every block (2^16
//! by the logits, past what fp16 can hold), so the last conv of each residual branch is scaled
//! by 1/sqrt(16 blocks), as Fixup initialisation does; activations then stay near unit scale.

use anyhow::Result;

use super::builder::Builder;
use crate::ir::{Attr, DType, Dim, Model, ValueId};

const SEED: u64 = 50;
/// 1/sqrt(number of residual blocks).
const RESIDUAL_SCALE: f32 = 0.25;

pub fn resnet50() -> Result<Model> {
    let mut b = Builder::new("main_graph", 17, SEED);
    let batch = || Dim::Sym("N".into());
    let x = b.input(
        "input",
        DType::F32,
        vec![batch(), Dim::Known(3), Dim::Known(224), Dim::Known(224)],
    )?;
    let mut h = conv_bn(&mut b, x, "conv1", "bn1", "", 3, 64, 7, 2, 3, 1.0)?;
    h = b.op("Relu", "/relu/Relu", &[h], vec![])?;
    h = b.op(
        "MaxPool",
        "/maxpool/MaxPool",
        &[h],
        vec![
            Attr::ints("kernel_shape", &[3, 3]),
            Attr::ints("pads", &[1, 1, 1, 1]),
            Attr::ints("strides", &[2, 2]),
        ],
    )?;
    let mut cin = 64;
    for (stage, &(blocks, width)) in [(3, 64), (4, 128), (6, 256), (3, 512)].iter().enumerate() {
        for block in 0..blocks {
            let stride = if block == 0 && stage > 0 { 2 } else { 1 };
            h = bottleneck(&mut b, h, stage + 1, block, cin, width, stride)?;
            cin = width * 4;
        }
    }
    h = b.op(
        "GlobalAveragePool",
        "/avgpool/GlobalAveragePool",
        &[h],
        vec![],
    )?;
    h = b.op("Flatten", "/Flatten", &[h], vec![Attr::int("axis", 1)])?;
    let w = b.normal(1000 * 2048, (1.0f32 / 2048.0).sqrt());
    let w = b.init("fc.weight", vec![1000, 2048], &w)?;
    let bias = b.normal(1000, 0.01);
    let bias = b.init("fc.bias", vec![1000], &bias)?;
    let out = b.graph.node(
        "Gemm",
        "",
        "/fc/Gemm",
        &[Some(h), Some(w), Some(bias)],
        &["logits"],
        vec![
            Attr::float("alpha", 1.0),
            Attr::float("beta", 1.0),
            Attr::int("transB", 1),
        ],
    )?;
    let logits = b.graph.graph().node(out).output(0).unwrap();
    b.output(logits, DType::F32, vec![batch(), Dim::Known(1000)]);
    Ok(b.finish("onnxsmith.zoo"))
}

fn bottleneck(
    b: &mut Builder,
    x: ValueId,
    stage: usize,
    block: usize,
    cin: i64,
    width: i64,
    stride: i64,
) -> Result<ValueId> {
    let p = format!("layer{stage}.{block}");
    let scope = format!("/layer{stage}/layer{stage}.{block}");
    let mut h = conv_bn(
        b,
        x,
        &format!("{p}.conv1"),
        &format!("{p}.bn1"),
        &scope,
        cin,
        width,
        1,
        1,
        0,
        1.0,
    )?;
    h = b.op("Relu", &format!("{scope}/relu/Relu"), &[h], vec![])?;
    h = conv_bn(
        b,
        h,
        &format!("{p}.conv2"),
        &format!("{p}.bn2"),
        &scope,
        width,
        width,
        3,
        stride,
        1,
        1.0,
    )?;
    h = b.op("Relu", &format!("{scope}/relu_1/Relu"), &[h], vec![])?;
    h = conv_bn(
        b,
        h,
        &format!("{p}.conv3"),
        &format!("{p}.bn3"),
        &scope,
        width,
        width * 4,
        1,
        1,
        0,
        RESIDUAL_SCALE,
    )?;
    let shortcut = if stride != 1 || cin != width * 4 {
        conv_bn(
            b,
            x,
            &format!("{p}.downsample.0"),
            &format!("{p}.downsample.1"),
            &scope,
            cin,
            width * 4,
            1,
            stride,
            0,
            1.0,
        )?
    } else {
        x
    };
    h = b.op("Add", &format!("{scope}/Add"), &[h, shortcut], vec![])?;
    b.op("Relu", &format!("{scope}/relu_2/Relu"), &[h], vec![])
}

/// A bias-free Conv and its BatchNormalization; `conv` and `bn` are the torchvision module paths.
#[allow(clippy::too_many_arguments)]
fn conv_bn(
    b: &mut Builder,
    x: ValueId,
    conv: &str,
    bn: &str,
    scope: &str,
    cin: i64,
    cout: i64,
    k: i64,
    stride: i64,
    pad: i64,
    scale: f32,
) -> Result<ValueId> {
    let fan_in = (cin * k * k) as f32;
    let w = b.normal((cout * cin * k * k) as usize, scale * (2.0 / fan_in).sqrt());
    let w = b.init(&format!("{conv}.weight"), vec![cout, cin, k, k], &w)?;
    let leaf = |m: &str| m.rsplit('.').next().unwrap().to_string();
    let h = b.op(
        "Conv",
        &format!("{scope}/{}/Conv", leaf(conv)),
        &[x, w],
        vec![
            Attr::ints("dilations", &[1, 1]),
            Attr::int("group", 1),
            Attr::ints("kernel_shape", &[k, k]),
            Attr::ints("pads", &[pad, pad, pad, pad]),
            Attr::ints("strides", &[stride, stride]),
        ],
    )?;
    let c = cout as usize;
    let gamma = b.uniform(c, 0.5, 1.5);
    let beta = b.normal(c, 0.1);
    let mean = b.normal(c, 0.1);
    let var = b.uniform(c, 0.5, 1.5);
    let params = [
        b.init(&format!("{bn}.weight"), vec![cout], &gamma)?,
        b.init(&format!("{bn}.bias"), vec![cout], &beta)?,
        b.init(&format!("{bn}.running_mean"), vec![cout], &mean)?,
        b.init(&format!("{bn}.running_var"), vec![cout], &var)?,
    ];
    b.op(
        "BatchNormalization",
        &format!("{scope}/{}/BatchNormalization", leaf(bn)),
        &[h, params[0], params[1], params[2], params[3]],
        vec![Attr::float("epsilon", 1e-5), Attr::float("momentum", 0.9)],
    )
}
