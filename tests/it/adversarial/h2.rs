//! A raw HTTP/2 client for the attacks that need exact frames.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    Reset,
    GoAway,
    Nothing,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK "literal header field without indexing, new name", no
/// Huffman coding.
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00];
    for s in [name, value] {
        length(&mut b, s.len());
        b.extend_from_slice(s.as_bytes());
    }
    b
}

/// An HPACK string length: a 7-bit prefix integer, H bit clear.
fn length(b: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        b.push(n as u8);
        return;
    }
    b.push(127);
    n -= 127;
    while n >= 128 {
        b.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    b.push(n as u8);
}

/// Sends one request without a body on stream 1 and returns how the
/// server answered.
pub async fn request(addr: SocketAddr, fields: &[(&str, &str)]) -> Answer {
    request_with_body(addr, fields, None).await
}

/// Sends one request on stream 1, with `body` in one DATA frame, and
/// returns how the server answered.
pub async fn request_with_body(
    addr: SocketAddr,
    fields: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let block: Vec<u8> = fields.iter().flat_map(|(n, v)| literal(n, v)).collect();
    // The default SETTINGS_MAX_FRAME_SIZE: longer blocks continue in
    // CONTINUATION frames.
    let pieces: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = if i + 1 == pieces.len() {
            END_HEADERS
        } else {
            0
        };
        let end = if body.is_none() { END_STREAM } else { 0 };
        out.extend(if i == 0 {
            frame(HEADERS, last | end, 1, piece)
        } else {
            frame(CONTINUATION, last, 1, piece)
        });
    }
    if let Some(body) = body {
        out.extend(frame(DATA, END_STREAM, 1, body));
    }
    s.write_all(&out).await.unwrap();

    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Parse whatever frames are complete.
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = (usize::from(buf[at]) << 16)
                | (usize::from(buf[at + 1]) << 8)
                | usize::from(buf[at + 2]);
            if buf.len() < at + 9 + len {
                break;
            }
            let kind = buf[at + 3];
            let stream = u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]])
                & 0x7fff_ffff;
            let payload = &buf[at + 9..at + 9 + len];
            match (kind, stream) {
                (HEADERS, 1) => return Answer::Status(status(payload)),
                (RST_STREAM, 1) => return Answer::Reset,
                (GOAWAY, _) => return Answer::GoAway,
                _ => {}
            }
            at += 9 + len;
        }
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Answer::Nothing,
        }
    }
}

/// The `:status` of a response header block: its first field, either
/// indexed from the static table or a literal with the `:status` name,
/// its value plain or Huffman-coded digits.
fn status(block: &[u8]) -> u16 {
    let first = block[0];
    if first & 0x80 != 0 {
        return match first & 0x7f {
            8 => 200,
            9 => 204,
            10 => 206,
            11 => 304,
            12 => 400,
            13 => 404,
            14 => 500,
            i => panic!("indexed field {i} is not a :status"),
        };
    }
    let index = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    assert_eq!(index, 8, "first field is not :status: {block:?}");
    let huffman = block[1] & 0x80 != 0;
    let len = usize::from(block[1] & 0x7f);
    let value = &block[2..2 + len];
    let digits = if huffman {
        huffman_digits(value)
    } else {
        String::from_utf8(value.to_vec()).unwrap()
    };
    digits.parse().unwrap()
}

/// Decodes a Huffman-coded string of ASCII digits (RFC 7541 Appendix B:
/// `0`–`2` are 5-bit codes 00000–00010, `3`–`9` 6-bit 011001–011111).
fn huffman_digits(bytes: &[u8]) -> String {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    let code = |from: usize, n: usize| bits[from..from + n].iter().fold(0u8, |a, b| a << 1 | b);
    while i + 5 <= bits.len() {
        let five = code(i, 5);
        if five <= 0b00010 {
            out.push(char::from(b'0' + five));
            i += 5;
        } else if i + 6 <= bits.len() && (0b011001..=0b011111).contains(&code(i, 6)) {
            out.push(char::from(b'3' + code(i, 6) - 0b011001));
            i += 6;
        } else {
            break; // padding (all ones)
        }
    }
    out
}
