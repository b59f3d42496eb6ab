//! The configuration reference: every key of the master, the worker and the Rust client, with
//! its type, its default and its documentation. Rendered as markdown by the hidden
//! `sluice config-reference` command (committed as `docs/config.md`, which a test keeps
//! current) and as the key list at the end of `sluice master --help` and `sluice worker --help`.
//!
//! Nothing here repeats what a key means. The text is the doc comment on the key's field, read
//! from the config source files compiled into this crate (`include_str!`): rustdoc comments are
//! not available at run time, and a derive that would carry them (a JSON-schema derive) needs a
//! proc-macro crate the workspace does not have, plus a schema override on every duration and
//! size field. The defaults are the values the binary uses: the master's and worker's `Default`
//! serialized the way the config loader serializes it, the client's `ClientConfig::new`.
//! Building a role's keys checks the two against each other, so a key that is declared but not
//! serialized, serialized but not found in the source, or left without a doc comment is an
//! error (and fails this crate's tests), not a silent gap in the reference.

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sluice_client::ClientConfig;
use sluice_master::MasterConfig;
use sluice_protocol::batch::Codec;
use sluice_worker::config::IoEngineConfig;
use sluice_worker::WorkerConfig;

const MASTER_SOURCE: &str = include_str!("../../master/src/config.rs");
const WORKER_SOURCE: &str = include_str!("../../worker/src/config.rs");
const CLIENT_SOURCE: &str = include_str!("../../client/src/config.rs");

/// The command that writes `docs/config.md`.
pub const REGENERATE: &str = "cargo run -p sluice -- config-reference > docs/config.md";

/// A process whose keys `sluice` loads from a file, the environment and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `sluice master`: [`MasterConfig`].
    Master,
    /// `sluice worker`: [`WorkerConfig`].
    Worker,
}

impl Role {
    /// The subcommand, also the role's name in environment variables.
    pub fn name(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }

    /// The prefix of the role's environment variables (`SLUICE_WORKER_`).
    pub fn env_prefix(self) -> &'static str {
        match self {
            Role::Master => "SLUICE_MASTER_",
            Role::Worker => "SLUICE_WORKER_",
        }
    }

    /// The role's keys, in the order they are declared.
    pub fn keys(self) -> anyhow::Result<Vec<Key>> {
        match self {
            Role::Master => master_keys(),
            Role::Worker => worker_keys(),
        }
    }
}

/// One configuration key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The key: the name of the config struct's field.
    pub name: String,
    /// What its value is, in words (`duration`, `size`, `list of paths`...), markdown.
    pub kind: String,
    /// Its default: as written in a TOML config file for master and worker keys, as a value
    /// for client keys. None: the key has no default and must be given.
    pub default: Option<String>,
    /// Its doc comment as one paragraph, markdown.
    pub doc: String,
}

impl Key {
    /// The first sentence of the doc comment.
    pub fn summary(&self) -> &str {
        first_sentence(&self.doc)
    }
}

/// The master's keys.
pub fn master_keys() -> anyhow::Result<Vec<Key>> {
    serialized_keys::<MasterConfig>(MASTER_SOURCE, "MasterConfig", &[])
}

/// The worker's keys.
pub fn worker_keys() -> anyhow::Result<Vec<Key>> {
    let engines = enum_values::<IoEngineConfig>(WORKER_SOURCE, "IoEngineConfig")?;
    serialized_keys::<WorkerConfig>(
        WORKER_SOURCE,
        "WorkerConfig",
        &[("IoEngineConfig", engines)],
    )
}

