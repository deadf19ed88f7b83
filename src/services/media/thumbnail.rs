//! Thumbnail sizing and rendering. Pure: bytes in, bytes out, no I/O.
//!
//! Spec: client-server API, "Thumbnails": `scale` keeps the aspect ratio and fits the
//! requested box; `crop` fills the requested box exactly; never upscale; never smaller than
//! requested unless the original is (then the original is served). We snap `scale` requests
//! to the spec's recommended sizes, as Synapse does, so a handful of thumbnails per image
//! serve every client.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

/// `scale` or `crop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Fit inside the box, keeping the aspect ratio.
    Scale,
    /// Fill the box exactly, cropping the overflow.
    Crop,
}

impl Method {
    /// Parses the query value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scale" => Some(Self::Scale),
            "crop" => Some(Self::Crop),
            _ => None,
        }
    }

    /// The query value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scale => "scale",
            Self::Crop => "crop",
        }
    }
}

/// The spec's recommended `scale` sizes.
const STANDARD_SCALE: [(u32, u32); 3] = [(320, 240), (640, 480), (800, 600)];
/// The spec's recommended `crop` sizes.
const STANDARD_CROP: [u32; 2] = [32, 96];

/// Why a thumbnail cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThumbnailError {
    /// Not an image format we decode (JPEG, PNG, GIF, WebP).
    Unsupported,
    /// More pixels than allowed.
    TooLarge,
    /// The image data is corrupt.
    Corrupt(String),
}

/// What to do for a thumbnail request, decided from the image's dimensions alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The original is no larger than asked for: serve it as is.
    Original,
    /// Render an image of exactly `width`×`height` (for `crop`, the box to fill).
    Render {
        /// Output width.
        width: u32,
        /// Output height.
        height: u32,
    },
}

/// A rendered thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Encoded bytes.
    pub bytes: Vec<u8>,
    /// `image/jpeg` or `image/png`.
    pub content_type: &'static str,
    /// Actual width.
    pub width: u32,
    /// Actual height.
    pub height: u32,
}

/// Decides what to serve. `may_be_animated` (GIF, WebP) forbids serving the original,
/// since an animated image must not be answered unless asked for: such images are
/// rendered as a static PNG, at their own size when they are small.
pub fn plan(
    method: Method,
    width: u32,
    height: u32,
    original: (u32, u32),
    may_be_animated: bool,
) -> Plan {
    let (ow, oh) = original;
    let (bw, bh) = target_box(method, width, height, original);
    let fits = match method {
        Method::Scale => ow <= bw && oh <= bh,
        Method::Crop => ow <= bw || oh <= bh,
    };
    if fits {
        return if may_be_animated {
            Plan::Render {
                width: ow,
                height: oh,
            }
        } else {
            Plan::Original
        };
    }
    let (width, height) = match method {
        Method::Scale => fit_within(original, (bw, bh)),
        Method::Crop => (bw, bh),
    };
    Plan::Render { width, height }
}

/// The box to render for a request: snapped to a standard size where one fits.
pub fn target_box(method: Method, width: u32, height: u32, original: (u32, u32)) -> (u32, u32) {
    match method {
        Method::Scale => STANDARD_SCALE
            .iter()
            .copied()
            .find(|&(bw, bh)| {
                let (tw, th) = fit_within(original, (bw, bh));
                tw >= width.min(original.0) || th >= height.min(original.1)
            })
            .unwrap_or((width, height)),
        Method::Crop if width == height => STANDARD_CROP
            .iter()
            .copied()
            .find(|&side| side >= width)
            .map_or((width, height), |side| (side, side)),
        Method::Crop => (width, height),
    }
}

/// Dimensions of `original` scaled to fit inside `bounds`, never upscaled, at least 1×1.
pub fn fit_within(original: (u32, u32), bounds: (u32, u32)) -> (u32, u32) {
    let (w, h) = (f64::from(original.0), f64::from(original.1));
    let scale = (f64::from(bounds.0) / w)
        .min(f64::from(bounds.1) / h)
        .min(1.0);
    (
        ((w * scale).round() as u32).max(1),
        ((h * scale).round() as u32).max(1),
    )
}

