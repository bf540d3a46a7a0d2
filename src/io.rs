//! Tensors in and out of files: `.npy` arrays, images, labels, top-k results.
//!
//! Every reader here takes untrusted bytes: sizes in a header are checked against the
//! file's length before anything is allocated, and a malformed file is an [`IoError`],
//! never a panic.

use std::fmt;
use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageReader, Limits, Luma};

use crate::ir::shape::fmt_shape;
use crate::tensor::Tensor;

/// A tensor file or image that cannot be read, or does not fit the network. The message
/// is complete and meant for the user; it names neither the file nor says "error", which
/// the caller adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoError(pub String);

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IoError {}

/// A file's bytes: read into memory, or mapped (see [`map_file`]).
pub enum FileBytes {
    Read(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Read(bytes) => bytes,
            FileBytes::Mapped(map) => map,
        }
    }
}

fn open_capped(path: &std::path::Path, limit: u64, what: &str) -> Result<(std::fs::File, u64, bool), IoError> {
    let describe = |e: std::io::Error| IoError(format!("cannot read {what} {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(describe)?;
    let metadata = file.metadata().map_err(describe)?;
    if metadata.is_dir() {
        return Err(IoError(format!("{} is a directory, not a {what}", path.display())));
    }
    if metadata.len() > limit {
        return Err(too_big(path, what, limit, &format!("is {} bytes", metadata.len())));
    }
    Ok((file, metadata.len(), metadata.is_file()))
}

fn too_big(path: &std::path::Path, what: &str, limit: u64, how: &str) -> IoError {
    IoError(format!("{} {how}; a {what} may be at most {limit} bytes", path.display()))
}

/// Reads a whole file of at most `limit` bytes. The limit holds for files whose size
/// the file system does not know (a pipe, `/dev/zero`): reading stops one byte past it.
/// `what` names the file in messages ("program", "weights file").
pub fn read_file(path: &std::path::Path, limit: u64, what: &str) -> Result<Vec<u8>, IoError> {
    use std::io::Read;
    let (file, len, _) = open_capped(path, limit, what)?;
    let failed = |e: std::io::Error| IoError(format!("cannot read {what} {}: {e}", path.display()));
    // Fallible growth: a file larger than the memory there is (under `ulimit -v`, say) is
    // an error, not an allocation failure that aborts.
    let no_memory =
        |size: usize| IoError(format!("{} is too large to read: no memory for {size} bytes", path.display()));
    let mut bytes: Vec<u8> = Vec::new();
    bytes.try_reserve_exact(len as usize).map_err(|_| no_memory(len as usize))?;
    let mut reader = file.take(limit.saturating_add(1));
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(e)),
        };
        bytes.try_reserve(n).map_err(|_| no_memory(bytes.len() + n))?;
        bytes.extend_from_slice(&chunk[..n]);
    }
    if bytes.len() as u64 > limit {
        return Err(too_big(path, what, limit, "holds more"));
    }
    Ok(bytes)
}

/// Like [`read_file`], but maps a regular file into memory instead of copying it (the
/// weights: their values are copied out once, so the file's bytes need not be in memory
/// twice). Other files are read.
pub fn map_file(path: &std::path::Path, limit: u64, what: &str) -> Result<FileBytes, IoError> {
    let (file, len, regular) = open_capped(path, limit, what)?;
    if regular && len > 0 {
        // SAFETY: the map is read-only and private; a file truncated by another process
        // while mapped would fault, the risk every mapped reader (and safetensors' own
        // Python loader) takes.
        if let Ok(map) = unsafe { memmap2::Mmap::map(&file) }
            && map.len() as u64 == len
        {
            return Ok(FileBytes::Mapped(map));
        }
    }
    read_file(path, limit, what).map(FileBytes::Read)
}

