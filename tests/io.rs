//! Tensor files and images: `.npy` reading and writing (malformed files are errors, not
//! panics or huge allocations), input shape checks, image decoding, top-k and labels.

use cnnc::io::{IMAGENET_MEAN, IMAGENET_STD, conform_input, load_image, read_labels, read_npy, top_k, write_npy};
use cnnc::tensor::Tensor;

/// A `.npy` file (format 1.0) with the given header dict and data.
fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn npy_err(bytes: &[u8]) -> String {
    match read_npy(bytes) {
        Ok(t) => panic!("read {:?}, but should not", t.shape),
        Err(e) => e.to_string(),
    }
}

#[test]
fn npy_round_trips() {
    for shape in [vec![2, 3, 4], vec![5], vec![], vec![1, 3, 2, 2], vec![0, 3]] {
        let n: usize = shape.iter().product();
        let t = Tensor::new(shape.clone(), (0..n).map(|i| i as f32 * 0.5 - 1.0).collect()).unwrap();
        let bytes = write_npy(&t);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0, "data is 64-byte aligned");
        assert_eq!(bytes[10 + header_len - 1], b'\n');
        assert_eq!(read_npy(&bytes).unwrap(), t, "{shape:?}");
    }
    let header = String::from_utf8(write_npy(&Tensor::zeros(vec![7]))[10..].to_vec()).unwrap();
    assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (7,), }"), "{header}");
}

