//! Images for vision-language models, sent as `data:` URLs: generated PNGs (random coloured
//! blocks, unique per request so an encoder cache cannot serve them) or the user's files.

use std::path::Path;

use anyhow::Context;
use base64::Engine as _;
use rand::{Rng, RngExt};

/// A generated `width`×`height` PNG of random coloured 16-pixel blocks, as a data URL.
pub fn generated_data_url(rng: &mut impl Rng, width: u32, height: u32) -> String {
    let (w, h) = (width.max(1), height.max(1));
    let bw = w.div_ceil(16) as usize;
    let bh = h.div_ceil(16) as usize;
    let colours: Vec<[u8; 3]> = (0..bw * bh)
        .map(|_| [rng.random(), rng.random(), rng.random()])
        .collect();
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h as usize {
        for x in 0..w as usize {
            pixels.extend_from_slice(&colours[(y / 16) * bw + x / 16]);
        }
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        // Writing to a Vec cannot fail for a well-formed header and the right data length.
        if let Ok(mut writer) = enc.write_header() {
            let _ = writer.write_image_data(&pixels);
        }
    }
    data_url("image/png", &png_bytes)
}

/// Reads an image file into a data URL; the MIME type follows the extension.
pub fn file_data_url(path: &Path) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let mime = match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ => anyhow::bail!(
            "unsupported image type {}: use png, jpg, gif or webp",
            path.display()
        ),
    };
    Ok(data_url(mime, &bytes))
}

fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generated_png_decodes_at_the_requested_size() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let url = generated_data_url(&mut rng, 40, 24);
        let b64 = url.strip_prefix("data:image/png;base64,").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (40, 24));
        let other = generated_data_url(&mut rng, 40, 24);
        assert_ne!(url, other);
    }
}
