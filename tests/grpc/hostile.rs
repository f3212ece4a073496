//! Hostile images through the real server binary (a child process, so its memory can be read):
//! a corpus generated here — empty, random bytes, wrong magic, truncated JPEG/PNG/WebP,
//! decompression bombs, extreme aspect ratios, 1x1, 16-bit, CMYK, palette, animated, giant and
//! malformed EXIF blocks, all eight EXIF orientations — each with the outcome it must get. The
//! server must answer every one with that outcome, stay up, and keep its peak resident memory
//! under a generous bound, also under a flood that overfills the inference queue.

use std::collections::BTreeMap;
use std::time::Duration;

use facevault::grpc::pb::DetectFacesRequest;
use image::{DynamicImage, ImageEncoder, RgbImage};
use tonic::Code;

use crate::common::{ADMIN_A, ChildServer, faces_client, fixture_bytes, fixture_rgb, png, reason, root};

/// What the server must answer.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// INVALID_ARGUMENT with this reason.
    Reason(&'static str),
    /// Success with exactly this many faces.
    Faces(usize),
}

/// splitmix64 bytes.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..n).map(|_| facevault::search::sketch::splitmix64(&mut state) as u8).collect()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG whose IHDR declares `width` x `height` RGB, with a few bytes of IDAT and IEND.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9C, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// `jpeg` with the frame size in its first SOF0/SOF2 marker replaced.
fn jpeg_declaring(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let sof = out.windows(2).position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2]).expect("SOF marker");
    out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    out
}

/// A lossless WebP whose VP8L header declares `width` x `height`, and no image data.
fn webp_declaring(width: u32, height: u32) -> Vec<u8> {
    let bits = (width - 1) | ((height - 1) << 14);
    let mut vp8l = vec![0x2F];
    vp8l.extend_from_slice(&bits.to_le_bytes());
    vp8l.extend_from_slice(&[0; 9]); // even length: RIFF chunks are padded to two bytes
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((4 + 8 + vp8l.len()) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBPVP8L");
    out.extend_from_slice(&(vp8l.len() as u32).to_le_bytes());
    out.extend_from_slice(&vp8l);
    out
}

/// A real lossless WebP of `width` x `height` black pixels: a few KB that decode to megapixels.
fn webp_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .write_image(&vec![0u8; (width * height) as usize], width, height, image::ExtendedColorType::L8)
        .expect("encode webp");
    assert!(out.len() < 1 << 20, "the WebP bomb is {} bytes", out.len());
    out
}

fn webp(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .write_image(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgb8)
        .expect("encode webp");
    out
}

fn jpeg(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgb8)
        .expect("encode jpeg");
    out
}

/// An indexed-colour PNG of `image` (a 6x6x6 colour cube palette).
fn palette_png(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, image.width(), image.height());
    encoder.set_color(png::ColorType::Indexed);
    encoder.set_depth(png::BitDepth::Eight);
    let palette: Vec<u8> =
        (0..216u32).flat_map(|i| [(i / 36) as u8 * 51, (i / 6 % 6) as u8 * 51, (i % 6) as u8 * 51]).collect();
    encoder.set_palette(palette);
    let indexes: Vec<u8> = image
        .pixels()
        .map(|p| {
            let q = |v: u8| (u32::from(v) + 25) / 51;
            (q(p[0]) * 36 + q(p[1]) * 6 + q(p[2])) as u8
        })
        .collect();
    let mut writer = encoder.write_header().expect("header");
    writer.write_image_data(&indexes).expect("data");
    writer.finish().expect("finish");
    out
}

/// A two-frame APNG: `first` (the default image) then a black frame.
fn animated_png(first: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, first.width(), first.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_animated(2, 0).expect("animated");
    let mut writer = encoder.write_header().expect("header");
    writer.write_image_data(first.as_raw()).expect("frame 1");
    writer.write_image_data(&vec![0; first.as_raw().len()]).expect("frame 2");
    writer.finish().expect("finish");
    out
}