#[test]
fn npy_as_numpy_writes_it_is_read() {
    // numpy 1.x and 2.x headers; also Python 2's `L` suffix and version 2.0.
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let t = read_npy(&npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", &data)).unwrap();
    assert_eq!(t.shape, vec![2, 3]);
    assert_eq!(t.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let t = read_npy(&npy("{'shape': (6L,), 'fortran_order': False, 'descr': '<f4'}", &data)).unwrap();
    assert_eq!(t.shape, vec![6]);

    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }\n";
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend_from_slice(&(header.len() as u32).to_le_bytes());
    v2.extend_from_slice(header.as_bytes());
    v2.extend_from_slice(&data);
    assert_eq!(read_npy(&v2).unwrap().shape, vec![3, 2]);
}

#[test]
fn npy_of_another_dtype_names_it() {
    let text = npy_err(&npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", &[0; 16]));
    assert!(text.contains("float64 ('<f8')"), "{text}");
    assert!(text.contains("float32 ('<f4') only"), "{text}");
    assert!(text.contains("astype(np.float32)"), "{text}");

    let text = npy_err(&npy("{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }", &[0; 8]));
    assert!(text.contains("int32 ('<i4')"), "{text}");

    let text = npy_err(&npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", &[0; 8]));
    assert!(text.contains("big-endian float32 ('>f4')"), "{text}");

    let text = npy_err(&npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", &[0; 8]));
    assert!(text.contains("structured dtype"), "{text}");
}

#[test]
fn npy_in_fortran_order_is_an_error() {
    let text = npy_err(&npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", &[0; 24]));
    assert!(text.contains("Fortran"), "{text}");
    assert!(text.contains("np.ascontiguousarray"), "{text}");
}

#[test]
fn npy_with_too_little_or_too_much_data_is_an_error() {
    let text = npy_err(&npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", &[0; 20]));
    assert!(
        text.contains("shape (2, 3) (6 float32 values) but the file holds 20 bytes of data (truncated?)"),
        "{text}"
    );
    let text = npy_err(&npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", &[0; 12]));
    assert!(text.contains("shape (2,) (2 float32 values) but the file holds 12 bytes"), "{text}");
}

#[test]
fn npy_claiming_a_huge_shape_is_an_error_without_allocating() {
    let text = npy_err(&npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000, 1000), }", &[0; 16]));
    assert!(text.contains("shape (1000000, 1000000, 1000) (1000000000000000 float32 values)"), "{text}");
    assert!(text.contains("16 bytes of data"), "{text}");
    // A product that overflows 64 bits, and a dimension that does.
    let text = npy_err(&npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
        &[0; 16],
    ));
    assert!(text.contains("more values than can be counted"), "{text}");
    let text = npy_err(&npy("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }", &[]));
    assert!(text.contains("not a valid .npy file"), "{text}");
}

#[test]
fn malformed_npy_files_are_errors_not_panics() {
    let good = write_npy(&Tensor::zeros(vec![2, 2]));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "magic"),
        ("4 bytes", b"\x93NUM".to_vec(), "magic"),
        ("not npy", b"hello world, not an array".to_vec(), "magic"),
        ("version 9", b"\x93NUMPY\x09\x00\x10\x00".to_vec(), "version 9.0"),
        ("no header length", b"\x93NUMPY\x01\x00\x10".to_vec(), "header length"),
        ("header past the end", good[..40].to_vec(), "only 30 bytes follow"),
        ("truncated data", good[..good.len() - 1].to_vec(), "truncated"),
        ("not a dict", npy("[1, 2]", &[]), "not a Python dict"),
        ("unterminated", npy("{'descr': '<f4", &[]), "cannot be read"),
        ("missing key", npy("{'descr': '<f4', 'shape': (1,)}", &[0; 4]), "lacks one of"),
        ("bad shape", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", &[0; 4]), "cannot be read"),
        ("bad order", npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", &[0; 4]), "cannot be read"),
        ("shape a string", npy("{'descr': '<f4', 'fortran_order': False, 'shape': '1'}", &[0; 4]), "invalid `shape`"),
        (
            "not text",
            npy("{'descr': '<f4', ~", &[]).iter().map(|&b| if b == b'~' { 0xff } else { b }).collect(),
            "not text",
        ),
    ];
    for (what, bytes, needle) in cases {
        let text = npy_err(&bytes);
        assert!(text.contains(needle), "{what}: {text}");
    }
}

#[test]
fn conform_input_accepts_chw_and_nchw() {
    let chw = Tensor::zeros(vec![3, 8, 8]);
    let t = conform_input(chw, &[3, 8, 8]).unwrap();
    assert_eq!(t.shape, vec![1, 3, 8, 8]);
    assert_eq!(t.data.len(), 192);
    let t = conform_input(Tensor::zeros(vec![2, 3, 8, 8]), &[3, 8, 8]).unwrap();
    assert_eq!(t.shape, vec![2, 3, 8, 8]);
}

#[test]
fn conform_input_names_both_shapes() {
    for shape in [vec![3, 8, 9], vec![8, 8, 3], vec![1, 1, 3, 8, 8], vec![192], vec![2, 1, 8, 8]] {
        let text = conform_input(Tensor::zeros(shape.clone()), &[3, 8, 8]).unwrap_err().to_string();
        let given = format!("{shape:?}");
        assert!(text.contains(&format!("the input has shape {given}")), "{text}");
        assert!(text.contains("the network expects [N, 3, 8, 8] or [3, 8, 8]"), "{text}");
    }
    let text = conform_input(Tensor::zeros(vec![0, 3, 8, 8]), &[3, 8, 8]).unwrap_err().to_string();
    assert!(text.contains("[0, 3, 8, 8], an empty batch"), "{text}");
}

fn png_of(image: image::DynamicImage) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
    bytes.into_inner()
}

#[test]
fn a_flat_colour_image_is_resized_and_normalized() {
    let colour = [200u8, 100, 50];
    let png = png_of(image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(20, 10, image::Rgb(colour))));
    let t = load_image(&png, 3, 7, 5, &IMAGENET_MEAN, &IMAGENET_STD).unwrap();
    assert_eq!(t.shape, vec![1, 3, 7, 5]);
    for c in 0..3 {
        let want = (colour[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        for v in &t.data[c * 35..(c + 1) * 35] {
            assert!((v - want).abs() < 1e-4, "channel {c}: {v} vs {want}");
        }
    }

    // Grayscale with PIL's weights; one mean and std for the channel.
    let t = load_image(&png, 1, 16, 32, &[0.5], &[0.25]).unwrap();
    assert_eq!(t.shape, vec![1, 1, 16, 32]);
    let luma = (0.299 * 200.0 + 0.587 * 100.0 + 0.114 * 50.0) / 255.0;
    assert!(t.data.iter().all(|v| (v - (luma - 0.5) / 0.25).abs() < 1e-4), "{:?}", &t.data[..4]);

    // Alpha is dropped; a gray 16-bit image gives three equal channels.
    let rgba =
        png_of(image::DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(4, 4, image::Rgba([255, 0, 0, 10]))));
    let t = load_image(&rgba, 3, 4, 4, &[0.0], &[1.0]).unwrap();
    assert_eq!(&t.data[..16], &[1.0; 16]);
    assert_eq!(&t.data[16..], &[0.0; 32]);
    let gray = png_of(image::DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(3, 3, image::Luma([32768u16]))));
    let t = load_image(&gray, 3, 2, 2, &[0.0], &[1.0]).unwrap();
    assert!(t.data.iter().all(|v| (v - 32768.0 / 65535.0).abs() < 1e-5), "{:?}", t.data);
}

#[test]
fn resizing_keeps_a_gradient_in_order() {
    let img = image::GrayImage::from_fn(64, 8, |x, _| image::Luma([(x * 4) as u8]));
    let t = load_image(&png_of(image::DynamicImage::ImageLuma8(img)), 1, 2, 8, &[0.0], &[1.0]).unwrap();
    let row = &t.data[..8];
    assert!(row.windows(2).all(|w| w[0] < w[1]), "{row:?}");
    assert!(row[0] > 0.0 && row[7] < 1.0, "{row:?}");
}

#[test]
fn bad_images_and_arguments_are_errors() {
    let png = png_of(image::DynamicImage::ImageRgb8(image::RgbImage::new(4, 4)));
    let err =
        |bytes: &[u8], c, mean: &[f32], std: &[f32]| load_image(bytes, c, 4, 4, mean, std).unwrap_err().to_string();
    assert!(err(b"not an image at all", 3, &IMAGENET_MEAN, &IMAGENET_STD).contains("not a PNG or JPEG"));
    assert!(err(&png[..png.len() / 2], 3, &IMAGENET_MEAN, &IMAGENET_STD).contains("cannot decode the image"));
    assert!(err(&png, 4, &[0.0], &[1.0]).contains("the network input has 4 channels"));
    assert!(
        err(&png, 1, &IMAGENET_MEAN, &IMAGENET_STD).contains("the mean has 3 values; the network input has 1 channels")
    );
    assert!(err(&png, 3, &[0.0], &[0.0]).contains("standard deviation of 0"));

    // A PNG header claiming 100000 x 100000 pixels is refused before decoding.
    let mut bomb = png.clone();
    // IHDR's width and height are bytes 16..24 of a PNG; its CRC (29..33, over 12..29) must match.
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let text = err(&bomb, 3, &IMAGENET_MEAN, &IMAGENET_STD);
    assert!(text.contains("the image is 100000x100000 pixels; cnnc decodes images of at most 64 megapixels"), "{text}");
}

/// The CRC-32 PNG chunks carry.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn a_jpeg_is_read() {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(16, 16, image::Rgb([128, 128, 128])))
        .write_to(&mut bytes, image::ImageFormat::Jpeg)
        .unwrap();
    let t = load_image(bytes.get_ref(), 3, 8, 8, &[0.0], &[1.0]).unwrap();
    assert_eq!(t.shape, vec![1, 3, 8, 8]);
    assert!(t.data.iter().all(|v| (v - 128.0 / 255.0).abs() < 0.02), "{:?}", &t.data[..4]);
}

#[test]
fn top_k_is_largest_first_with_ties_by_index() {
    let row = [0.1, 0.5, f32::NAN, 0.5, -1.0, 0.9];
    assert_eq!(top_k(&row, 3), vec![(5, 0.9), (1, 0.5), (3, 0.5)]);
    assert_eq!(top_k(&row, 0), vec![]);
    let all = top_k(&row, 10);
    assert_eq!(all.len(), 6);
    assert_eq!(all[4], (4, -1.0));
    assert!(all[5].1.is_nan() && all[5].0 == 2);
    assert_eq!(top_k(&[], 5), vec![]);
}

#[test]
fn labels_are_non_empty_lines() {
    assert_eq!(
        read_labels("tench\r\ngoldfish\n\n  great white shark  \n\n"),
        vec!["tench", "goldfish", "great white shark"]
    );
    assert!(read_labels("").is_empty());
}

fn jpeg_of(image: image::DynamicImage) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
    bytes.into_inner()
}

/// A picture with detail everywhere, so that every part of the scan holds data.
fn noisy_rgb(w: u32, h: u32) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        let v = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) as u8;
        image::Rgb([v, v.wrapping_mul(3), v ^ 0x5a])
    }))
}