/// The content type of a format we can thumbnail.
pub fn content_type_of(format: ImageFormat) -> Option<&'static str> {
    match format {
        ImageFormat::Jpeg => Some("image/jpeg"),
        ImageFormat::Png => Some("image/png"),
        ImageFormat::Gif => Some("image/gif"),
        ImageFormat::WebP => Some("image/webp"),
        _ => None,
    }
}

/// Reads only the header: format and dimensions, refusing unsupported formats and images
/// with more than `max_pixels` pixels (decompression bombs) before any decoding.
pub fn probe(bytes: &[u8], max_pixels: u64) -> Result<(ImageFormat, u32, u32), ThumbnailError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ThumbnailError::Corrupt(e.to_string()))?;
    // Reading the header allocates nothing; our own pixel limit applies below.
    reader.no_limits();
    let format = reader
        .format()
        .filter(|f| content_type_of(*f).is_some())
        .ok_or(ThumbnailError::Unsupported)?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| ThumbnailError::Corrupt(e.to_string()))?;
    if w == 0 || h == 0 {
        return Err(ThumbnailError::Corrupt("empty image".into()));
    }
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(ThumbnailError::TooLarge);
    }
    Ok((format, w, h))
}

/// Renders a planned thumbnail of `width`×`height` from the image in `bytes`.
pub fn render(
    bytes: &[u8],
    method: Method,
    width: u32,
    height: u32,
    max_pixels: u64,
) -> Result<Rendered, ThumbnailError> {
    let (format, ow, oh) = probe(bytes, max_pixels)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(ow);
    limits.max_image_height = Some(oh);
    // Room for the decoded pixels at up to 8 bytes each (16-bit RGBA), no more.
    limits.max_alloc = Some(u64::from(ow) * u64::from(oh) * 8 + (1 << 20));
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| ThumbnailError::Corrupt(e.to_string()))?;
    let thumbnail = if (width, height) == (ow, oh) {
        image
    } else {
        match method {
            Method::Scale => image.thumbnail_exact(width.min(ow), height.min(oh)),
            Method::Crop => {
                let scale =
                    (f64::from(width) / f64::from(ow)).max(f64::from(height) / f64::from(oh));
                let sw = ((f64::from(ow) * scale).ceil() as u32).clamp(width.min(ow), ow);
                let sh = ((f64::from(oh) * scale).ceil() as u32).clamp(height.min(oh), oh);
                let scaled = image.thumbnail_exact(sw, sh);
                let (cw, ch) = (width.min(sw), height.min(sh));
                scaled.crop_imm((sw - cw) / 2, (sh - ch) / 2, cw, ch)
            }
        }
    };
    encode(thumbnail, format)
}