/// The Rust client's keys: the fields of [`ClientConfig`], with the defaults of
/// [`ClientConfig::new`].
pub fn client_keys() -> anyhow::Result<Vec<Key>> {
    // No `..`: a field added to the client fails to compile here until it is shown.
    let ClientConfig {
        master: _,
        replication,
        batch_size,
        push_size,
        max_inflight_pushes,
        max_buffered,
        compression,
        connect_timeout,
        request_timeout,
        request_timeout_min,
        push_retry_timeout,
        prefetch_chunks,
        fetch_retries,
        fetch_retry_wait,
        layout_timeout,
        master_retry_timeout,
        master_request_timeout,
        app_secret: _,
        tls,
        tls_ca_file: _,
        tls_server_name: _,
    } = ClientConfig::new(String::new());
    let duration = |value| {
        sluice_protocol::duration::serialize(&value, serde_json::value::Serializer)
            .map(|shown| shown.as_str().unwrap_or_default().to_string())
            .context("showing a duration")
    };
    let defaults = [
        ("master", None),
        ("replication", Some(replication.to_string())),
        ("batch_size", Some(batch_size.to_string())),
        ("push_size", Some(push_size.to_string())),
        ("max_inflight_pushes", Some(max_inflight_pushes.to_string())),
        ("max_buffered", Some(max_buffered.to_string())),
        ("compression", Some(compression.to_string())),
        ("connect_timeout", Some(duration(connect_timeout)?)),
        ("request_timeout", Some(duration(request_timeout)?)),
        ("request_timeout_min", Some(duration(request_timeout_min)?)),
        ("push_retry_timeout", Some(duration(push_retry_timeout)?)),
        ("prefetch_chunks", Some(prefetch_chunks.to_string())),
        ("fetch_retries", Some(fetch_retries.to_string())),
        ("fetch_retry_wait", Some(duration(fetch_retry_wait)?)),
        ("layout_timeout", Some(duration(layout_timeout)?)),
        (
            "master_retry_timeout",
            Some(duration(master_retry_timeout)?),
        ),
        (
            "master_request_timeout",
            Some(duration(master_request_timeout)?),
        ),
        ("app_secret", None),
        ("tls", Some(tls.to_string())),
        ("tls_ca_file", None),
        ("tls_server_name", None),
    ];
    let codecs = [(
        "Codec",
        Codec::ALL
            .map(|codec| (codec.name().to_string(), String::new()))
            .to_vec(),
    )];
    let declared = declared(CLIENT_SOURCE, "ClientConfig")?;
    let shown: Vec<&str> = defaults.iter().map(|(name, _)| *name).collect();
    let fields: Vec<&str> = declared.iter().map(|field| field.name.as_str()).collect();
    if shown != fields {
        bail!("ClientConfig declares {fields:?} but the reference shows {shown:?}");
    }
    declared
        .into_iter()
        .zip(defaults)
        .map(|(field, (_, default))| {
            Ok(Key {
                kind: kind(&field.ty, &codecs)?,
                doc: paragraph(&field.doc),
                name: field.name,
                default,
            })
        })
        .collect()
}

/// The keys of a config struct `item` declared in `source` and loaded through serde: the
/// defaults come from `T::default()` serialized to TOML, as the config loader sees them.
/// `enums` gives the values (and their docs) of the enum types among the fields.
fn serialized_keys<T: Serialize + Default>(
    source: &str,
    item: &str,
    enums: &[(&str, Vec<(String, String)>)],
) -> anyhow::Result<Vec<Key>> {
    let mut defaults =
        toml::Table::try_from(T::default()).with_context(|| format!("serializing {item}"))?;
    let mut keys = Vec::new();
    for field in declared(source, item)? {
        let default = defaults.remove(&field.name).ok_or_else(|| {
            anyhow!(
                "{item}::{} is not a key: it is not in the serialized defaults",
                field.name
            )
        })?;
        let mut doc = paragraph(&field.doc);
        if let Some((_, values)) = enums.iter().find(|(name, _)| *name == field.ty) {
            doc.push_str(" Values:");
            for (value, meaning) in values {
                doc.push_str(&format!(" `{value}`: {meaning}"));
            }
        }
        keys.push(Key {
            kind: kind(&field.ty, enums)?,
            default: Some(default.to_string()),
            doc,
            name: field.name,
        });
    }
    if let Some(key) = defaults.keys().next() {
        bail!("{item} serializes a key {key:?} that is not declared as a field of it");
    }
    Ok(keys)
}

/// The serialized names of the variants of enum `item` declared in `source`, each with its doc
/// comment. Each name is checked to read back as `T`.
fn enum_values<T: DeserializeOwned>(
    source: &str,
    item: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    declared(source, item)?
        .into_iter()
        .map(|variant| {
            let value = snake_case(&variant.name);
            serde_json::from_value::<T>(serde_json::Value::String(value.clone()))
                .with_context(|| format!("{item}::{} does not read as {value:?}", variant.name))?;
            Ok((value, paragraph(&variant.doc)))
        })
        .collect()
}

/// A struct field or an enum variant as declared in source.
#[derive(Debug, PartialEq, Eq)]
struct Declared {
    name: String,
    /// The field's type as written; empty for a variant.
    ty: String,
    /// The doc comment's lines.
    doc: Vec<String>,
}

