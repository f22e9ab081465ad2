//! The generated image suite for vision-language models: kvbench draws each image itself (a
//! number in large block digits, or a count of filled shapes), so the image path of a VL
//! model is checked end to end with an answer known exactly. Images are PNGs sent as data
//! URLs on the chat endpoint.

use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::grade::Grader;
use super::{fnv1a64, Item};
use crate::workload::Prompt;

/// Side of the square images in pixels.
pub const IMAGE_SIZE: u32 = 384;
/// Output budget of image answers.
pub const IMAGES_MAX_TOKENS: u32 = 24;

/// 5×7 block glyphs of the digits 0–9, one row per byte (bit 4 = leftmost column).
const DIGITS: [[u8; 7]; 10] = [
    [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E], // 0
    [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E], // 1
    [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F], // 2
    [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E], // 3
    [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02], // 4
    [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E], // 5
    [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E], // 6
    [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08], // 7
    [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E], // 8
    [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C], // 9
];

/// An RGB canvas.
pub struct Canvas {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGB bytes.
    pub pixels: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: vec![255; (width * height * 3) as usize],
        }
    }

    fn set(&mut self, x: u32, y: u32, c: [u8; 3]) {
        if x < self.width && y < self.height {
            let i = ((y * self.width + x) * 3) as usize;
            self.pixels[i..i + 3].copy_from_slice(&c);
        }
    }

    /// The colour at (x, y).
    pub fn get(&self, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * self.width + x) * 3) as usize;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    fn rect(&mut self, x0: u32, y0: u32, w: u32, h: u32, c: [u8; 3]) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, c);
            }
        }
    }

    fn disc(&mut self, cx: u32, cy: u32, r: u32, c: [u8; 3]) {
        let r2 = (r * r) as i64;
        for y in cy.saturating_sub(r)..=cy + r {
            for x in cx.saturating_sub(r)..=cx + r {
                let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
                if dx * dx + dy * dy <= r2 {
                    self.set(x, y, c);
                }
            }
        }
    }

    /// Draws `digits` centred, each glyph cell `scale` pixels wide.
    pub fn number(&mut self, digits: &str, scale: u32, c: [u8; 3]) {
        let n = digits.len() as u32;
        let glyph_w = 6 * scale; // 5 columns and a 1-column gap
        let total_w = n * glyph_w - scale;
        let x0 = self.width.saturating_sub(total_w) / 2;
        let y0 = self.height.saturating_sub(7 * scale) / 2;
        for (k, ch) in digits.bytes().enumerate() {
            let Some(glyph) = ch.checked_sub(b'0').and_then(|d| DIGITS.get(d as usize)) else {
                continue;
            };
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.rect(
                            x0 + k as u32 * glyph_w + col * scale,
                            y0 + row as u32 * scale,
                            scale,
                            scale,
                            c,
                        );
                    }
                }
            }
        }
    }

    /// PNG bytes.
    pub fn png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width, self.height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            // Writing to a Vec cannot fail for a well-formed header and the right data length.
            if let Ok(mut w) = enc.write_header() {
                let _ = w.write_image_data(&self.pixels);
            }
        }
        out
    }

    /// A `data:image/png;base64,...` URL.
    pub fn data_url(&self) -> String {
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(self.png())
        )
    }
}

const COLOURS: [[u8; 3]; 4] = [[200, 30, 30], [30, 90, 200], [20, 140, 60], [20, 20, 20]];

/// Places `count` shapes of radius `r` on a grid of 3×3 cells (one per cell, at most 9), with
/// jitter inside each cell, so shapes never touch.
fn shapes(rng: &mut StdRng, canvas: &mut Canvas, count: u32, circle: bool, c: [u8; 3]) {
    let cell = canvas.width / 3;
    let r = cell / 5;
    let mut cells: Vec<u32> = (0..9).collect();
    for _ in 0..count.min(9) {
        let k = cells.remove(rng.random_range(0..cells.len()));
        let jitter = cell / 2 - r - 4;
        let cx = (k % 3) * cell + cell / 2 + rng.random_range(0..=jitter) - jitter / 2;
        let cy = (k / 3) * cell + cell / 2 + rng.random_range(0..=jitter) - jitter / 2;
        if circle {
            canvas.disc(cx, cy, r, c);
        } else {
            canvas.rect(cx - r, cy - r, 2 * r, 2 * r, c);
        }
    }
}