fn npy_error(what: impl fmt::Display) -> IoError {
    IoError(format!("not a valid .npy file: {what}"))
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `.npy` array of little-endian float32 in C order (what `np.save(path,
/// x.astype(np.float32))` writes). Other dtypes and Fortran order are errors naming what
/// the file holds. The shape's byte size is checked against the data in the file before
/// anything is allocated.
///
/// The format is parsed here by hand rather than with `npyz`: it is tiny (magic, version,
/// header length, a Python dict literal), and a parser of our own makes it plain that a
/// header claiming a huge shape is rejected before any allocation and that nothing
/// panics, which would otherwise need auditing another crate's reader.
pub fn read_npy(bytes: &[u8]) -> Result<Tensor, IoError> {
    if bytes.len() < 8 || &bytes[..6] != NPY_MAGIC {
        return Err(npy_error("it does not start with the .npy magic `\\x93NUMPY`"));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, header_start) = match major {
        1 => (bytes.get(8..10).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize), 10),
        2 | 3 => (bytes.get(8..12).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize), 12),
        _ => return Err(npy_error(format!("format version {major}.{minor} is not 1.0, 2.0 or 3.0"))),
    };
    let header_len = header_len.ok_or_else(|| npy_error("the file ends inside the header length"))?;
    let header_end = header_start + header_len;
    let Some(header) = bytes.get(header_start..header_end) else {
        return Err(npy_error(format!(
            "the header length is {header_len} bytes but only {} bytes follow (truncated?)",
            bytes.len() - header_start
        )));
    };
    let header = std::str::from_utf8(header).map_err(|_| npy_error("the header is not text (ASCII or UTF-8)"))?;
    let header = parse_header(header)?;

    if header.fortran_order {
        return Err(IoError(
            "the .npy array is in Fortran (column-major) order; cnnc reads C order only: \
             save `np.ascontiguousarray(x)` instead"
                .to_string(),
        ));
    }
    if header.descr != "<f4" {
        return Err(IoError(format!(
            "the .npy array holds {} ('{}'); cnnc reads float32 ('<f4') only: save `x.astype(np.float32)` instead",
            describe_dtype(&header.descr),
            header.descr
        )));
    }
    let data = &bytes[header_end..];
    let count = header.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let needed = count.and_then(|c| c.checked_mul(4));
    if needed != Some(data.len() as u64) {
        let values = match count {
            Some(c) => format!("{c} float32 values"),
            None => "more values than can be counted".to_string(),
        };
        return Err(IoError(format!(
            "the .npy header says shape {} ({values}) but the file holds {} bytes of data{}",
            python_shape(&header.shape),
            data.len(),
            if needed.is_some_and(|n| n > data.len() as u64) { " (truncated?)" } else { "" }
        )));
    }
    // The data length bounds every dimension, so they all fit in usize.
    let shape: Vec<usize> = header.shape.iter().map(|&d| d as usize).collect();
    let values = data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(Tensor::new(shape, values).expect("the data length was checked against the shape"))
}

struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// A value of the header's dict literal.
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
    /// A list (a structured dtype's descr) or something else we do not read.
    Other(&'static str),
}

