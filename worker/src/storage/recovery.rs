//! What a location's files hold after a restart.
//!
//! A committed location is taken at its commit record's word once its files are at least as long as
//! the record says. A location whose index was kept in memory (at most
//! [`SMALL_INDEX`](super::partition::SMALL_INDEX) bytes) has no index file: its index is rebuilt
//! from the data file, which describes itself (each batch starts with its head), and must add up to
//! the totals its commit record holds. A location that was flushed and never committed (the worker
//! was killed or restarted mid-stage) is rebuilt from its files: every index entry whose batch lies
//! inside the data file, parses and passes its CRC is kept (without an index file: every batch from
//! the start of the data file up to the first that does not parse or verify), anything else (a torn
//! tail, a hole left by a flush that never landed, garbage) is dropped, and the index is rewritten
//! to the kept entries so readers see only whole batches. The kept batches are bytes that were
//! pushed and flushed; the readers' per-map check against what the maps reported decides whether
//! that was enough.

use std::os::unix::fs::FileExt;

use sluice_protocol::batch;
use sluice_protocol::pb;

use super::index::{IndexEntry, ENTRY_LEN};
use super::layout::{CommitMarker, LocationFiles};
use super::partition::Extent;

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A committed location, from its journal record (`Some`) or its marker file.
pub fn committed(files: &LocationFiles, recorded: Option<CommitMarker>) -> std::io::Result<Extent> {
    let marker = match recorded {
        Some(marker) => marker,
        None => {
            CommitMarker::parse(&std::fs::read_to_string(files.marker())?).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "unreadable commit marker")
            })?
        }
    };
    let invalid = |reason: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, reason);
    if !marker.created {
        return Ok(marker.into());
    }
    if file_len(&files.data) < marker.data_len {
        return Err(invalid(
            "the data file is shorter than its commit record says",
        ));
    }
    if file_len(&files.index) >= marker.index_len && files.index.exists() {
        return Ok(marker.into());
    }
    let data = std::fs::File::open(&files.data)?;
    let (index, stats, end) = scan_batches(&data, marker.data_len)?;
    if end != marker.data_len || index.len() as u64 != marker.index_len || stats != marker.stats {
        return Err(invalid(
            "the batches of the data file do not add up to its commit record",
        ));
    }
    let mut extent: Extent = marker.into();
    extent.index = Some(index.into());
    Ok(extent)
}

/// The index entries of the whole batches at the start of `data`, read in order up to `len`,
/// until one does not parse or verify; with their totals and where they end. Blocking.
fn scan_batches(data: &std::fs::File, len: u64) -> std::io::Result<(Vec<u8>, pb::BatchStats, u64)> {
    let mut index = Vec::new();
    let mut stats = pb::BatchStats::default();
    let mut at = 0u64;
    let mut bytes = vec![0u8; batch::BATCH_HEAD_LEN];
    while len - at >= batch::BATCH_HEAD_LEN as u64 {
        bytes.resize(batch::BATCH_HEAD_LEN, 0);
        data.read_exact_at(&mut bytes, at)?;
        let Ok(head) = batch::parse_head(&bytes) else {
            break;
        };
        let total = head.total_len() as u64;
        if total > len - at {
            break;
        }
        bytes.resize(head.total_len(), 0);
        data.read_exact_at(
            &mut bytes[batch::BATCH_HEAD_LEN..],
            at + batch::BATCH_HEAD_LEN as u64,
        )?;
        if batch::verify(&head, &bytes).is_err() {
            break;
        }
        IndexEntry::for_batch(&head, at).encode_into(&mut index);
        stats.add(total, head.crc);
        at += total;
    }
    Ok((index, stats, at))
}