/// The fields of `pub struct <item>`, or the variants of `pub enum <item>`, in `source` (a
/// rustfmt-formatted file), with their doc comments. A field or variant without one is an
/// error.
fn declared(source: &str, item: &str) -> anyhow::Result<Vec<Declared>> {
    let opening = [
        format!("pub struct {item} {{"),
        format!("pub enum {item} {{"),
    ];
    let mut lines = source
        .lines()
        .skip_while(|line| !opening.iter().any(|open| line.trim() == open));
    lines
        .next()
        .ok_or_else(|| anyhow!("no `pub struct {item}` or `pub enum {item}` found"))?;
    let mut found = Vec::new();
    let mut doc = Vec::new();
    // Brackets still open in an attribute that spans lines.
    let mut attribute_depth = 0usize;
    for line in lines {
        let line = line.trim();
        if attribute_depth > 0 || line.starts_with("#[") {
            let opened = attribute_depth + line.matches('[').count();
            attribute_depth = opened.saturating_sub(line.matches(']').count());
            continue;
        }
        if line == "}" {
            return Ok(found);
        }
        if let Some(text) = line.strip_prefix("///") {
            doc.push(text.strip_prefix(' ').unwrap_or(text).to_string());
            continue;
        }
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let declaration = line.strip_suffix(',').unwrap_or(line);
        let (name, ty) = match declaration.strip_prefix("pub ") {
            Some(field) => field
                .split_once(':')
                .map(|(name, ty)| (name.trim(), ty.trim()))
                .ok_or_else(|| anyhow!("{item}: cannot read the field {line:?}"))?,
            None => (declaration, ""),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("{item}: cannot read {line:?} as a field or a variant");
        }
        if doc.is_empty() {
            bail!("{item}::{name} has no doc comment");
        }
        found.push(Declared {
            name: name.to_string(),
            ty: ty.to_string(),
            doc: std::mem::take(&mut doc),
        });
    }
    bail!("`{item}` has no closing brace")
}

/// What a value of Rust type `ty` is, in the words of the reference.
fn kind(ty: &str, enums: &[(&str, Vec<(String, String)>)]) -> anyhow::Result<String> {
    if let Some((_, values)) = enums.iter().find(|(name, _)| *name == ty) {
        let values: Vec<String> = values
            .iter()
            .map(|(value, _)| format!("`{value}`"))
            .collect();
        return Ok(format!("one of {}", values.join(", ")));
    }
    Ok(match ty {
        "String" => "string",
        "PathBuf" => "path",
        "bool" => "boolean",
        "u16" | "u32" | "u64" | "usize" => "integer",
        "Duration" => "duration",
        "ByteSize" => "size",
        "Vec<String>" => "list of strings",
        "Vec<PathBuf>" => "list of paths",
        // The master's `id`, whose unset value reads and writes as "auto".
        "Option<u64>" => "integer or `auto`",
        "Option<Secret>" => "secret",
        other => bail!("the reference has no words for the type {other}: add them to `kind`"),
    }
    .to_string())
}

/// `IoUring` as `io_uring`: serde's `rename_all = "snake_case"`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Doc comment lines as one paragraph (blank lines, which separate paragraphs, included).
fn paragraph(lines: &[String]) -> String {
    let words: Vec<&str> = lines
        .iter()
        .map(|line| line.trim())
        .filter(|line| !line.is_empty())
        .collect();
    words.join(" ")
}

/// The text up to and including the first `. ` outside a code span, or all of it.
fn first_sentence(text: &str) -> &str {
    let mut in_code = false;
    for (i, c) in text.char_indices() {
        match c {
            '`' => in_code = !in_code,
            '.' if !in_code && text[i + 1..].starts_with(' ') => return &text[..=i],
            _ => {}
        }
    }
    text
}

/// `text` made safe for a markdown table cell: `|` escaped everywhere (GitHub reads `\|` as a
/// pipe even in a code span), `<` escaped outside code spans so it never opens an HTML tag.
fn table_cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_code = false;
    for c in text.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            _ => out.push(c),
        }
    }
    out
}

/// The table of `keys`.
fn table(keys: &[Key]) -> String {
    let mut out = String::from("| key | type | default | description |\n|---|---|---|---|\n");
    for key in keys {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            key.name,
            table_cell(&key.kind),
            match &key.default {
                Some(default) => format!("`{}`", table_cell(default)),
                None => "required".to_string(),
            },
            table_cell(&key.doc),
        ));
    }
    out
}

/// `name` if `keys` has it: the introductions name real keys in their examples.
fn example<'a>(keys: &[Key], name: &'a str) -> anyhow::Result<&'a str> {
    if keys.iter().any(|key| key.name == name) {
        Ok(name)
    } else {
        bail!("the reference's example key {name:?} is no key")
    }
}