/// Parses the header, a Python dict literal such as
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(text: &str) -> Result<NpyHeader, IoError> {
    let mut p = Parser { s: text.as_bytes(), at: 0 };
    let bad = |what: &str| npy_error(format!("the header `{}` {what}", text.trim_end()));
    p.skip_ws();
    if !p.eat(b'{') {
        return Err(bad("is not a Python dict"));
    }
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string().ok_or_else(|| bad("has a key that is not a string"))?;
        p.skip_ws();
        if !p.eat(b':') {
            return Err(bad("is not a Python dict"));
        }
        p.skip_ws();
        let value = p.value().ok_or_else(|| bad(&format!("has a value of `{key}` that cannot be read")))?;
        match (key.as_str(), value) {
            ("descr", PyValue::Str(s)) => descr = Some(s),
            ("descr", PyValue::Other(what)) => {
                return Err(IoError(format!(
                    "the .npy array has a structured dtype ({what}); cnnc reads float32 ('<f4') only"
                )));
            }
            ("fortran_order", PyValue::Bool(b)) => fortran = Some(b),
            ("shape", PyValue::Tuple(t)) => shape = Some(t),
            ("descr" | "fortran_order" | "shape", _) => return Err(bad(&format!("has an invalid `{key}`"))),
            _ => {}
        }
        p.skip_ws();
        if p.eat(b',') {
            continue;
        }
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        return Err(bad("is not a Python dict"));
    }
    match (descr, fortran, shape) {
        (Some(descr), Some(fortran_order), Some(shape)) => Ok(NpyHeader { descr, fortran_order, shape }),
        _ => Err(bad("lacks one of `descr`, `fortran_order` and `shape`")),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.peek().filter(|c| *c == b'\'' || *c == b'"')?;
        self.at += 1;
        let start = self.at;
        while self.peek()? != quote {
            self.at += 1;
        }
        let s = std::str::from_utf8(&self.s[start..self.at]).ok()?.to_string();
        self.at += 1;
        Some(s)
    }

    fn word(&mut self, w: &str) -> bool {
        let hit = self.s[self.at..].starts_with(w.as_bytes());
        if hit {
            self.at += w.len();
        }
        hit
    }

    fn integer(&mut self) -> Option<u64> {
        let start = self.at;
        let mut n = 0u64;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.at += 1;
        }
        if self.at == start {
            return None;
        }
        // Python 2 wrote long integers as `3L`.
        self.eat(b'L');
        Some(n)
    }

    fn value(&mut self) -> Option<PyValue> {
        match self.peek()? {
            b'\'' | b'"' => self.string().map(PyValue::Str),
            b'(' => {
                self.at += 1;
                let mut dims = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat(b')') {
                        return Some(PyValue::Tuple(dims));
                    }
                    dims.push(self.integer()?);
                    self.skip_ws();
                    if !self.eat(b',') {
                        self.skip_ws();
                        return self.eat(b')').then_some(PyValue::Tuple(dims));
                    }
                }
            }
            b'[' => Some(PyValue::Other("a list of fields")),
            b'{' => Some(PyValue::Other("a dict")),
            _ if self.word("True") => Some(PyValue::Bool(true)),
            _ if self.word("False") => Some(PyValue::Bool(false)),
            _ => None,
        }
    }
}

/// NumPy's name for a dtype string such as `<f8`.
fn describe_dtype(descr: &str) -> String {
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<' | b'>' | b'|' | b'=') => (&descr[..1], &descr[1..]),
        _ => ("", descr),
    };
    let name = match code {
        "f2" => "float16",
        "f4" => "float32",
        "f8" => "float64",
        "f16" => "float128",
        "i1" => "int8",
        "i2" => "int16",
        "i4" => "int32",
        "i8" => "int64",
        "u1" => "uint8",
        "u2" => "uint16",
        "u4" => "uint32",
        "u8" => "uint64",
        "b1" => "bool",
        "c8" => "complex64",
        "c16" => "complex128",
        "O" => "Python objects",
        _ if code.starts_with('U') || code.starts_with('S') => "strings",
        _ => "an unsupported dtype",
    };
    if order == ">" { format!("big-endian {name}") } else { name.to_string() }
}

/// A shape as Python writes a tuple: `(3,)`, `(2, 3)`.
fn python_shape(shape: &[u64]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
    }
}

