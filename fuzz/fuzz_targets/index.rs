//! The batch index read back from disk: `index::decode` checks it against the data file's
//! length and `index::chunks` cuts it into the chunks a reader fetches. Every range of every
//! chunk lies inside the data file, no two ranges overlap, and the chunks carry exactly the
//! bytes of the entries in the map range asked for.
//!
//! Input: the data file's length (u32, so entries can fit; 0xFFFF_FFFF stands for u64::MAX, so
//! ends past u64::MAX are tried), start map, end map (one byte each, so map ranges select
//! something), the chunk size (u32), then the index file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::Input;
use sluice_worker::storage::index;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let data_len = match input.u32() {
        u32::MAX => u64::MAX,
        len => u64::from(len),
    };
    let start_map = u32::from(input.u8());
    // 0: no upper bound.
    let end_map = Some(u32::from(input.u8())).filter(|end| *end != 0);
    let chunk_size = u64::from(input.u32());
    let bytes = input.rest();

    let Ok(entries) = index::decode(bytes, data_len) else {
        return;
    };
    assert_eq!(entries.len() * index::ENTRY_LEN, bytes.len());
    for entry in &entries {
        let end = entry.offset.checked_add(u64::from(entry.length));
        assert!(
            end.is_some_and(|end| end <= data_len),
            "{entry:?} past {data_len}"
        );
    }

    let chunks = index::chunks(&entries, start_map, end_map, chunk_size);
    let wanted: Vec<_> = entries
        .iter()
        .filter(|e| e.map_id >= start_map && end_map.is_none_or(|end| e.map_id < end))
        .collect();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut total = 0u64;
    for chunk in &chunks {
        assert!(!chunk.ranges.is_empty(), "empty chunk");
        let len: u64 = chunk.ranges.iter().map(|r| r.length).sum();
        assert!(len > 0, "chunk of no bytes");
        // Only a single batch larger than the chunk size makes a larger chunk.
        let largest = wanted
            .iter()
            .map(|e| u64::from(e.length))
            .max()
            .unwrap_or(0);
        assert!(
            len <= chunk_size.max(largest),
            "chunk of {len} bytes, size {chunk_size}"
        );
        for range in &chunk.ranges {
            let end = range
                .offset
                .checked_add(range.length)
                .expect("range end overflows");
            assert!(
                end <= data_len,
                "range {}+{} past the data file's {data_len} bytes",
                range.offset,
                range.length
            );
            ranges.push((range.offset, end));
        }
        total += len;
    }
    assert_eq!(
        total,
        wanted.iter().map(|e| u64::from(e.length)).sum::<u64>()
    );
    ranges.retain(|(start, end)| start < end);
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "ranges {:?} and {:?} overlap",
            pair[0],
            pair[1]
        );
    }
});
