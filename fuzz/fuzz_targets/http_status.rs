//! The http/https health probe's reading of a server's answer: the status line, however the server splits it.
//!
//! Input: `[chunk, expected status (2 bytes, big endian)]` then the server's bytes. Properties: an accepted answer's
//! line is an `HTTP/1.x` status line with the expected code, without its line feed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xvip::health::probe::fuzzing::status_line;

fuzz_target!(|data: &[u8]| {
    let [chunk, hi, lo, response @ ..] = data else {
        return;
    };
    let expected = u16::from_be_bytes([*hi, *lo]);
    if let Ok(line) = status_line(response, usize::from(*chunk), expected) {
        assert!(line.starts_with("HTTP/1."), "{line:?}");
        assert_eq!(line.get(9..12), Some(format!("{expected:03}").as_str()), "{line:?}");
        assert!(!line.contains('\n'), "{line:?}");
    }
});
