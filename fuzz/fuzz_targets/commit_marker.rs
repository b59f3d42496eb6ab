//! Commit markers read back from disk when a worker restarts (`CommitMarker::parse`). A marker
//! that parses re-formats (as the worker writes it) to text that parses to the same marker, and
//! is one the worker could have written: a location whose files were never created holds no
//! bytes (a restarted worker would otherwise answer fetches of ranges it has no file for).
//!
//! Input: the marker file's text (invalid UTF-8 is skipped, as `read_to_string` fails on it).

#![no_main]

use libfuzzer_sys::fuzz_target;
// The one line to change if the marker moves to another module.
use sluice_worker::storage::layout::CommitMarker;

/// The text `CommitMarker::write` puts in the file.
fn format(marker: &CommitMarker) -> String {
    format!(
        "sluice-committed-v1 {} {} {} {} {} {}\n",
        marker.data_len,
        marker.index_len,
        marker.stats.bytes,
        marker.stats.batches,
        marker.stats.checksum,
        u8::from(marker.created)
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(marker) = CommitMarker::parse(text) else {
        return;
    };
    assert_eq!(CommitMarker::parse(&format(&marker)), Some(marker));
    if !marker.created {
        assert_eq!((marker.data_len, marker.index_len), (0, 0), "{marker:?}");
    }
});
