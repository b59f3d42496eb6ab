//! The JNI bridge: `org.apache.spark.shuffle.sluice.SluiceNative` over the Rust client core.
//!
//! No logic of its own: every entry point converts Java arguments, calls `sluice_client` on the
//! JVM's one tokio runtime (blocking the calling Java thread), and converts the result back.
//! Every entry point goes through [`guard`], which turns errors and panics into Java exceptions
//! (`SluiceDataLostException` for lost or unreachable shuffle data, `SluiceException` for the
//! rest) and returns a harmless default to the JVM.
//!
//! Native objects (client, writer, reader) cross the boundary as `jlong` handles made by
//! [`into_handle`] and released exactly once by the matching `close*` call.
//!
//! The one state kept here is each client's cache of shuffle placements ([`Placements`]): a
//! shuffle is registered once per JVM, and forgotten when the master answers that it does not
//! know it, so the next writer registers it again. Besides, every client of the JVM counts into
//! one [`ClientMetrics`] ([`metrics`]), whose totals `SluiceNative.clientMetrics` reads for
//! Spark's metrics system.

#![allow(clippy::too_many_arguments)]

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jni::objects::{JByteArray, JClass, JObjectArray, JString};
use jni::sys::{jbyteArray, jint, jlong, jlongArray};
use jni::JNIEnv;
use sluice_client::{
    ClientConfig, ClientError, ClientMetrics, ClientResult, ShuffleHandle, ShuffleReader,
    ShuffleWriter, SluiceClient,
};
use sluice_protocol::auth::Secret;
use sluice_protocol::ShuffleKey;
use tokio::runtime::Runtime;

const EXCEPTION: &str = "org/apache/spark/shuffle/sluice/SluiceException";
const DATA_LOST: &str = "org/apache/spark/shuffle/sluice/SluiceDataLostException";

/// What an entry point can fail with.
enum Error {
    Client(ClientError),
    Invalid(String),
    Jni(jni::errors::Error),
}

impl From<ClientError> for Error {
    fn from(error: ClientError) -> Self {
        Error::Client(error)
    }
}

impl From<jni::errors::Error> for Error {
    fn from(error: jni::errors::Error) -> Self {
        Error::Jni(error)
    }
}

type Result<T> = std::result::Result<T, Error>;

/// The one runtime of this JVM.
fn runtime() -> Result<&'static Runtime> {
    static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().min(4)))
                .thread_name("sluice-native")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Invalid(format!("cannot start the native runtime: {e}")))
}

/// The client metrics of this JVM: every client it makes counts into them. No recorder is
/// installed here, so only their totals count ([`ClientMetrics::snapshot`]).
fn metrics() -> &'static ClientMetrics {
    static METRICS: OnceLock<ClientMetrics> = OnceLock::new();
    METRICS.get_or_init(ClientMetrics::new)
}

