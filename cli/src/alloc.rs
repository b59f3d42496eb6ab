//! The `sluice` binary's global allocator: jemalloc, giving freed memory back to the system.
//!
//! A worker's heap swings with its load: a shuffle of 100k partitions allocates a partition,
//! its buffers and its flush state per location, and deleting the shuffle frees all of it. With
//! glibc malloc (two arenas) the freed pages stayed in the process: a worker measured 21 MiB
//! idle, 248 MiB at the peak of such a shuffle and still 238 MiB a minute after the shuffle was
//! deleted. jemalloc returns pages unused for `dirty_decay_ms`, from a background thread, so an
//! idle worker shrinks too; with two arenas its heap fragments less: the same run ends at 41 MiB
//! a minute after the delete, most of it back right after the delete (`sluice bench --partitions
//! 100000 --settle 60s` reports these figures; see docs/operations.md).
//!
//! Measured beside it on that run: glibc with `malloc_trim(0)` after the delete, 61 MiB;
//! mimalloc, 95 MiB; jemalloc with its default of four arenas per core, 48 MiB. jemalloc's C
//! build costs about two minutes of CPU on a fresh target directory (mimalloc fifteen seconds),
//! once.

use std::cell::Cell;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read once when it starts (the `_RJEM_MALLOC_CONF` environment variable
/// overrides them): a background thread purges; pages unused for a second go back
/// (`dirty_decay_ms`), with no second, lazier stage (`muzzy_decay_ms:0`); two arenas, as glibc
/// was held to before, since per-core arenas each keep their own partly used pages. Threads
/// allocate through their own caches first, which keeps two arenas from contending much; on
/// many cores, compare `sluice bench` with `_RJEM_MALLOC_CONF=narenas:8` before raising it.
///
/// The thread caches also keep freed blocks of up to 1 MiB (`tcache_max`; jemalloc's default
/// is 32 KiB). A reader decompresses every 256 KiB batch into a new buffer and frees it soon
/// after; above the default each such buffer came from the arena as fresh pages, and a tenth of
/// the client's read time went to page faults zeroing them. Measured with `sluice bench --master
/// M --replication 1 --maps 4 --partitions 64 --bytes-per-map 256MiB --verify` against one
/// worker, two runs each: read 0.78 and 0.82 GB/s before, 0.88 and 0.89 after; client CPU per GB
/// read 2.21 and 2.14 s before, 1.93 and 1.89 after.
///
/// Not more than 1 MiB, and blocks of 2 MiB or more come from jemalloc's own arena for large
/// blocks, whose freed pages go back at once (`oversize_threshold`, 8 MiB by default). A worker
/// reads every push into one block of its length, and its memory budget counts those blocks
/// only while they hold data: freed blocks a thread cache or an arena keeps are outside it. So
/// a worker also purges its arenas when a push must wait for the budget ([`purge_freed`]). With
/// caches of up to 8 MiB, the `mem-writers` chaos scenario (40 writers pushing 1-4 MiB frames
/// at a 64 MiB budget) peaked at 184-216 MiB, against the 112 MiB it allows; with caches of
/// 1 MiB and the default threshold, 110-117 MiB; with these settings alone, 76-114 MiB over
/// nine runs (some failing); with the purge too, 84-96 MiB in five runs (96-103 MiB with glibc
/// malloc before jemalloc).
///
/// The cost falls on pushes of about 1 MiB, which no thread cache keeps now and which sometimes
/// land on pages the arena gave back. `sluice bench --workers 1 --replication 1 --maps 4
/// --partitions 64 --bytes-per-map 256MiB --verify`, four runs each, taking turns: write
/// 0.81-0.86 GB/s before, 0.78-0.81 after; the worker's CPU per GB written and read 0.68-0.75 s
/// before, 0.75-0.81 after. A reader's 4 MiB chunks would start on fresh pages too; the client
/// reads them into buffers it takes again (`sluice_protocol::connection::BodyPool`), and reads
/// as fast as before (1.92-2.52 GB/s before, 1.98-2.20 after). The Spark plug-in's native
/// library allocates through the JVM's malloc, not this.
///
/// Those caches belong to threads, and jemalloc empties a thread's cache only as that thread
/// allocates again: a runtime thread that goes idle keeps what it cached, which the background
/// purge never reaches. With 8 MiB blocks cached, a worker a minute after a 100k-partition
/// shuffle was deleted held 50.3 MiB against 15.9 idle (27.8 with jemalloc's default
/// `tcache_max`), so the runtime's threads give their caches back as they park, at most once a
/// [`CACHE_FLUSH_EVERY`] ([`release_thread_cache`]).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,\
narenas:2,tcache_max:1048576,oversize_threshold:2097152\0"[0];

/// How often a runtime thread at most gives its cached blocks back.
pub const CACHE_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Gives this thread's cached blocks back to its arena, where the background thread purges what
/// stays unused; at most once a [`CACHE_FLUSH_EVERY`] per thread. The runtime calls it each time
/// one of its threads parks: a busy thread keeps its cache between flushes, and an idle one
/// flushes on its first park a second after the last (the runtime's timers wake it).
pub fn release_thread_cache() {
    thread_local! {
        static FLUSHED: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    FLUSHED.with(|flushed| {
        let now = Instant::now();
        if flushed
            .get()
            .is_some_and(|at| now.duration_since(at) < CACHE_FLUSH_EVERY)
        {
            return;
        }
        flushed.set(Some(now));
        mallctl_run(c"thread.tcache.flush");
    });
}

/// Gives every arena's unused pages back to the system now (`arena.<all>.purge`), and this
/// thread's cached blocks to its arena first. A worker runs it when a push must wait for its
/// memory budget (`sluice_worker::memory::on_budget_full`), at most every 100 ms: the budget is
/// full, so pages freed since the last purge count as much as the pushed bytes it holds.
pub fn purge_freed() {
    mallctl_run(c"thread.tcache.flush");
    mallctl_run(c"arena.4096.purge");
}

/// Runs a jemalloc control that reads and writes nothing (4096 is `MALLCTL_ARENAS_ALL`).
fn mallctl_run(name: &std::ffi::CStr) {
    // SAFETY: the control reads and writes nothing (null old and new values, zero length), and
    // the name is a NUL-terminated string that lives for the call.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}