/// `jpeg` with `count` APP1 segments of 65,533 bytes each after SOI: EXIF-tagged junk.
fn with_giant_exif(jpeg: &[u8], count: usize) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    for i in 0..count {
        let mut body = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08".to_vec();
        body.extend(random_bytes(65_533 - 2 - body.len(), i as u64));
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&body);
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// `jpeg` with an EXIF block whose IFD claims 65,535 entries at an offset past its end.
fn with_malformed_exif(jpeg: &[u8]) -> Vec<u8> {
    let body = b"Exif\x00\x00II\x2a\x00\xF0\xFF\xFF\x7F\xFF\xFF\x12\x01\x03\x00";
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn corpus() -> Vec<(String, Vec<u8>, Expect)> {
    use Expect::{Faces, Reason};
    let face_jpeg = fixture_bytes("yaoming.jpg");
    let face_rgb = fixture_rgb("yaoming.jpg");
    let face_png = png(&face_rgb);
    let face_webp = webp(&face_rgb);
    let mut out: Vec<(String, Vec<u8>, Expect)> = vec![
        ("empty".into(), Vec::new(), Reason("IMAGE_EMPTY")),
        ("gif".into(), b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec(), Reason("IMAGE_UNDECODABLE")),
        ("bmp magic".into(), [b"BM".as_slice(), &random_bytes(200, 1)].concat(), Reason("IMAGE_UNDECODABLE")),
        ("pdf magic".into(), b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n".to_vec(), Reason("IMAGE_UNDECODABLE")),
        ("riff wave".into(), [b"RIFF\x24\x00\x00\x00WAVEfmt ".as_slice(), &random_bytes(64, 2)].concat(), Reason("IMAGE_UNDECODABLE")),
        ("png magic, jpeg body".into(), [b"\x89PNG\r\n\x1a\n".as_slice(), &face_jpeg[2..]].concat(), Reason("IMAGE_UNDECODABLE")),
        ("jpeg magic, png body".into(), [&face_jpeg[..4], &face_png[8..]].concat(), Reason("IMAGE_UNDECODABLE")),
        ("text".into(), b"<html><body>not an image</body></html>".to_vec(), Reason("IMAGE_UNDECODABLE")),
        ("png bomb 100000x100000".into(), png_declaring(100_000, 100_000), Reason("IMAGE_DIMENSIONS_TOO_LARGE")),
        ("png bomb 8000x8000 (64 MP)".into(), png_declaring(8000, 8000), Reason("IMAGE_DIMENSIONS_TOO_LARGE")),
        ("jpeg bomb 65535x65535".into(), jpeg_declaring(&face_jpeg, 65_535, 65_535), Reason("IMAGE_DIMENSIONS_TOO_LARGE")),
        ("jpeg bomb 8000x6000".into(), jpeg_declaring(&face_jpeg, 8000, 6000), Reason("IMAGE_DIMENSIONS_TOO_LARGE")),
        ("webp bomb 7000x7000 (49 MP)".into(), webp_bomb(7000, 7000), Reason("IMAGE_DIMENSIONS_TOO_LARGE")),
        ("webp header only 100x100".into(), webp_declaring(100, 100), Reason("IMAGE_UNDECODABLE")),
        ("png 1x1".into(), png(&RgbImage::new(1, 1)), Faces(0)),
        ("jpeg 1x1".into(), jpeg(&RgbImage::new(1, 1)), Faces(0)),
        ("png 1x8192".into(), png(&RgbImage::new(1, 8192)), Faces(0)),
        ("png 8192x1".into(), png(&RgbImage::new(8192, 1)), Faces(0)),
        ("jpeg 8192x2".into(), jpeg(&RgbImage::new(8192, 2)), Faces(0)),
        ("png 8193x1 (over the side limit)".into(), png(&RgbImage::new(8193, 1)), Reason("IMAGE_DIMENSIONS_TOO_LARGE")),
        ("png 16-bit rgb face".into(), png_dyn(DynamicImage::ImageRgb16(DynamicImage::ImageRgb8(face_rgb.clone()).into_rgb16())), Faces(1)),
        ("png 16-bit gray face".into(), png_dyn(DynamicImage::ImageLuma16(DynamicImage::ImageRgb8(face_rgb.clone()).into_luma16())), Faces(1)),
        ("png rgba face".into(), png_dyn(DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(face_rgb.clone()).into_rgba8())), Faces(1)),
        ("png palette face".into(), palette_png(&face_rgb), Faces(1)),
        ("apng, face first".into(), animated_png(&face_rgb), Faces(1)),
        ("webp lossless face".into(), face_webp.clone(), Faces(1)),
        ("cmyk jpeg (synthetic, no face)".into(), std::fs::read(root().join("tests/fixtures/synthetic/cmyk.jpg")).expect("cmyk fixture"), Faces(0)),
        ("jpeg, 27 APP1 blocks of 64 KB".into(), with_giant_exif(&face_jpeg, 27), Faces(1)),
        ("jpeg, malformed EXIF IFD".into(), with_malformed_exif(&face_jpeg), Faces(1)),
    ];
    for orientation in 1..=8 {
        out.push((
            format!("exif orientation {orientation}"),
            facevault::imaging::decode::with_exif_orientation(&face_jpeg, orientation),
            Faces(1),
        ));
    }
    for size in [1, 3, 16, 1000, 100_000, 1_500_000] {
        out.push((format!("random {size} B"), random_bytes(size, size as u64), Reason("IMAGE_UNDECODABLE")));
    }
    for (format, bytes) in [("jpeg", &face_jpeg), ("png", &face_png), ("webp", &face_webp)] {
        for cut in [2, 11, 40, bytes.len() / 2, bytes.len() - 3] {
            // A PNG cut inside its final IEND chunk has every pixel: accepted, as decoders do.
            let expect = if format == "png" && cut > bytes.len() - 12 { Faces(1) } else { Reason("IMAGE_UNDECODABLE") };
            out.push((format!("{format} truncated to {cut} of {} B", bytes.len()), bytes[..cut].to_vec(), expect));
        }
    }
    out
}

fn png_dyn(image: DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).expect("encode png");
    out
}