/// How `role`'s keys are set, with `key = value` as the example.
fn server_intro(role: Role, key: &str, value: &str) -> String {
    let name = role.name();
    let env = format!("{}{}", role.env_prefix(), key.to_ascii_uppercase());
    let flag = key.replace('_', "-");
    format!(
        "`sluice {name}` reads every key below from three places; a later one wins over an \
         earlier one:\n\
         \n\
         1. a TOML file given with `--config FILE`: `{key} = \"{value}\"`;\n\
         2. an environment variable `{prefix}<KEY>`: `{env}={value}`;\n\
         3. a flag `--<key> VALUE`, with dashes or underscores: `--{flag} {value}`.\n\
         \n\
         An unknown key is an error naming it, wherever it comes from. Lists are TOML arrays in \
         the file and comma-separated in variables and flags. `sluice {name} --help` lists the \
         keys with their defaults.\n",
        prefix = role.env_prefix(),
    )
}

/// The whole reference, as `docs/config.md` holds it.
pub fn markdown() -> anyhow::Result<String> {
    let master = master_keys()?;
    let worker = worker_keys()?;
    let client = client_keys()?;
    let mut out = String::new();
    out.push_str(&format!(
        "# Configuration reference\n\
         \n\
         <!-- Generated from the doc comments of the config structs by `sluice config-reference`; \
         do not edit. Regenerate with `{REGENERATE}`. -->\n\
         \n\
         Every key of the master (`MasterConfig`, `master/src/config.rs`), the worker \
         (`WorkerConfig`, `worker/src/config.rs`) and the Rust client (`ClientConfig`, \
         `client/src/config.rs`), with its default and its documentation: the doc comment on \
         the key's field. Spark applications set the client through `spark.sluice.*` \
         properties, listed in [the Spark client's README](../client-jvm/README.md#settings).\n\
         \n\
         - [Master](#master)\n\
         - [Worker](#worker)\n\
         - [Client](#client)\n\
         \n\
         Durations are written `500ms`, `30s`, `2m`, `1h 30m`; sizes `512KiB`, `64MiB`, `1GiB` \
         (binary units) or `1GB` (decimal).\n"
    ));
    out.push_str("\n## Master\n\n");
    out.push_str(&server_intro(
        Role::Master,
        example(&master, "data_dir")?,
        "/data/sluice",
    ));
    out.push('\n');
    out.push_str(&table(&master));
    out.push_str("\n## Worker\n\n");
    out.push_str(&server_intro(
        Role::Worker,
        example(&worker, "memory_budget")?,
        "4GiB",
    ));
    out.push('\n');
    out.push_str(&table(&worker));
    out.push_str(&format!(
        "\n## Client\n\
         \n\
         A Rust program builds a `ClientConfig` from `ClientConfig::new(master)`, which holds \
         the defaults below, and changes the fields it needs: `ClientConfig {{ {key}: 2, \
         ..ClientConfig::new(\"m1:9097,m2:9097\") }}`. Durations are `std::time::Duration`s.\n\
         \n\
         Spark applications, through the JNI bridge, give the masters as \
         `spark.sluice.master.endpoints` and a key as `spark.sluice.client.<key>`, a duration \
         in milliseconds as `spark.sluice.client.<key>_ms`. Which keys the bridge takes, and \
         the settings of the Spark side: [client-jvm/README.md](../client-jvm/README.md#settings).\n\
         \n",
        key = example(&client, "replication")?,
    ));
    out.push_str(&table(&client));
    Ok(out)
}

/// The key list at the end of `sluice <role> --help`: each key with its default and the first
/// sentence of its documentation.
pub fn long_help(role: Role) -> anyhow::Result<String> {
    let mut out = wrap(
        &format!(
            "Keys, set in a TOML file (--config FILE), as {prefix}<KEY> variables or as \
             --<key> VALUE flags (flags win over variables, variables over the file). Full \
             descriptions: docs/config.md.",
            prefix = role.env_prefix(),
        ),
        "",
    );
    for key in role.keys()? {
        let default = key.default.as_deref().unwrap_or("(required)");
        out.push_str(&format!("\n  {} = {default}\n", key.name));
        out.push_str(&wrap(key.summary(), "          "));
    }
    Ok(out)
}