/// Runs `body`, turning an error or a panic into a pending Java exception and `default`.
fn guard<T>(env: &mut JNIEnv, default: T, body: impl FnOnce(&mut JNIEnv) -> Result<T>) -> T {
    let outcome = catch_unwind(AssertUnwindSafe(|| body(&mut *env)));
    let (class, message) = match outcome {
        Ok(Ok(value)) => return value,
        Ok(Err(Error::Client(e))) => {
            let lost = matches!(e, ClientError::DataLost { .. } | ClientError::Fetch { .. });
            (if lost { DATA_LOST } else { EXCEPTION }, e.to_string())
        }
        Ok(Err(Error::Invalid(message))) => (EXCEPTION, message),
        // A Java exception is already pending (e.g. from a failed array access): keep it.
        Ok(Err(Error::Jni(jni::errors::Error::JavaException))) => return default,
        Ok(Err(Error::Jni(e))) => (EXCEPTION, format!("JNI call failed: {e}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            (EXCEPTION, format!("native panic: {what}"))
        }
    };
    if !env.exception_check().unwrap_or(false) {
        let _ = env.throw_new(class, message);
    }
    default
}

fn into_handle<T>(value: T) -> jlong {
    Box::into_raw(Box::new(value)) as jlong
}

/// Borrows the object behind a handle made by [`into_handle`].
fn borrow<'a, T>(handle: jlong) -> Result<&'a mut T> {
    if handle == 0 {
        return Err(Error::Invalid(
            "use of a closed or null native handle".into(),
        ));
    }
    // SAFETY: non-zero handles come from `into_handle::<T>` for this exact T (the Java class
    // keeps each kind in its own field), and the Java side stops using a handle once it passed
    // it to the matching `close*` function, so the box is alive and not aliased mutably.
    Ok(unsafe { &mut *(handle as *mut T) })
}

/// Frees the object behind a handle made by [`into_handle`]. Zero is ignored.
fn release<T>(handle: jlong) {
    if handle != 0 {
        // SAFETY: as in `borrow`; `close*` is called exactly once per handle, after which the
        // Java side forgets it, so the box is freed exactly once.
        drop(unsafe { Box::from_raw(handle as *mut T) });
    }
}

/// The placements this JVM registered, by shuffle, so that each shuffle is registered once
/// and every writer of it shares one placement (and its revives). A placement whose shuffle the
/// master says it does not know is forgotten, so the next writer registers the shuffle again.
struct Placements<H>(Mutex<HashMap<ShuffleKey, H>>);

impl<H: Clone> Placements<H> {
    fn new() -> Self {
        Placements(Mutex::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ShuffleKey, H>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &ShuffleKey) -> Option<H> {
        self.lock().get(key).cloned()
    }

    fn insert(&self, key: &ShuffleKey, placement: H) {
        self.lock().insert(key.clone(), placement);
    }

    fn remove(&self, key: &ShuffleKey) {
        self.lock().remove(key);
    }

    /// Passes `result` on, first forgetting `key`'s placement if the master does not know the
    /// shuffle.
    fn check<T>(&self, key: &ShuffleKey, result: ClientResult<T>) -> Result<T> {
        result.map_err(|error| {
            if error.is_unknown_shuffle() {
                self.remove(key);
            }
            Error::Client(error)
        })
    }
}

struct Client {
    client: SluiceClient,
    /// Shared with the client's writers, which may outlive it.
    placements: Arc<Placements<Arc<ShuffleHandle>>>,
}

impl Client {
    fn handle(&self, key: &ShuffleKey, maps: u32, partitions: u32) -> Result<Arc<ShuffleHandle>> {
        if let Some(handle) = self.placements.get(key) {
            return Ok(handle);
        }
        let registered = runtime()?.block_on(self.client.register_shuffle(key, maps, partitions));
        let handle = self.placements.check(key, registered)?;
        self.placements.insert(key, handle.clone());
        Ok(handle)
    }
}

/// A map attempt's writer (`None` once finished) and the cache its shuffle's placement came
/// from, to forget it if the master turns out not to know the shuffle.
struct Writer {
    writer: Option<ShuffleWriter>,
    key: ShuffleKey,
    placements: Arc<Placements<Arc<ShuffleHandle>>>,
}

impl Writer {
    fn open(&mut self) -> Result<&mut ShuffleWriter> {
        self.writer
            .as_mut()
            .ok_or_else(|| Error::Invalid("writer already finished".into()))
    }
}

fn string(env: &mut JNIEnv, value: &JString) -> Result<String> {
    Ok(env.get_string(value)?.into())
}

fn unsigned(value: jint, what: &str) -> Result<u32> {
    u32::try_from(value)
        .map_err(|_| Error::Invalid(format!("{what} must not be negative, got {value}")))
}

fn key(env: &mut JNIEnv, app_id: &JString, shuffle_id: jint) -> Result<ShuffleKey> {
    let app = string(env, app_id)?;
    Ok(ShuffleKey::new(app, unsigned(shuffle_id, "shuffle id")?))
}

/// Applies `key=value` settings to a client config; unknown keys are errors.
fn apply_settings(config: &mut ClientConfig, settings: &[String]) -> Result<()> {
    for setting in settings {
        let (name, value) = setting.split_once('=').ok_or_else(|| {
            Error::Invalid(format!(
                "setting {:?} is not key=value",
                setting.chars().take(40).collect::<String>()
            ))
        })?;
        let number = || {
            value.trim().parse::<u64>().map_err(|_| {
                Error::Invalid(format!("setting {name}: {value:?} is not a whole number"))
            })
        };
        let millis = || number().map(Duration::from_millis);
        match name.trim() {
            "replication" => config.replication = number()? as u32,
            "batch_size" => config.batch_size = number()? as usize,
            "push_size" => config.push_size = number()? as usize,
            "max_inflight_pushes" => config.max_inflight_pushes = number()? as usize,
            "max_buffered" => config.max_buffered = number()? as usize,
            "prefetch_chunks" => config.prefetch_chunks = number()? as usize,
            "fetch_retries" => {
                config.fetch_retries = u32::try_from(number()?).map_err(|_| {
                    Error::Invalid(format!("setting fetch_retries: {value:?} is too large"))
                })?
            }
            "fetch_retry_wait_ms" => config.fetch_retry_wait = millis()?,
            "compression" => {
                config.compression = value
                    .parse()
                    .map_err(|e| Error::Invalid(format!("setting compression: {e}")))?
            }
            "connect_timeout_ms" => config.connect_timeout = millis()?,
            "request_timeout_ms" => config.request_timeout = millis()?,
            "request_timeout_min_ms" => config.request_timeout_min = millis()?,
            "push_retry_timeout_ms" => config.push_retry_timeout = millis()?,
            "layout_timeout_ms" => config.layout_timeout = millis()?,
            "master_retry_timeout_ms" => config.master_retry_timeout = millis()?,
            "master_request_timeout_ms" => config.master_request_timeout = millis()?,
            "app_secret" => {
                if value.is_empty() {
                    return Err(Error::Invalid("setting app_secret: empty".into()));
                }
                config.app_secret = Some(Secret::new(value.as_bytes().to_vec()))
            }
            "tls" => {
                config.tls = value.trim().parse().map_err(|_| {
                    Error::Invalid(format!("setting tls: {value:?} is not true or false"))
                })?
            }
            "tls_ca_file" => config.tls_ca_file = value.trim().to_string(),
            "tls_server_name" => config.tls_server_name = value.trim().to_string(),
            other => {
                return Err(Error::Invalid(format!(
                    "unknown Sluice client setting {other:?}"
                )))
            }
        }
    }
    Ok(())
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_newClient(
    mut env: JNIEnv,
    _class: JClass,
    master: JString,
    settings: JObjectArray,
) -> jlong {
    guard(&mut env, 0, |env| {
        let master = string(env, &master)?;
        let mut pairs = Vec::new();
        if !settings.is_null() {
            for i in 0..env.get_array_length(&settings)? {
                let item = JString::from(env.get_object_array_element(&settings, i)?);
                pairs.push(string(env, &item)?);
            }
        }
        let mut config = ClientConfig::new(master);
        apply_settings(&mut config, &pairs)?;
        let client = SluiceClient::with_metrics(config, metrics().clone())?;
        Ok(into_handle(Client {
            client,
            placements: Arc::new(Placements::new()),
        }))
    })
}

/// The totals of this JVM's client metrics, in the order of `ClientMetricsSnapshot::NAMES`
/// (push bytes, push retries, revives, fetch retries, data lost).
#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_clientMetrics(
    mut env: JNIEnv,
    _class: JClass,
) -> jlongArray {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let totals: Vec<i64> = metrics()
            .snapshot()
            .to_array()
            .iter()
            .map(|v| i64::try_from(*v).unwrap_or(i64::MAX))
            .collect();
        let array = env.new_long_array(totals.len() as i32)?;
        env.set_long_array_region(&array, 0, &totals)?;
        Ok(array.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_closeClient(
    mut env: JNIEnv,
    _class: JClass,
    client: jlong,
) {
    guard(&mut env, (), |_| {
        release::<Client>(client);
        Ok(())
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_registerShuffle(
    mut env: JNIEnv,
    _class: JClass,
    client: jlong,
    app_id: JString,
    shuffle_id: jint,
    num_maps: jint,
    num_partitions: jint,
) {
    guard(&mut env, (), |env| {
        let client = borrow::<Client>(client)?;
        let key = key(env, &app_id, shuffle_id)?;
        client.handle(
            &key,
            unsigned(num_maps, "numMaps")?,
            unsigned(num_partitions, "numPartitions")?,
        )?;
        Ok(())
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_unregisterShuffle(
    mut env: JNIEnv,
    _class: JClass,
    client: jlong,
    app_id: JString,
    shuffle_id: jint,
) {
    guard(&mut env, (), |env| {
        let client = borrow::<Client>(client)?;
        let key = key(env, &app_id, shuffle_id)?;
        client.placements.remove(&key);
        runtime()?.block_on(client.client.unregister_shuffle(&key))?;
        Ok(())
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_appHeartbeat(
    mut env: JNIEnv,
    _class: JClass,
    client: jlong,
    app_id: JString,
) {
    guard(&mut env, (), |env| {
        let client = borrow::<Client>(client)?;
        let app_id = string(env, &app_id)?;
        runtime()?.block_on(client.client.app_heartbeat(&app_id))?;
        Ok(())
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_newWriter(
    mut env: JNIEnv,
    _class: JClass,
    client: jlong,
    app_id: JString,
    shuffle_id: jint,
    num_maps: jint,
    num_partitions: jint,
    map_id: jint,
    attempt: jint,
) -> jlong {
    guard(&mut env, 0, |env| {
        let client = borrow::<Client>(client)?;
        let key = key(env, &app_id, shuffle_id)?;
        let handle = client.handle(
            &key,
            unsigned(num_maps, "numMaps")?,
            unsigned(num_partitions, "numPartitions")?,
        )?;
        let writer = client.client.writer(
            handle,
            unsigned(map_id, "mapId")?,
            unsigned(attempt, "attempt")?,
        )?;
        Ok(into_handle(Writer {
            writer: Some(writer),
            key,
            placements: client.placements.clone(),
        }))
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_write(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
    partition: jint,
    data: JByteArray,
    offset: jint,
    length: jint,
) {
    guard(&mut env, (), |env| {
        let writer = borrow::<Writer>(handle)?;
        let (offset, length) = (
            unsigned(offset, "offset")? as usize,
            unsigned(length, "length")? as usize,
        );
        let available = env.get_array_length(&data)? as usize;
        if offset.checked_add(length).is_none_or(|end| end > available) {
            return Err(Error::Invalid(format!(
                "range {offset}+{length} is outside an array of {available} bytes"
            )));
        }
        // Copied once, behind the room for a batch head, and handed over: it becomes the
        // partition's batch when that is empty.
        let mut batch = writer.open()?.take_buffer(length);
        let bytes = batch.append_zeroed(length);
        // SAFETY: i8 and u8 have the same size and alignment, the view covers exactly the
        // initialised bytes just appended, and `bytes` is not touched while the view lives.
        let view =
            unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<i8>(), length) };
        env.get_byte_array_region(&data, offset as i32, view)?;
        let partition = unsigned(partition, "partition")?;
        let written = runtime()?.block_on(writer.open()?.write_owned(partition, batch));
        writer.placements.check(&writer.key, written)
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_flush(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
) {
    guard(&mut env, (), |_| {
        let writer = borrow::<Writer>(handle)?;
        let flushed = runtime()?.block_on(writer.open()?.flush());
        writer.placements.check(&writer.key, flushed)
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_finish(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
) -> jlongArray {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let writer = borrow::<Writer>(handle)?;
        let finishing = writer
            .writer
            .take()
            .ok_or_else(|| Error::Invalid("writer already finished".into()))?;
        let finished = runtime()?.block_on(finishing.finish());
        let output = writer.placements.check(&writer.key, finished)?;
        let sizes: Vec<i64> = output.partition_bytes.iter().map(|b| *b as i64).collect();
        let array = env.new_long_array(sizes.len() as i32)?;
        env.set_long_array_region(&array, 0, &sizes)?;
        Ok(array.into_raw())
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_closeWriter(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
) {
    guard(&mut env, (), |_| {
        release::<Writer>(handle);
        Ok(())
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_newReader(
    mut env: JNIEnv,
    _class: JClass,
    client: jlong,
    app_id: JString,
    shuffle_id: jint,
    start_partition: jint,
    end_partition: jint,
    start_map: jint,
    end_map: jint,
) -> jlong {
    guard(&mut env, 0, |env| {
        let client = borrow::<Client>(client)?;
        let key = key(env, &app_id, shuffle_id)?;
        let partitions =
            unsigned(start_partition, "startPartition")?..unsigned(end_partition, "endPartition")?;
        let maps = unsigned(start_map, "startMap")?..unsigned(end_map, "endMap")?;
        let opened = runtime()?.block_on(client.client.reader(&key, partitions, Some(maps)));
        let reader = client.placements.check(&key, opened)?;
        Ok(into_handle(reader))
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_next(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
) -> jbyteArray {
    guard(&mut env, std::ptr::null_mut(), |env| {
        let reader = borrow::<ShuffleReader>(handle)?;
        match runtime()?.block_on(reader.next())? {
            Some(bytes) => Ok(env.byte_array_from_slice(&bytes)?.into_raw()),
            None => Ok(std::ptr::null_mut()),
        }
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_bytesRead(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
) -> jlong {
    guard(&mut env, 0, |_| {
        let reader = borrow::<ShuffleReader>(handle)?;
        Ok(reader.bytes_read() as jlong)
    })
}

#[no_mangle]
pub extern "system" fn Java_org_apache_spark_shuffle_sluice_SluiceNative_closeReader(
    mut env: JNIEnv,
    _class: JClass,
    handle: jlong,
) {
    guard(&mut env, (), |_| {
        // Dropping a reader aborts its prefetches, which needs the runtime's context.
        let _entered = runtime()?.enter();
        release::<ShuffleReader>(handle);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_applied_and_unknown_ones_rejected() {
        let mut config = ClientConfig::new("127.0.0.1:1");
        let settings = [
            "batch_size=1024",
            "compression=false",
            "request_timeout_ms=1500",
            "request_timeout_min_ms=250",
        ]
        .map(String::from);
        assert!(apply_settings(&mut config, &settings).is_ok());
        assert_eq!(config.batch_size, 1024);
        assert_eq!(config.compression, sluice_protocol::batch::Codec::None);
        assert!(apply_settings(&mut config, &["compression=zstd".to_string()]).is_ok());
        assert_eq!(config.compression, sluice_protocol::batch::Codec::Zstd);
        assert_eq!(config.request_timeout, Duration::from_millis(1500));
        assert_eq!(config.request_timeout_min, Duration::from_millis(250));
        let master = [
            "master_retry_timeout_ms=2500",
            "master_request_timeout_ms=90000",
        ]
        .map(String::from);
        assert!(apply_settings(&mut config, &master).is_ok());
        assert_eq!(config.master_retry_timeout, Duration::from_millis(2500));
        assert_eq!(config.master_request_timeout, Duration::from_secs(90));
        let fetch = ["fetch_retries=5", "fetch_retry_wait_ms=50"].map(String::from);
        assert!(apply_settings(&mut config, &fetch).is_ok());
        assert_eq!(config.fetch_retries, 5);
        assert_eq!(config.fetch_retry_wait, Duration::from_millis(50));
        let security = [
            "app_secret=s3cr=t",
            "tls=true",
            "tls_ca_file=/etc/sluice/ca.pem",
            "tls_server_name=sluice",
        ]
        .map(String::from);
        assert!(apply_settings(&mut config, &security).is_ok());
        assert_eq!(config.app_secret, Some(Secret::new(b"s3cr=t".to_vec())));
        assert!(config.tls);
        assert_eq!(config.tls_ca_file, "/etc/sluice/ca.pem");
        assert_eq!(config.tls_server_name, "sluice");
        // A setting that fails never echoes a secret.
        match apply_settings(&mut config, &["app_secret=".to_string()]) {
            Err(Error::Invalid(message)) => assert!(message.contains("app_secret"), "{message}"),
            _ => panic!("an empty app_secret was accepted"),
        }
        for bad in [
            "app_secret=",
            "tls=maybe",
            "fetch_retries=99999999999",
            "nonsense",
            "batch_size=lots",
            "no_such_key=1",
            "compression=maybe",
        ] {
            assert!(
                apply_settings(&mut config, &[bad.to_string()]).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn a_placement_is_forgotten_when_the_master_does_not_know_its_shuffle() {
        let placements = Placements::new();
        let (a, b) = (ShuffleKey::new("app", 0), ShuffleKey::new("app", 1));
        placements.insert(&a, 1);
        placements.insert(&b, 2);
        let master = |status| -> ClientResult<()> {
            Err(ClientError::Master {
                addr: "m1:1".into(),
                status,
            })
        };
        // Unreachable masters or other failures keep it.
        assert!(placements
            .check(&a, master(tonic::Status::unavailable("no leader")))
            .is_err());
        assert!(placements.check(&a, Ok(())).is_ok());
        assert_eq!(placements.get(&a), Some(1));
        // NotFound from the master drops it (and only it): the next writer registers again.
        let unknown = master(tonic::Status::not_found("shuffle app/0 is not registered"));
        assert!(matches!(
            placements.check(&a, unknown),
            Err(Error::Client(ClientError::Master { .. }))
        ));
        assert_eq!(placements.get(&a), None);
        assert_eq!(placements.get(&b), Some(2));
    }
}