/// Writes a `.npy` file, format 1.0, dtype `<f4`, C order (format 2.0 only if the header
/// would not fit 1.0's 64 KiB, which takes thousands of dimensions).
pub fn write_npy(tensor: &Tensor) -> Vec<u8> {
    let shape: Vec<u64> = tensor.shape.iter().map(|&d| d as u64).collect();
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}", python_shape(&shape));
    // Pad with spaces so that the data starts on a 64-byte boundary; end with a newline.
    let padded = |prefix: usize| {
        let mut header = dict.clone();
        while !(prefix + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        header
    };
    let header = padded(10);
    let v1 = header.len() <= usize::from(u16::MAX);
    let (header, prefix) = if v1 { (header, 10) } else { (padded(12), 12) };
    let mut out = Vec::with_capacity(prefix + header.len() + tensor.data.len() * 4);
    out.extend_from_slice(NPY_MAGIC);
    if v1 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    for v in &tensor.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Checks a tensor read from a file against the network input `[N?, C, H, W]`: accepts
/// `[N, C, H, W]` (N ≥ 1) or `[C, H, W]` (then N = 1) where C, H, W equal `expected_chw`.
/// The error names both shapes.
pub fn conform_input(tensor: Tensor, expected_chw: &[usize]) -> Result<Tensor, IoError> {
    let shape = &tensor.shape;
    if shape.as_slice() == expected_chw {
        let mut batched = vec![1];
        batched.extend_from_slice(expected_chw);
        return Ok(Tensor { shape: batched, data: tensor.data });
    }
    if shape.len() == expected_chw.len() + 1 && &shape[1..] == expected_chw {
        if shape[0] == 0 {
            return Err(IoError(format!("the input has shape {}, an empty batch", fmt_shape(shape))));
        }
        return Ok(tensor);
    }
    let dims: Vec<String> = expected_chw.iter().map(usize::to_string).collect();
    Err(IoError(format!(
        "the input has shape {}; the network expects [N, {}] or {}",
        fmt_shape(shape),
        dims.join(", "),
        fmt_shape(expected_chw)
    )))
}

/// ImageNet's per-channel mean (RGB), as torchvision's `Normalize` uses.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The largest image (in pixels) [`load_image`] decodes.
pub const MAX_IMAGE_PIXELS: u64 = 64 << 20;
/// The most memory the image decoder may allocate.
const MAX_IMAGE_ALLOC: u64 = 1 << 30;

/// Decodes a PNG or JPEG, converts it to grayscale (`c` = 1, with PIL's weights 0.299,
/// 0.587, 0.114) or RGB (`c` = 3, alpha dropped), resizes it to `h` x `w` (bilinear,
/// `Triangle`, widened when shrinking as PIL does), scales it to [0, 1] and normalizes
/// each channel as `(x - mean) / std`. `mean` and `std` have `c` entries, or one for all
/// channels. Returns `[1, c, h, w]`.
///
/// Images over [`MAX_IMAGE_PIXELS`] are refused before decoding, and the decoder may
/// allocate at most 1 GiB (decompression bombs).
pub fn load_image(bytes: &[u8], c: usize, h: usize, w: usize, mean: &[f32], std: &[f32]) -> Result<Tensor, IoError> {
    load_image_noted(bytes, c, h, w, mean, std).map(|(tensor, _)| tensor)
}

/// [`load_image`], and what it changed besides scaling and normalizing: "resized from
/// 64x48 to 28x28, RGB converted to grayscale" (`None` when the image already had the
/// input's size and channels).
pub fn load_image_noted(
    bytes: &[u8],
    c: usize,
    h: usize,
    w: usize,
    mean: &[f32],
    std: &[f32],
) -> Result<(Tensor, Option<String>), IoError> {
    if c != 1 && c != 3 {
        return Err(IoError(format!("the network input has {c} channels; an image gives 1 (grayscale) or 3 (RGB)")));
    }
    if h == 0 || w == 0 || u32::try_from(h).is_err() || u32::try_from(w).is_err() {
        return Err(IoError(format!("cannot resize an image to {h}x{w}")));
    }
    if (h as u64).saturating_mul(w as u64) > MAX_IMAGE_PIXELS {
        return Err(IoError(format!(
            "the network input is {h}x{w}; cnnc resizes images to at most {} megapixels",
            MAX_IMAGE_PIXELS >> 20
        )));
    }
    let per_channel = |values: &[f32], what: &str| -> Result<Vec<f32>, IoError> {
        match values.len() {
            1 => Ok(vec![values[0]; c]),
            n if n == c => Ok(values.to_vec()),
            n => Err(IoError(format!("the {what} has {n} values; the network input has {c} channels"))),
        }
    };
    let mean = per_channel(mean, "mean")?;
    let std = per_channel(std, "standard deviation")?;
    if let Some(s) = std.iter().find(|s| !s.is_finite() || **s == 0.0) {
        return Err(IoError(format!("a standard deviation of {s} cannot normalize")));
    }

    let decode_error = |e: image::ImageError| IoError(format!("cannot decode the image: {e}"));
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| IoError(format!("cannot read the image: {e}")))?;
    if reader.format().is_none() {
        return Err(IoError("the file is not a PNG or JPEG image (nor a .npy array)".to_string()));
    }
    let reader_format = reader.format();
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(IoError(format!(
            "the image is {width}x{height} pixels; cnnc decodes images of at most {} megapixels",
            MAX_IMAGE_PIXELS >> 20
        )));
    }
    let image = if reader_format == Some(image::ImageFormat::Jpeg) {
        decode_jpeg_strict(bytes)?
    } else {
        DynamicImage::from_decoder(decoder).map_err(decode_error)?
    };

    let mut changes = Vec::new();
    if (width, height) != (w as u32, h as u32) {
        changes.push(format!("resized from {width}x{height} to {w}x{h} (bilinear)"));
    }
    let color = image.color();
    let source = match (color.has_color(), color.has_alpha()) {
        (true, true) => "RGBA",
        (true, false) => "RGB",
        (false, true) => "grayscale with alpha",
        (false, false) => "grayscale",
    };
    match (c, color.has_color()) {
        (1, true) => changes.push(format!("{source} converted to grayscale (0.299 R + 0.587 G + 0.114 B)")),
        (3, false) => changes.push(format!("{source} converted to RGB (the gray value in each channel)")),
        _ => {}
    }
    if color.has_alpha() && !(c == 1 && color.has_color()) {
        changes.push("alpha dropped".to_string());
    }
    let note = if changes.is_empty() { None } else { Some(changes.join(", ")) };

    let rgb = image.into_rgb32f();
    let (w32, h32) = (w as u32, h as u32);
    // Channel-major planes of the resized image, values in [0, 1].
    let planes: Vec<Vec<f32>> = if c == 1 {
        let gray = ImageBuffer::<Luma<f32>, Vec<f32>>::from_fn(rgb.width(), rgb.height(), |x, y| {
            let [r, g, b] = rgb.get_pixel(x, y).0;
            Luma([0.299 * r + 0.587 * g + 0.114 * b])
        });
        let gray = if gray.dimensions() == (w32, h32) {
            gray
        } else {
            image::imageops::resize(&gray, w32, h32, FilterType::Triangle)
        };
        vec![gray.into_raw()]
    } else {
        let rgb = if rgb.dimensions() == (w32, h32) {
            rgb
        } else {
            image::imageops::resize(&rgb, w32, h32, FilterType::Triangle)
        };
        let raw = rgb.into_raw();
        (0..3).map(|ch| raw.iter().skip(ch).step_by(3).copied().collect()).collect()
    };
    let mut data = Vec::with_capacity(c * h * w);
    for (ch, plane) in planes.iter().enumerate() {
        data.extend(plane.iter().map(|v| (v.clamp(0.0, 1.0) - mean[ch]) / std[ch]));
    }
    Ok((Tensor::new(vec![1, c, h, w], data).expect("c*h*w values"), note))
}

