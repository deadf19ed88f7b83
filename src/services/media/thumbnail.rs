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

/// What to answer for a thumbnail request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// The original is no larger than asked for: serve it as is.
    Original {
        /// Its detected content type.
        content_type: &'static str,
    },
    /// A new thumbnail.
    Thumbnail {
        /// Encoded bytes.
        bytes: Vec<u8>,
        /// `image/jpeg` or `image/png`.
        content_type: &'static str,
        /// Actual width.
        width: u32,
        /// Actual height.
        height: u32,
    },
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

/// Renders the thumbnail for a request of `width`×`height` with `method`.
pub fn render(
    bytes: &[u8],
    method: Method,
    width: u32,
    height: u32,
    max_pixels: u64,
) -> Result<Rendered, ThumbnailError> {
    let (format, ow, oh) = probe(bytes, max_pixels)?;
    let original_type = content_type_of(format).ok_or(ThumbnailError::Unsupported)?;
    let (bw, bh) = target_box(method, width, height, (ow, oh));
    // Never upscale: an original no larger than the box is served as is.
    let needs_scaling = match method {
        Method::Scale => ow > bw || oh > bh,
        Method::Crop => ow > bw && oh > bh,
    };
    if !needs_scaling {
        return Ok(Rendered::Original {
            content_type: original_type,
        });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(ow);
    limits.max_image_height = Some(oh);
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| ThumbnailError::Corrupt(e.to_string()))?;
    let thumbnail = match method {
        Method::Scale => {
            let (tw, th) = fit_within((ow, oh), (bw, bh));
            image.thumbnail_exact(tw, th)
        }
        Method::Crop => {
            let scale = (f64::from(bw) / f64::from(ow)).max(f64::from(bh) / f64::from(oh));
            let sw = ((f64::from(ow) * scale).ceil() as u32).clamp(bw, ow);
            let sh = ((f64::from(oh) * scale).ceil() as u32).clamp(bh, oh);
            let scaled = image.thumbnail_exact(sw, sh);
            scaled.crop_imm((sw - bw) / 2, (sh - bh) / 2, bw, bh)
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
    Ok(Rendered::Thumbnail {
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

    fn dims(r: &Rendered) -> (u32, u32) {
        match r {
            Rendered::Thumbnail { width, height, .. } => (*width, *height),
            Rendered::Original { .. } => panic!("expected a thumbnail"),
        }
    }

    #[test]
    fn scale_snaps_to_standard_sizes_and_keeps_aspect() {
        let r = render(&jpeg(1600, 1200), Method::Scale, 256, 256, 1 << 30).unwrap();
        assert_eq!(dims(&r), (320, 240));
        assert!(matches!(
            r,
            Rendered::Thumbnail {
                content_type: "image/jpeg",
                ..
            }
        ));
        // Larger than the biggest standard size: exact box, aspect kept.
        let r = render(&jpeg(1600, 1200), Method::Scale, 1000, 1000, 1 << 30).unwrap();
        assert_eq!(dims(&r), (1000, 750));
    }

    #[test]
    fn scale_is_never_smaller_than_asked_in_both_dimensions() {
        for (w, h) in [(100, 100), (320, 240), (321, 241), (500, 90), (90, 500)] {
            let (tw, th) = dims(&render(&jpeg(1200, 900), Method::Scale, w, h, 1 << 30).unwrap());
            assert!(tw >= w || th >= h, "{w}x{h} gave {tw}x{th}");
        }
    }

    #[test]
    fn crop_fills_the_box_exactly() {
        let r = render(&png(400, 300), Method::Crop, 96, 96, 1 << 30).unwrap();
        assert_eq!(dims(&r), (96, 96));
        assert!(matches!(
            r,
            Rendered::Thumbnail {
                content_type: "image/png",
                ..
            }
        ));
        let r = render(&png(400, 300), Method::Crop, 40, 40, 1 << 30).unwrap();
        assert_eq!(dims(&r), (96, 96), "snapped to the standard 96x96");
        let r = render(&png(400, 300), Method::Crop, 200, 50, 1 << 30).unwrap();
        assert_eq!(dims(&r), (200, 50));
    }

    #[test]
    fn small_originals_are_served_as_they_are() {
        let r = render(&png(50, 40), Method::Scale, 320, 240, 1 << 30).unwrap();
        assert_eq!(
            r,
            Rendered::Original {
                content_type: "image/png"
            }
        );
        let r = render(&png(50, 40), Method::Crop, 96, 96, 1 << 30).unwrap();
        assert_eq!(
            r,
            Rendered::Original {
                content_type: "image/png"
            }
        );
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
            render(&broken, Method::Scale, 10, 10, 1 << 30),
            Err(ThumbnailError::Corrupt(_))
        ));
        // A truncated image must not panic, whatever the decoder makes of it.
        let mut truncated = png(100, 100);
        truncated.truncate(60);
        let _ = render(&truncated, Method::Scale, 10, 10, 1 << 30);
    }
}