#[test]
fn a_truncated_jpeg_is_an_error_not_a_partial_image() {
    let jpeg = jpeg_of(noisy_rgb(64, 64));
    assert!(load_image(&jpeg, 3, 64, 64, &[0.0], &[1.0]).is_ok());
    for keep in [jpeg.len() - 2, jpeg.len() - 3, jpeg.len() * 3 / 4, jpeg.len() / 2, 100, 3] {
        match load_image(&jpeg[..keep], 3, 64, 64, &[0.0], &[1.0]) {
            Ok(_) => panic!("{keep} of {} bytes decoded", jpeg.len()),
            Err(e) => assert!(e.to_string().contains("cannot decode the image"), "{keep} bytes: {e}"),
        }
    }
}

#[test]
fn a_jpeg_header_claiming_more_pixels_than_its_data_is_an_error() {
    let mut jpeg = jpeg_of(noisy_rgb(64, 64));
    // SOF0: FF C0, length (2), precision (1), height (2), width (2).
    let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).expect("a baseline JPEG");
    jpeg[sof + 5..sof + 7].copy_from_slice(&256u16.to_be_bytes());
    match load_image(&jpeg, 3, 64, 64, &[0.0], &[1.0]) {
        Ok(_) => panic!("a 64x256 header over 64x64 data decoded"),
        Err(e) => assert!(e.to_string().contains("cannot decode the image"), "{e}"),
    }
}