/// `text` in lines of at most 100 columns (unless a word is longer), each line starting with
/// `indent` and ending with a newline.
fn wrap(text: &str, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::from(indent);
    for word in text.split_whitespace() {
        if line.len() > indent.len() && line.len() + 1 + word.len() > 100 {
            out.push_str(&line);
            out.push('\n');
            line = String::from(indent);
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The key names at the end of `sluice <role> -h`.
pub fn short_help(role: Role) -> anyhow::Result<String> {
    let names: Vec<String> = role.keys()?.into_iter().map(|key| key.name).collect();
    Ok(wrap(
        &format!(
            "Keys (--help for their defaults and descriptions): {}",
            names.join(", ")
        ),
        "",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_every_role_is_declared_documented_and_has_a_default() {
        let master = master_keys().unwrap();
        let worker = worker_keys().unwrap();
        let client = client_keys().unwrap();
        for keys in [&master, &worker, &client] {
            assert!(keys.len() > 10, "{keys:?}");
            for key in keys {
                assert!(!key.doc.is_empty() && !key.kind.is_empty(), "{key:?}");
            }
        }
        let find = |keys: &[Key], name: &str| keys.iter().find(|k| k.name == name).cloned();
        let budget = find(&worker, "memory_budget").unwrap();
        assert_eq!(budget.kind, "size");
        let shown = format!("\"{}\"", bytesize::ByteSize::gib(1));
        assert_eq!(budget.default, Some(shown));
        assert_eq!(budget.summary(), "Memory for partition buffers.");
        let engine = find(&worker, "io_engine").unwrap();
        assert_eq!(engine.kind, "one of `auto`, `io_uring`, `sync`");
        assert!(
            engine.doc.contains("`sync`: Positional writes"),
            "{engine:?}"
        );
        let default = |keys: &[Key], name: &str| find(keys, name).unwrap().default;
        assert_eq!(default(&master, "id").as_deref(), Some("\"auto\""));
        assert_eq!(default(&master, "peers").as_deref(), Some("[]"));
        assert_eq!(
            default(&master, "election_timeout").as_deref(),
            Some("\"400ms\"")
        );
        assert_eq!(default(&client, "layout_timeout").as_deref(), Some("10m"));
        assert_eq!(default(&client, "master"), None);
    }

    #[test]
    fn declarations_are_read_with_their_attributes_skipped() {
        let source = "\
struct Other {
    pub skipped: u8,
}

pub struct Config {
    /// First line,
    /// second line.
    ///
    /// A second paragraph.
    #[serde(
        deserialize_with = \"list\",
        default = \"[x]\"
    )]
    pub hosts: Vec<String>,
    // A comment, not documentation.
    /// Plain.
    #[serde(with = \"sluice_protocol::duration\")]
    pub wait: Duration,
}

pub enum Choice {
    /// The first.
    #[default]
    First,
}
";
        let config = declared(source, "Config").unwrap();
        assert_eq!(
            config,
            vec![
                Declared {
                    name: "hosts".into(),
                    ty: "Vec<String>".into(),
                    doc: vec![
                        "First line,".into(),
                        "second line.".into(),
                        "".into(),
                        "A second paragraph.".into()
                    ],
                },
                Declared {
                    name: "wait".into(),
                    ty: "Duration".into(),
                    doc: vec!["Plain.".into()],
                },
            ]
        );
        assert_eq!(
            paragraph(&config[0].doc),
            "First line, second line. A second paragraph."
        );
        let choice = declared(source, "Choice").unwrap();
        assert_eq!(
            (choice[0].name.as_str(), choice[0].ty.as_str()),
            ("First", "")
        );
        let undocumented = declared(source.replace("    /// Plain.\n", "").as_str(), "Config");
        assert!(undocumented
            .unwrap_err()
            .to_string()
            .contains("Config::wait"));
        assert!(declared(source, "Missing").is_err());
    }

    #[test]
    fn cells_and_sentences_respect_code_spans() {
        assert_eq!(
            table_cell("a | b `<x> | y` <tag>"),
            "a \\| b `<x> \\| y` &lt;tag>"
        );
        assert_eq!(
            first_sentence("Ids like `a. b` count. Then more."),
            "Ids like `a. b` count."
        );
        assert_eq!(first_sentence("No end"), "No end");
        assert_eq!(snake_case("IoUring"), "io_uring");
    }

    #[test]
    fn the_short_help_names_every_key_in_lines_of_at_most_100_columns() {
        let help = short_help(Role::Worker).unwrap();
        for key in worker_keys().unwrap() {
            assert!(help.contains(&key.name), "{} missing from {help}", key.name);
        }
        assert!(help.lines().all(|line| line.len() <= 100), "{help}");
        assert_eq!(wrap("a b", "  "), "  a b\n");
        assert_eq!(wrap(&"word ".repeat(30), "").lines().count(), 2);
    }
}
