//! `lotse validate | convert | inspect`: checking messages by hand, with the hub's own catalog,
//! validator, reader and JSON mapping.
//!
//! Exit codes: 0 success (all valid), 1 the input is at fault (invalid, malformed, no schema,
//! not convertible), 2 usage or I/O errors (clap, unreadable files, a broken schema folder).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use adapters::catalog::{Catalog, SchemaEntry};
use adapters::validate::{ValidateError, Validator, ValidatorOptions, Verdict};
use anyhow::Context;
use serde_json::json;

/// Where schemas come from: the built-in folder plus these.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SchemaArgs {
    /// An extra schema folder (XSDs and a `catalog.toml`, see docs/schemas.md); repeatable.
    #[arg(long = "schemas-dir", value_name = "DIR")]
    pub schemas_dirs: Vec<PathBuf>,
    /// Also load the `[schemas] extra_dirs` of this config file.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Messages to check against their standard's XSD: XML, or the JSON form (converted to XML
    /// first; line and column then refer to that XML, as `lotse convert --to xml` prints it).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Count a file whose namespace no catalog knows as passing (it is still reported).
    #[arg(long)]
    pub allow_unknown: bool,
    /// One JSON object per file instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub schemas: SchemaArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Json,
    Xml,
}

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The message: XML (to convert to JSON) or its JSON form (to convert to XML).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Output form, written to stdout.
    #[arg(long, value_enum)]
    pub to: Target,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The message to inspect: XML or its JSON form.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub schemas: SchemaArgs,
}

/// `lotse validate FILE...`
pub async fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || validate_blocking(&args)).await.context("validation task failed")?
}

/// `lotse convert FILE --to json|xml`
pub async fn convert(args: ConvertArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || convert_blocking(&args)).await.context("conversion task failed")?
}

/// `lotse inspect FILE [--json]`
pub async fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || inspect_blocking(&args)).await.context("inspection task failed")?
}

/// The catalog for these flags: built-in, then `--config`'s extra dirs, then `--schemas-dir`s.
fn load_catalog(args: &SchemaArgs) -> anyhow::Result<Catalog> {
    let mut dirs = Vec::new();
    if let Some(path) = &args.config {
        let config = crate::config::Config::load(path)?;
        dirs.extend(config.raw.schemas.extra_dirs);
    }
    dirs.extend(args.schemas_dirs.iter().cloned());
    Catalog::load_with_builtin(&dirs).context("cannot load the schema catalog")
}

fn validator(args: &SchemaArgs) -> anyhow::Result<Validator> {
    let catalog = load_catalog(args)?;
    // One worker, schemas compiled on first use: a hand check compiles only what it needs.
    let options = ValidatorOptions { workers: 1, precompile: false, ..ValidatorOptions::default() };
    Validator::new(Arc::new(catalog), options).context("cannot start the validator")
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))
}

fn validate_blocking(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let validator = validator(&args.schemas)?;
    let mut out = std::io::stdout().lock();
    let (mut valid, mut failed, mut unknown) = (0usize, 0usize, 0usize);
    for file in &args.files {
        let name = file.display();
        let bytes = match as_xml(read(file)?) {
            Ok(xml) => xml,
            Err(message) => {
                failed += 1;
                if args.json {
                    let error = json!({ "kind": "json", "message": message });
                    writeln!(out, "{}", json!({ "file": file, "result": { "verdict": "error", "error": error } }))?;
                } else {
                    writeln!(out, "{name}: {message}")?;
                }
                continue;
            }
        };
        let result = validator.validate(&bytes);
        if args.json {
            let line = match &result {
                Ok(verdict) => json!({ "file": file, "result": verdict }),
                Err(e) => json!({ "file": file, "result": { "verdict": "error", "error": error_json(e) } }),
            };
            writeln!(out, "{line}")?;
        }
        match result {
            Ok(Verdict::Valid { schema }) => {
                valid += 1;
                if !args.json {
                    writeln!(out, "{name}: valid ({schema})")?;
                }
            }
            Ok(Verdict::Invalid { schema, violations }) => {
                failed += 1;
                if !args.json {
                    for v in &violations {
                        writeln!(out, "{name}:{}:{}: {}: {}", v.line, v.column, v.path, v.message)?;
                    }
                    writeln!(out, "{name}: invalid ({schema}, {} violations)", violations.len())?;
                }
            }
            Ok(Verdict::UnknownNamespace { namespace, version }) => {
                unknown += 1;
                if !args.json {
                    writeln!(out, "{name}: not validated: {}", unknown_text(namespace.as_deref(), version.as_deref()))?;
                }
            }
            Err(ValidateError::Malformed { line, column, message }) => {
                failed += 1;
                if !args.json {
                    writeln!(out, "{name}:{line}:{column}: malformed: {message}")?;
                }
            }
            Err(ValidateError::Forbidden(message)) => {
                failed += 1;
                if !args.json {
                    writeln!(out, "{name}: refused: {message}")?;
                }
            }
            Err(e) => return Err(e).with_context(|| format!("cannot validate `{name}`")),
        }
    }
    if !args.json && args.files.len() > 1 {
        writeln!(out, "{} files: {valid} valid, {failed} invalid, {unknown} without schema", args.files.len())?;
    }
    let ok = failed == 0 && (unknown == 0 || args.allow_unknown);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The bytes as XML: XML as is, the JSON form converted (`Err`: why it cannot be).
fn as_xml(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if !is_json(&bytes) {
        return Ok(bytes);
    }
    // As intake does: FIT-Connect metadata is held to its limits before anything parses it,
    // so a body too deep is refused for that, not with serde_json's recursion error.
    if adapters::fitconnect::declares_metadata(&bytes) {
        adapters::fitconnect::check_limits(&bytes).map_err(|e| format!("FIT-Connect metadata: {e}"))?;
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    adapters::json::json_to_xml(&value).map_err(|e| format!("cannot convert the JSON form to XML: {e}"))
}

/// JSON starts with `{` or `[` after whitespace; XML with `<` (or a BOM).
fn is_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| matches!(b, b'{' | b'['))
}

