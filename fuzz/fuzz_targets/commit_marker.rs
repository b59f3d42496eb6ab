//! Commit records read back from disk when a worker restarts: marker files of workers before the
//! commit journal (`CommitMarker::parse`) and journal lines (`CommitMarker::parse_record`). A
//! marker that parses re-formats (as the worker writes it) to text that parses to the same
//! marker, a journal line that parses re-records to a line that parses the same, and either is
//! one the worker could have written: a location whose files were never created holds no bytes
//! (a restarted worker would otherwise answer fetches of ranges it has no file for).
//!
//! Input: a marker file's text or a journal line (invalid UTF-8 is skipped, as the worker skips
//! it).

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
    if let Some((id, marker)) = CommitMarker::parse_record(text) {
        assert_eq!(CommitMarker::parse_record(&marker.record(id)), Some((id, marker)));
        check(&marker);
    }
    let Some(marker) = CommitMarker::parse(text) else {
        return;
    };
    assert_eq!(CommitMarker::parse(&format(&marker)), Some(marker));
    check(&marker);
});

fn check(marker: &CommitMarker) {
    if !marker.created {
        assert_eq!((marker.data_len, marker.index_len), (0, 0), "{marker:?}");
    }
}