/// The image suite: even items show a number of one to four digits ("what number is
/// written?"), odd items show one to nine circles or squares ("how many?").
pub fn images(seed: u64, items: u32) -> Vec<Item> {
    (0..items)
        .map(|i| {
            let h = fnv1a64(&[seed.to_le_bytes(), (i as u64).to_le_bytes()].concat());
            let mut rng = StdRng::seed_from_u64(h ^ 0x1316_0a6e);
            let mut canvas = Canvas::new(IMAGE_SIZE, IMAGE_SIZE);
            let colour = COLOURS[rng.random_range(0..COLOURS.len())];
            let (text, expected, id) = if i % 2 == 0 {
                let digits = rng.random_range(1..=4u32);
                let lo = if digits == 1 {
                    0
                } else {
                    10u32.pow(digits - 1)
                };
                let value = rng.random_range(lo..10u32.pow(digits));
                let s = value.to_string();
                let scale = (IMAGE_SIZE * 8 / 10) / (6 * s.len() as u32);
                canvas.number(&s, scale.min(24), colour);
                (
                    "What number is written in the image? Answer with the number only.",
                    s,
                    format!("number-{i}"),
                )
            } else {
                let count = rng.random_range(1..=9u32);
                let circle = rng.random_bool(0.5);
                shapes(&mut rng, &mut canvas, count, circle, colour);
                (
                    if circle {
                        "How many circles are in the image? Answer with a number only."
                    } else {
                        "How many squares are in the image? Answer with a number only."
                    },
                    count.to_string(),
                    format!("count-{i}"),
                )
            };
            Item {
                suite: "images".into(),
                id,
                prompt: Prompt::Text(text.to_owned()),
                images: vec![canvas.data_url()],
                expected,
                grader: Grader::FirstNumber,
                max_tokens: IMAGES_MAX_TOKENS,
                length: None,
                depth: None,
                prompt_tokens_est: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(url: &str) -> Canvas {
        let b64 = url.strip_prefix("data:image/png;base64,").unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        Canvas {
            width: info.width,
            height: info.height,
            pixels: buf,
        }
    }

    /// Reads block digits back from a canvas: finds the ink's bounding box and samples each
    /// glyph cell's centre.
    fn read_number(c: &Canvas) -> String {
        let ink = |x, y| c.get(x, y) != [255, 255, 255];
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        for y in 0..c.height {
            for x in 0..c.width {
                if ink(x, y) {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x);
                    y1 = y1.max(y);
                }
            }
        }
        let scale = (y1 - y0 + 1) / 7;
        // Edge glyphs may leave their outer columns blank ("1"): round to the nearest count.
        let n = ((x1 - x0 + 1 + scale) as f64 / (6 * scale) as f64).round() as u32;
        // The first digit may not use its leftmost column (e.g. "1"): align on the glyph grid
        // centred in the image instead of on the ink.
        let total_w = n * 6 * scale - scale;
        let gx0 = (c.width - total_w) / 2;
        let gy0 = (c.height - 7 * scale) / 2;
        (0..n)
            .map(|k| {
                let mut glyph = [0u8; 7];
                for (row, bits) in glyph.iter_mut().enumerate() {
                    for col in 0..5 {
                        let x = gx0 + k * 6 * scale + col * scale + scale / 2;
                        let y = gy0 + row as u32 * scale + scale / 2;
                        if ink(x, y) {
                            *bits |= 0x10 >> col;
                        }
                    }
                }
                let d = DIGITS.iter().position(|g| *g == glyph).expect("a digit");
                char::from(b'0' + d as u8)
            })
            .collect()
    }

    /// Counts connected blobs of ink (4-neighbour flood fill).
    fn count_blobs(c: &Canvas) -> u32 {
        let (w, h) = (c.width as usize, c.height as usize);
        let mut seen = vec![false; w * h];
        let mut blobs = 0;
        for start in 0..w * h {
            let (x, y) = ((start % w) as u32, (start / w) as u32);
            if seen[start] || c.get(x, y) == [255, 255, 255] {
                continue;
            }
            blobs += 1;
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(p) = stack.pop() {
                let (px, py) = (p % w, p / w);
                let near = [
                    (px.wrapping_sub(1), py),
                    (px + 1, py),
                    (px, py.wrapping_sub(1)),
                    (px, py + 1),
                ];
                for (nx, ny) in near {
                    if nx < w && ny < h {
                        let q = ny * w + nx;
                        if !seen[q] && c.get(nx as u32, ny as u32) != [255, 255, 255] {
                            seen[q] = true;
                            stack.push(q);
                        }
                    }
                }
            }
        }
        blobs
    }

    #[test]
    fn drawn_images_show_the_expected_answer() {
        let items = images(11, 24);
        assert_eq!(items, images(11, 24), "seeded");
        for item in &items {
            assert_eq!(item.images.len(), 1);
            let c = decode(&item.images[0]);
            assert_eq!((c.width, c.height), (IMAGE_SIZE, IMAGE_SIZE));
            if item.id.starts_with("number") {
                assert_eq!(read_number(&c), item.expected, "{}", item.id);
            } else {
                assert_eq!(count_blobs(&c).to_string(), item.expected, "{}", item.id);
            }
        }
    }
}