/// Decodes a JPEG, refusing what a lenient decoder would fill in. The `image` crate
/// (zune-jpeg underneath) decodes as browsers do: a truncated file, or one whose header
/// claims more pixels than its data holds, comes back with the missing part filled in
/// gray and no error. A network input must be the picture the user meant, so here:
/// the marker structure must reach its end-of-image marker ([`jpeg_scan_end`]), and a
/// baseline image is decoded without that marker in zune-jpeg's strict mode, where
/// running out of data before the last row of blocks is an error (a shortfall within the
/// last row of blocks goes unnoticed) (with the marker
/// present, zune-jpeg fills the remaining blocks with zeros even in strict mode). A
/// progressive image is decoded whole in strict mode: when its frame claims more blocks
/// than its scans hold, a refinement scan meets a marker where its bits should be, an
/// error (`tests/io.rs` checks one extra row). Not caught: bytes removed inside a scan
/// with the markers after it kept, which decodes with those coefficients zero, as in
/// libjpeg (which only warns). The caller has checked the dimensions against
/// [`MAX_IMAGE_PIXELS`].
fn decode_jpeg_strict(bytes: &[u8]) -> Result<DynamicImage, IoError> {
    use zune_core::colorspace::ColorSpace;
    let (end, progressive) = jpeg_scan_end(bytes)?;
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    // The decoder reads up to 8 bytes ahead of the bits it decodes: padding keeps that
    // read-ahead from counting as running out, so only data that is really missing
    // (more than about one row of blocks) does.
    let data: std::borrow::Cow<[u8]> = if progressive {
        std::borrow::Cow::Borrowed(bytes)
    } else {
        let mut data = bytes[..end].to_vec();
        data.extend_from_slice(&[0; JPEG_READ_AHEAD]);
        std::borrow::Cow::Owned(data)
    };
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(&data[..]), options);
    let error = |e: zune_jpeg::errors::DecodeErrors| {
        IoError(format!("cannot decode the image: the JPEG's data is incomplete or corrupt ({e:?})"))
    };
    decoder.decode_headers().map_err(error)?;
    let (width, height) =
        decoder.dimensions().ok_or_else(|| IoError("cannot decode the image: no JPEG header".into()))?;
    let pixels = decoder.decode().map_err(error)?;
    let (w, h) = (u32::try_from(width).ok(), u32::try_from(height).ok());
    let expected = width.checked_mul(height).and_then(|n| n.checked_mul(3));
    match (w, h, expected) {
        (Some(w), Some(h), Some(n)) if n == pixels.len() => image::RgbImage::from_raw(w, h, pixels)
            .map(DynamicImage::ImageRgb8)
            .ok_or_else(|| IoError("cannot decode the image: the JPEG decoder returned too few pixels".into())),
        _ => Err(IoError(format!(
            "cannot decode the image: the JPEG decoder returned {} bytes for {width}x{height} RGB pixels",
            pixels.len()
        ))),
    }
}