/// A location flushed and never committed: keeps the entries whose batches verify and rewrites
/// the index to them (atomically, through a temporary file).
pub fn flushed(files: &LocationFiles) -> std::io::Result<Extent> {
    let data = std::fs::File::open(&files.data)?;
    let data_len = data.metadata()?.len();
    if !files.index.exists() {
        let (index, stats, _) = scan_batches(&data, data_len)?;
        return Ok(Extent {
            data_len,
            index_len: index.len() as u64,
            stats,
            created: true,
            index: Some(index.into()),
        });
    }
    let index = std::fs::read(&files.index)?;
    let mut kept = Vec::with_capacity(index.len());
    let mut stats = pb::BatchStats::default();
    let mut batch_bytes = Vec::new();
    for raw in index.chunks_exact(ENTRY_LEN) {
        let Some(entry) = IndexEntry::decode(raw) else {
            continue;
        };
        if entry.length == 0 || entry.offset.saturating_add(u64::from(entry.length)) > data_len {
            continue;
        }
        batch_bytes.resize(entry.length as usize, 0);
        data.read_exact_at(&mut batch_bytes, entry.offset)?;
        let Ok(head) = batch::parse_head(&batch_bytes) else {
            continue;
        };
        let whole = head.total_len() == batch_bytes.len();
        let same = head.map_id == entry.map_id
            && head.attempt == entry.attempt
            && head.batch_id == entry.batch_id;
        if !whole || !same || batch::verify(&head, &batch_bytes).is_err() {
            continue;
        }
        stats.add(u64::from(entry.length), head.crc);
        entry.encode_into(&mut kept);
    }
    let temporary = files.index.with_extension("index.tmp");
    std::fs::write(&temporary, &kept)?;
    std::fs::rename(&temporary, &files.index)?;
    Ok(Extent {
        data_len,
        index_len: kept.len() as u64,
        stats,
        created: true,
        index: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::layout::{IndexOpen, LocationId};
    use sluice_protocol::ShuffleKey;

    fn batch(map: u32, id: u32, fill: u8) -> Vec<u8> {
        let mut out = Vec::new();
        let tag = batch::BatchTag {
            partition: 0,
            map_id: map,
            attempt: 0,
            batch_id: id,
        };
        batch::encode_into(&mut out, tag, &[fill; 100], batch::Codec::None).unwrap();
        out
    }

    #[test]
    fn a_flushed_location_keeps_exactly_its_verified_batches() {
        let root = tempfile::tempdir().unwrap();
        let files = LocationFiles::new(
            root.path(),
            &ShuffleKey::new("app", 1),
            LocationId::new(0, 0, 0).unwrap(),
        );
        let (mut data, mut index) = (Vec::new(), Vec::new());
        let mut expected = pb::BatchStats::default();
        for (i, fill) in [1u8, 2, 3, 4].into_iter().enumerate() {
            let bytes = batch(7, i as u32, fill);
            let head = batch::parse_head(&bytes).unwrap();
            IndexEntry::for_batch(&head, data.len() as u64).encode_into(&mut index);
            if i < 2 {
                expected.add(bytes.len() as u64, head.crc);
            }
            data.extend_from_slice(&bytes);
        }
        // Batch 2 is a hole (its flush never landed), batch 3 a torn tail; a zeroed entry and
        // a torn entry follow in the index.
        let third = data.len() / 4 * 2;
        data[third..third + 40].fill(0);
        data.truncate(data.len() - 10);
        index.extend_from_slice(&[0u8; ENTRY_LEN]);
        index.extend_from_slice(&[9u8; 5]);
        files.open_for_write(true, IndexOpen::Create).unwrap();
        std::fs::write(&files.data, &data).unwrap();
        std::fs::write(&files.index, &index).unwrap();

        let extent = flushed(&files).unwrap();
        assert_eq!(extent.stats, expected);
        assert_eq!(extent.index_len, 2 * ENTRY_LEN as u64);
        let rewritten = std::fs::read(&files.index).unwrap();
        assert_eq!(rewritten, index[..2 * ENTRY_LEN]);
        // Recovering again is stable.
        assert_eq!(flushed(&files).unwrap(), extent);

        // Without an index file (it was kept in memory), the batches are found by reading the
        // data file from its start: the same two, up to the hole.
        std::fs::remove_file(&files.index).unwrap();
        let rebuilt = flushed(&files).unwrap();
        assert_eq!(rebuilt.stats, expected);
        assert_eq!(rebuilt.index.as_deref(), Some(&index[..2 * ENTRY_LEN]));
        assert_eq!(rebuilt.data_len, data.len() as u64);
    }
}