/// JPEG stays JPEG (no alpha to keep); everything else becomes PNG.
fn encode(image: DynamicImage, source: ImageFormat) -> Result<Rendered, ThumbnailError> {
    let (width, height) = (image.width(), image.height());
    let mut out = Cursor::new(Vec::new());
    let content_type = if source == ImageFormat::Jpeg {
        let encoder = JpegEncoder::new_with_quality(&mut out, 85);
        DynamicImage::ImageRgb8(image.to_rgb8())
            .write_with_encoder(encoder)
            .map_err(|e| ThumbnailError::Corrupt(e.to_string()))?;
        "image/jpeg"
    } else {
        image
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|e| ThumbnailError::Corrupt(e.to_string()))?;
        "image/png"
    };
    Ok(Rendered {
        bytes: out.into_inner(),
        content_type,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage, RgbaImage};

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(img)
            .write_to(&mut out, ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = RgbaImage::from_pixel(w, h, image::Rgba([1, 2, 3, 4]));
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    /// Probe, plan and render, as the media service does.
    fn make(bytes: &[u8], method: Method, w: u32, h: u32) -> Option<Rendered> {
        let (format, ow, oh) = probe(bytes, 1 << 30).unwrap();
        let animated = matches!(format, ImageFormat::Gif | ImageFormat::WebP);
        match plan(method, w, h, (ow, oh), animated) {
            Plan::Original => None,
            Plan::Render { width, height } => {
                Some(render(bytes, method, width, height, 1 << 30).unwrap())
            }
        }
    }

    fn dims(r: &Option<Rendered>) -> (u32, u32) {
        let r = r.as_ref().expect("expected a thumbnail");
        (r.width, r.height)
    }

    #[test]
    fn scale_snaps_to_standard_sizes_and_keeps_aspect() {
        let r = make(&jpeg(1600, 1200), Method::Scale, 256, 256);
        assert_eq!(dims(&r), (320, 240));
        assert_eq!(r.unwrap().content_type, "image/jpeg");
        // Larger than the biggest standard size: exact box, aspect kept.
        let r = make(&jpeg(1600, 1200), Method::Scale, 1000, 1000);
        assert_eq!(dims(&r), (1000, 750));
    }

    #[test]
    fn scale_is_never_smaller_than_asked_in_both_dimensions() {
        for (w, h) in [(100, 100), (320, 240), (321, 241), (500, 90), (90, 500)] {
            let (tw, th) = dims(&make(&jpeg(1200, 900), Method::Scale, w, h));
            assert!(tw >= w || th >= h, "{w}x{h} gave {tw}x{th}");
        }
    }

    #[test]
    fn crop_fills_the_box_exactly() {
        let r = make(&png(400, 300), Method::Crop, 96, 96);
        assert_eq!(dims(&r), (96, 96));
        assert_eq!(r.unwrap().content_type, "image/png");
        let r = make(&png(400, 300), Method::Crop, 40, 40);
        assert_eq!(dims(&r), (96, 96), "snapped to the standard 96x96");
        let r = make(&png(400, 300), Method::Crop, 200, 50);
        assert_eq!(dims(&r), (200, 50));
    }

    #[test]
    fn small_originals_are_served_as_they_are() {
        assert_eq!(make(&png(50, 40), Method::Scale, 320, 240), None);
        assert_eq!(make(&png(50, 40), Method::Crop, 96, 96), None);
        assert_eq!(
            plan(Method::Scale, 2000, 2000, (1200, 900), false),
            Plan::Original
        );
    }

    #[test]
    fn possibly_animated_originals_are_rendered_static() {
        let mut gif = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(20, 10, image::Rgba([9, 9, 9, 255])))
            .write_to(&mut gif, ImageFormat::Gif)
            .unwrap();
        let r =
            make(&gif.into_inner(), Method::Scale, 320, 240).expect("rendered, not the original");
        assert_eq!((r.width, r.height, r.content_type), (20, 10, "image/png"));
    }

    #[test]
    fn pixel_limit_refuses_before_decoding() {
        assert_eq!(probe(&png(100, 100), 9_999), Err(ThumbnailError::TooLarge));
        assert!(probe(&png(100, 100), 10_000).is_ok());
    }

    #[test]
    fn non_images_and_garbage_are_refused() {
        assert_eq!(
            probe(b"PK\x03\x04 a zip file", 1 << 30),
            Err(ThumbnailError::Unsupported)
        );
        let broken = b"\x89PNG\r\n\x1a\nthis is not a PNG header at all".to_vec();
        assert!(matches!(
            probe(&broken, 1 << 30),
            Err(ThumbnailError::Corrupt(_))
        ));
        // A truncated image must not panic, whatever the decoder makes of it.
        let mut truncated = png(100, 100);
        truncated.truncate(60);
        let _ = render(&truncated, Method::Scale, 10, 10, 1 << 30);
        let _ = render(&truncated, Method::Crop, 10, 10, 1 << 30);
    }
}
