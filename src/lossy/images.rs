//! Calibration samples from images: decode, resize the shorter side, center-crop, scale,
//! normalize by mean and standard deviation, order channels, lay out as the model's input.
//! `imagenet` is the usual preset (shorter side 256, crop 224, pixel / 255, ImageNet's mean
//! and std, RGB, NCHW); `key=value` pairs after it change a part.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::ir::DType;
use crate::runtime::HostTensor;

#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// The shorter side is resized to this before cropping (`None`: no resize).
    pub resize: Option<u32>,
    /// The center crop, height and width (`None`: the model's declared size, else
    /// `default_crop`, else the whole image).
    pub crop: Option<(u32, u32)>,
    pub default_crop: Option<(u32, u32)>,
    /// Pixel values are divided by this first.
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub bgr: bool,
    pub nhwc: bool,
}

impl Preprocess {
    pub fn imagenet() -> Preprocess {
        Preprocess {
            resize: Some(256),
            crop: None,
            default_crop: Some((224, 224)),
            scale: 255.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            bgr: false,
            nhwc: false,
        }
    }

    /// Parses `imagenet`, `none` or either followed by `,key=value` pairs: resize=N,
    /// crop=N or HxW, scale=S, mean=a:b:c, std=a:b:c, order=rgb|bgr, layout=nchw|nhwc.
    pub fn parse(spec: &str) -> Result<Preprocess> {
        let mut parts = spec.split(',');
        let mut p = match parts.next().unwrap_or_default() {
            "imagenet" => Preprocess::imagenet(),
            "none" => Preprocess {
                resize: None,
                crop: None,
                default_crop: None,
                scale: 1.0,
                mean: [0.0; 3],
                std: [1.0; 3],
                bgr: false,
                nhwc: false,
            },
            other => {
                bail!("--preprocess '{spec}': starts with 'imagenet' or 'none', not '{other}'")
            }
        };
        let three = |v: &str| -> Result<[f32; 3]> {
            let xs: Vec<f32> = v
                .split(':')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| {
                    format!("--preprocess '{spec}': '{v}' is not three numbers a:b:c")
                })?;
            xs.try_into().map_err(|_| {
                anyhow::anyhow!("--preprocess '{spec}': '{v}' is not three numbers a:b:c")
            })
        };
        let number = |v: &str| -> Result<u32> {
            v.parse()
                .with_context(|| format!("--preprocess '{spec}': '{v}' is not a size"))
        };
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--preprocess '{spec}': '{kv}' is not key=value"))?;
            match k {
                "resize" => p.resize = Some(number(v)?),
                "crop" => {
                    p.crop = Some(match v.split_once('x') {
                        Some((h, w)) => (number(h)?, number(w)?),
                        None => (number(v)?, number(v)?),
                    })
                }
                "scale" => {
                    p.scale = v
                        .parse()
                        .with_context(|| format!("--preprocess '{spec}': bad scale '{v}'"))?
                }
                "mean" => p.mean = three(v)?,
                "std" => p.std = three(v)?,
                "order" => p.bgr = v == "bgr",
                "layout" => p.nhwc = v == "nhwc",
                _ => bail!("--preprocess '{spec}': unknown key '{k}'"),
            }
        }
        Ok(p)
    }

    /// The image at `path` as a [1, 3, H, W] (or [1, H, W, 3]) f32 sample; `size` is the
    /// model's declared (H, W), used when no crop is given.
    pub fn load(&self, path: &Path, size: Option<(u32, u32)>) -> Result<HostTensor> {
        let img = image::open(path)
            .with_context(|| format!("{}: cannot decode the image", path.display()))?
            .to_rgb8();
        let img = match self.resize {
            Some(short) => {
                let (w, h) = img.dimensions();
                let k = short as f32 / w.min(h) as f32;
                let (nw, nh) = (
                    ((w as f32 * k).round() as u32).max(1),
                    ((h as f32 * k).round() as u32).max(1),
                );
                image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle)
            }
            None => img,
        };
        let (w, h) = img.dimensions();
        let (ch, cw) = self.crop.or(size).or(self.default_crop).unwrap_or((h, w));
        if ch > h || cw > w {
            bail!(
                "{}: the image is {w}x{h} after resizing, smaller than the {cw}x{ch} crop",
                path.display()
            );
        }
        let (top, left) = ((h - ch) / 2, (w - cw) / 2);
        let (ch, cw) = (ch as usize, cw as usize);
        let mut out = vec![0f32; 3 * ch * cw];
        for y in 0..ch {
            for x in 0..cw {
                let px = img.get_pixel(left + x as u32, top + y as u32).0;
                for c in 0..3 {
                    let src = if self.bgr { 2 - c } else { c };
                    let v = (px[src] as f32 / self.scale - self.mean[c]) / self.std[c];
                    let at = if self.nhwc {
                        (y * cw + x) * 3 + c
                    } else {
                        (c * ch + y) * cw + x
                    };
                    out[at] = v;
                }
            }
        }
        let shape = if self.nhwc {
            vec![1, ch, cw, 3]
        } else {
            vec![1, 3, ch, cw]
        };
        let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor::from_le_bytes(DType::F32, &shape, &bytes)
    }
}
