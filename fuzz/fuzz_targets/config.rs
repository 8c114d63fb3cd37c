//! The config reader: `config::parse` over any UTF-8 text (non-UTF-8 files are refused before parsing; a unit
//! test covers that).
//!
//! Properties: a refused config has at least one problem, each pointing inside the text (line 1..=lines, column
//! 1..=line length + 1) with a one-line message; an accepted config parses again to itself, its reload plan
//! against itself is empty, and a reload plan against the example config can be computed.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use xvip::config::{self, Config};

static EXAMPLE: LazyLock<Option<Config>> =
    LazyLock::new(|| config::parse(Path::new("example.toml"), include_str!("../../deploy/xvip.example.toml")).ok());

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match config::parse(path, text) {
        Err(problems) => {
            assert!(!problems.is_empty(), "refused without a problem");
            let lines: Vec<&str> = text.split('\n').collect();
            for p in &problems {
                assert!((1..=lines.len()).contains(&p.line), "line {} of {}: {p}", p.line, lines.len());
                let width = lines[p.line - 1].chars().count();
                assert!((1..=width + 1).contains(&p.col), "column {} of {width}: {p}", p.col);
                assert!(!p.message.is_empty() && !p.message.contains('\n'), "message not one line: {p}");
            }
        }
        Ok(config) => {
            assert_eq!(config::parse(path, text).as_ref(), Ok(&config), "not deterministic");
            let plan = config::diff(&config, &config);
            assert!(plan.as_ref().is_ok_and(|p| p.is_empty()), "reload to the same config: {plan:?}");
            if let Some(example) = EXAMPLE.as_ref() {
                let _ = config::diff(example, &config);
                let _ = config::diff(&config, example);
            }
        }
    }
});