/// Zero bytes after a baseline JPEG's scan data for the decoder's read-ahead.
const JPEG_READ_AHEAD: usize = 16;

/// Walks a JPEG's markers (segments by their lengths, entropy-coded data up to the next
/// marker that is not a restart) to the end-of-image marker. Returns its offset and
/// whether the image is progressive; an error if the data ends first.
fn jpeg_scan_end(bytes: &[u8]) -> Result<(usize, bool), IoError> {
    let truncated = || {
        IoError("cannot decode the image: the JPEG is truncated (its data ends before the end-of-image marker)".into())
    };
    let corrupt = |at: usize| IoError(format!("cannot decode the image: the JPEG is corrupt (no marker at byte {at})"));
    if !bytes.starts_with(&[0xff, 0xd8]) {
        return Err(corrupt(0));
    }
    let mut progressive = false;
    let mut i = 2;
    loop {
        if i >= bytes.len() {
            return Err(truncated());
        }
        if bytes[i] != 0xff {
            return Err(corrupt(i));
        }
        let marker_at = i;
        while i < bytes.len() && bytes[i] == 0xff {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else { return Err(truncated()) };
        i += 1;
        match marker {
            0xd9 => return Ok((marker_at, progressive)),
            // Markers without a segment.
            0x01 | 0xd0..=0xd7 => continue,
            0x00 => return Err(corrupt(marker_at)),
            _ => {
                let length = bytes.get(i..i + 2).ok_or_else(truncated)?;
                let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
                if length < 2 {
                    return Err(corrupt(i));
                }
                i += length;
                if i > bytes.len() {
                    return Err(truncated());
                }
                // SOF2, SOF6, SOF10, SOF14: progressive frames.
                progressive |= matches!(marker, 0xc2 | 0xc6 | 0xca | 0xce);
                if marker == 0xda {
                    // Entropy-coded data: 0xff is followed by 0x00 (a stuffed byte), a
                    // restart marker or more 0xff fill; anything else is the next marker.
                    loop {
                        match (bytes.get(i), bytes.get(i + 1)) {
                            (Some(0xff), Some(next)) if !matches!(next, 0x00 | 0xd0..=0xd7 | 0xff) => break,
                            (Some(_), Some(_)) => i += 1,
                            _ => return Err(truncated()),
                        }
                    }
                }
            }
        }
    }
}

/// The `k` largest entries of a row as (index, value), largest first, ties by lower
/// index. NaN counts as smaller than every number.
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut entries: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
    entries.sort_by(|a, b| {
        let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
        key(b.1).partial_cmp(&key(a.1)).expect("no NaN left").then(a.1.is_nan().cmp(&b.1.is_nan())).then(a.0.cmp(&b.0))
    });
    entries.truncate(k);
    entries
}

/// One label per non-empty line, with surrounding whitespace (and `\r`) trimmed.
pub fn read_labels(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}