/// VmRSS and VmHWM of a process, MiB.
fn memory_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .expect("field")
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Peak resident memory the server may reach over this whole test (models, sessions and
/// buffers of a debug build included). Measured peaks are printed; they sit far below.
const PEAK_RSS_BOUND_MIB: u64 = 2048;

#[tokio::test]
async fn hostile_images_get_their_reason_codes_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Built before connecting: this CPU work blocks the test's runtime, and a connection whose
    // peer answers no keepalive PING for that long is dropped by the server.
    let corpus = corpus();
    let server = ChildServer::spawn(dir.path(), &[]).await;
    let mut client = faces_client(server.channel().await, ADMIN_A, None).max_encoding_message_size(64 << 20);
    let (rss_start, _) = memory_mib(server.pid());
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (name, bytes, expect) in &corpus {
        let request =
            DetectFacesRequest { image: bytes.clone().into(), include_embeddings: true, include_thumbnails: true };
        let result = client.detect_faces(request).await;
        match (expect, result) {
            (Expect::Reason(want), Err(err)) => {
                assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, *want), "{name}: {err:?}");
                *outcomes.entry((*want).to_owned()).or_default() += 1;
            }
            (Expect::Faces(n), Ok(reply)) => {
                assert_eq!(reply.into_inner().faces.len(), *n, "{name}: face count");
                *outcomes.entry(format!("OK, {n} face(s)")).or_default() += 1;
            }
            (expect, Ok(reply)) => {
                panic!("{name}: expected {expect:?}, got {} face(s)", reply.into_inner().faces.len())
            }
            (expect, Err(err)) => panic!("{name}: expected {expect:?}, got {:?} {}", err.code(), reason(&err)),
        }
    }
    let (rss_after_corpus, peak_corpus) = memory_mib(server.pid());
    println!("hostile corpus: {} images; outcomes {outcomes:?}", corpus.len());
    println!("server memory: {rss_start} MiB at start, {rss_after_corpus} MiB after, peak {peak_corpus} MiB");
    assert!(peak_corpus < PEAK_RSS_BOUND_MIB, "peak {peak_corpus} MiB over the corpus");

    // A flood: 64 clients at once with the largest photo, far more than the queue holds.
    let image = fixture_bytes("players.jpg");
    let mut calls = Vec::new();
    for _ in 0..64 {
        let mut client = faces_client(server.channel().await, ADMIN_A, None);
        let request =
            DetectFacesRequest { image: image.clone().into(), include_embeddings: true, include_thumbnails: false };
        calls.push(tokio::spawn(async move { client.detect_faces(request).await }));
    }
    let (mut ok, mut overloaded) = (0, 0);
    for call in calls {
        match tokio::time::timeout(Duration::from_secs(300), call).await.expect("flood call ends").expect("task") {
            Ok(_) => ok += 1,
            Err(err) => {
                assert_eq!((err.code(), reason(&err).as_str()), (Code::ResourceExhausted, "OVERLOADED"), "{err:?}");
                overloaded += 1;
            }
        }
    }
    let (rss_end, peak) = memory_mib(server.pid());
    println!("flood of 64: {ok} served, {overloaded} OVERLOADED; memory {rss_end} MiB after, peak {peak} MiB");
    assert!(ok >= 1 && overloaded >= 1, "the queue bounded the flood: ok {ok}, overloaded {overloaded}");
    assert!(peak < PEAK_RSS_BOUND_MIB, "peak {peak} MiB under the flood");
    let after = client
        .detect_faces(DetectFacesRequest { image: fixture_bytes("yaoming.jpg").into(), ..Default::default() })
        .await
        .expect("the server is still up");
    assert_eq!(after.into_inner().faces.len(), 1);
}