fn unknown_text(namespace: Option<&str>, version: Option<&str>) -> String {
    match (namespace, version) {
        (None, _) => "the root element has no namespace; no catalog entry applies".to_string(),
        (Some(ns), Some(v)) => format!("no schema for namespace `{ns}` version `{v}`"),
        (Some(ns), None) => format!("no schema for namespace `{ns}`"),
    }
}

fn error_json(e: &ValidateError) -> serde_json::Value {
    match e {
        ValidateError::Malformed { line, column, message } => {
            json!({ "kind": "malformed", "line": line, "column": column, "message": message })
        }
        ValidateError::Forbidden(message) => json!({ "kind": "forbidden", "message": message }),
        other => json!({ "kind": "internal", "message": other.to_string() }),
    }
}

fn convert_blocking(args: &ConvertArgs) -> anyhow::Result<ExitCode> {
    let bytes = read(&args.file)?;
    let is_json = is_json(&bytes);
    let name = args.file.display();
    let mut out = std::io::stdout().lock();
    match (args.to, is_json) {
        (Target::Json, false) => match adapters::json::xml_to_json(&bytes, &adapters::Limits::default()) {
            Ok(value) => {
                serde_json::to_writer_pretty(&mut out, &value)?;
                writeln!(out)?;
            }
            Err(e) => return Ok(input_error(&format!("{name}: cannot convert to JSON: {e}"))),
        },
        (Target::Xml, true) => {
            let value: serde_json::Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => return Ok(input_error(&format!("{name}: not JSON: {e}"))),
            };
            match adapters::json::json_to_xml(&value) {
                Ok(xml) => out.write_all(&xml)?,
                Err(e) => return Ok(input_error(&format!("{name}: cannot convert to XML: {e}"))),
            }
        }
        (Target::Json, true) => anyhow::bail!("`{name}` is already JSON (use --to xml)"),
        (Target::Xml, false) => anyhow::bail!("`{name}` is already XML (use --to json)"),
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn input_error(message: &str) -> ExitCode {
    eprintln!("lotse: {message}");
    ExitCode::from(1)
}

fn inspect_blocking(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    let name = args.file.display();
    let bytes = read(&args.file)?;
    if let Some(result) = fitconnect_meta(&bytes) {
        return inspect_fitconnect(args, result);
    }
    let bytes = match as_xml(bytes) {
        Ok(xml) => xml,
        Err(message) => return Ok(input_error(&format!("{name}: {message}"))),
    };
    let meta = match adapters::read_meta(&bytes, &adapters::Limits::default()) {
        Ok(meta) => meta,
        Err(e) => return Ok(input_error(&format!("{name}: {e}"))),
    };
    let validator = validator(&args.schemas)?;
    let verdict = validator.validate(&bytes);
    let entry = match &verdict {
        Ok(Verdict::Valid { schema } | Verdict::Invalid { schema, .. }) => {
            validator.catalog().schemas().iter().find(|s| &s.id == schema)
        }
        _ => None,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = json!({
            "file": args.file,
            "meta": meta,
            "schema": entry.map(schema_json),
            "validation": match &verdict {
                Ok(v) => serde_json::to_value(v)?,
                Err(e) => json!({ "verdict": "error", "error": error_json(e) }),
            },
        });
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_meta(&mut out, &name.to_string(), &meta)?;
        match entry {
            Some(s) => writeln!(
                out,
                "schema:       {} ({} {}, {} entry file(s))",
                s.id,
                s.standard,
                s.version,
                s.entries.len()
            )?,
            None => writeln!(out, "schema:       none")?,
        }
        match &verdict {
            Ok(Verdict::Valid { .. }) => writeln!(out, "validation:   valid")?,
            Ok(Verdict::Invalid { violations, .. }) => {
                writeln!(out, "validation:   invalid ({} violations)", violations.len())?;
                for v in violations {
                    writeln!(out, "  {}:{}: {}: {}", v.line, v.column, v.path, v.message)?;
                }
            }
            Ok(Verdict::UnknownNamespace { namespace, version }) => writeln!(
                out,
                "validation:   not validated: {}",
                unknown_text(namespace.as_deref(), version.as_deref())
            )?,
            Err(e) => writeln!(out, "validation:   error: {e}")?,
        }
    }
    match verdict {
        Err(ValidateError::Schema { .. } | ValidateError::Unavailable(_)) => {
            verdict.map(|_| ExitCode::SUCCESS).context("cannot validate")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `Some` when the bytes are JSON whose `$schema` names FIT-Connect metadata (read it as such).
///
/// Found as intake finds it, by a byte scan (`declares_metadata`), not a parse: a parse first
/// would meet a body too deep before its limits did, and report serde_json's recursion error
/// (or take it for the JSON form) where intake says which limit it exceeds. `read_metadata`
/// checks those limits (`check_limits`) before it parses.
fn fitconnect_meta(bytes: &[u8]) -> Option<Result<adapters::Meta, adapters::ReadError>> {
    adapters::fitconnect::declares_metadata(bytes).then(|| adapters::fitconnect::read_metadata(bytes))
}

/// `lotse inspect` of FIT-Connect metadata: its meta; JSON Schema validation is not done.
fn inspect_fitconnect(
    args: &InspectArgs,
    result: Result<adapters::Meta, adapters::ReadError>,
) -> anyhow::Result<ExitCode> {
    let name = args.file.display();
    let meta = match result {
        Ok(meta) => meta,
        // ReadError's own text says "XML"
        Err(adapters::ReadError::Malformed { message, .. }) => {
            return Ok(input_error(&format!("{name}: malformed FIT-Connect metadata: {message}")));
        }
        Err(e) => return Ok(input_error(&format!("{name}: {e}"))),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let validation =
            json!({ "verdict": "not_validated", "reason": "FIT-Connect metadata (JSON Schema not checked)" });
        let report = json!({ "file": args.file, "meta": meta, "schema": null, "validation": validation });
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        print_meta(&mut out, &name.to_string(), &meta)?;
        writeln!(out, "validation:   not validated: FIT-Connect metadata (JSON Schema not checked)")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn schema_json(s: &SchemaEntry) -> serde_json::Value {
    json!({
        "id": s.id,
        "standard": s.standard,
        "version": s.version,
        "namespace": s.namespace,
        "version_attribute": s.version_attribute,
        "entries": s.entries,
    })
}

fn print_meta(out: &mut impl Write, file: &str, meta: &adapters::Meta) -> std::io::Result<()> {
    let field = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    writeln!(out, "file:         {file}")?;
    writeln!(out, "standard:     {}", field(&meta.standard))?;
    writeln!(out, "version:      {}", field(&meta.version))?;
    writeln!(out, "namespace:    {}", field(&meta.namespace))?;
    writeln!(out, "root:         {}", meta.root)?;
    writeln!(out, "message type: {}", field(&meta.message_type))?;
    writeln!(out, "message id:   {}", field(&meta.message_id))?;
    writeln!(out, "created at:   {}", field(&meta.created_at))?;
    writeln!(out, "reader:       {}", field(&meta.reader))?;
    writeln!(out, "author:       {}", field(&meta.author))?;
    writeln!(out, "service:      {}", field(&meta.service))?;
    writeln!(out, "trust level:  {}", field(&meta.trust_level))?;
    writeln!(out, "process id:   {}", field(&meta.process_id))?;
    writeln!(out, "reference id: {}", field(&meta.reference_id))?;
    writeln!(out, "dvdv service: {}", field(&meta.dvdv_service))?;
    writeln!(out, "product:      {}", field(&meta.product))?;
    for w in &meta.warnings {
        writeln!(out, "warning:      {w}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIT-Connect metadata body with `levels` levels of arrays in one field.
    fn deep_metadata(levels: usize) -> Vec<u8> {
        let schema = "https://schema.fitko.de/fit-connect/metadata/1.0.0/metadata.schema.json";
        format!(
            r#"{{"$schema":"{schema}","contentStructure":{{"attachments":[]}},"extra":{}{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
        .into_bytes()
    }

    /// Regression: `lotse inspect` and `validate` parsed a FIT-Connect body in full before its
    /// limits were checked, so a 200-level body got serde_json's "recursion limit exceeded"
    /// (as "not JSON") where intake says it is nested deeper than 64 levels.
    #[test]
    fn a_too_deep_fitconnect_body_gets_the_depth_limit_not_a_recursion_error() {
        let body = deep_metadata(200);
        let Some(Err(e)) = fitconnect_meta(&body) else { panic!("inspect reads it as FIT-Connect metadata and fails") };
        assert!(matches!(&e, adapters::ReadError::LimitExceeded(m) if m.contains("nested deeper than 64")), "{e:?}");
        let e = as_xml(body).expect_err("validate refuses it");
        assert!(e.contains("nested deeper than 64") && !e.contains("recursion"), "{e}");
        // Within the limits it is read as before.
        assert!(matches!(fitconnect_meta(&deep_metadata(10)), Some(Ok(_))));
    }
}