/// A progressive JPEG (Pillow, `quality=90, progressive=True`: ten scans with successive
/// approximation) decodes; cut anywhere, or with a header that claims more rows or
/// columns than its scans hold, it is an error.
#[test]
fn progressive_jpegs_decode_and_their_missing_data_is_an_error() {
    let jpeg = std::fs::read("tests/data/images/progressive.jpg").expect("the progressive fixture");
    let decoded = load_image(&jpeg, 3, 64, 64, &[0.0], &[1.0]).expect("a whole progressive JPEG decodes");
    assert!(decoded.data.iter().any(|&v| v > 0.5) && decoded.data.iter().any(|&v| v < 0.5));
    let scans = jpeg.windows(2).filter(|w| *w == [0xff, 0xda]).count();
    assert!(scans > 1, "the fixture is progressive: {scans} scans");
    for keep in (3..jpeg.len()).step_by(97).chain([jpeg.len() - 1, jpeg.len() - 2]) {
        match load_image(&jpeg[..keep], 3, 64, 64, &[0.0], &[1.0]) {
            Ok(_) => panic!("{keep} of {} bytes decoded", jpeg.len()),
            Err(e) => assert!(e.to_string().contains("cannot decode the image"), "{keep} bytes: {e}"),
        }
    }
    // SOF2: FF C2, length (2), precision (1), height (2), width (2).
    let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc2]).expect("a progressive frame");
    for (offset, claim) in [(5, 128u16), (7, 128), (5, 65)] {
        let mut bigger = jpeg.clone();
        bigger[sof + offset..sof + offset + 2].copy_from_slice(&claim.to_be_bytes());
        match load_image(&bigger, 3, 64, 64, &[0.0], &[1.0]) {
            Ok(_) => panic!("a header claiming {claim} at offset {offset} over 64x64 data decoded"),
            Err(e) => assert!(e.to_string().contains("cannot decode the image"), "{e}"),
        }
    }
}

#[test]
fn grayscale_jpegs_still_decode() {
    let gray = image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(16, 16, image::Luma([200])));
    let t = load_image(&jpeg_of(gray), 1, 16, 16, &[0.0], &[1.0]).unwrap();
    assert!(t.data.iter().all(|v| (v - 200.0 / 255.0).abs() < 0.02), "{:?}", &t.data[..4]);
}
