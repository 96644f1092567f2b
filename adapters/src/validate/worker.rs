//! One validation worker thread: its compiled schemas, and parse + validate of one document.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use libxml::error::{StructuredError, XmlErrorLevel};
use libxml::parser::{Parser, ParserOptions, XmlParseFailure};
use libxml::schemas::{SchemaParserContext, SchemaValidationContext};
use libxml::tree::Document;

use super::{Job, Reply, ValidateError, Verdict, Violation, path};
use crate::catalog::{Catalog, SchemaEntry, Selection};

pub(super) struct Worker {
    catalog: Arc<Catalog>,
    max_violations: usize,
    /// Compiled schemas by catalog id; a failure is kept too, so a broken schema is not recompiled
    /// for every document.
    compiled: HashMap<String, Result<SchemaValidationContext, ValidateError>>,
}

impl Worker {
    pub(super) fn new(catalog: Arc<Catalog>, max_violations: usize) -> Worker {
        Worker { catalog, max_violations, compiled: HashMap::new() }
    }

    /// Compiles every catalog schema; the first failure is returned.
    pub(super) fn compile_all(&mut self) -> Result<(), ValidateError> {
        let catalog = Arc::clone(&self.catalog);
        for entry in catalog.schemas() {
            self.context(entry)?;
        }
        Ok(())
    }

    /// Takes jobs until the queue closes.
    pub(super) fn serve(&mut self, jobs: &Mutex<Receiver<Job>>) {
        loop {
            let job = {
                let Ok(rx) = jobs.lock() else { return };
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            let reply = self.run(&job.xml);
            let _ = job.reply.send(reply);
        }
    }

    /// Validates one document. A panic inside the libxml binding must not take the worker (and
    /// every later request) down: it answers this one as unavailable and starts over with fresh
    /// contexts.
    pub(super) fn run(&mut self, xml: &[u8]) -> Reply {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.validate(xml))) {
            Ok(reply) => reply,
            Err(_) => {
                self.compiled.clear();
                Err(ValidateError::Unavailable("validation panicked".into()))
            }
        }
    }

    fn validate(&mut self, xml: &[u8]) -> Reply {
        let doc = parse(xml)?;
        let Some(root) = doc.get_root_element() else {
            return Err(ValidateError::Malformed { line: 1, column: 0, message: "no root element".into() });
        };
        let Some(namespace) = root.get_namespace().map(|ns| ns.get_href()) else {
            return Ok(Verdict::UnknownNamespace { namespace: None, version: None });
        };
        let stated = |attr: &str| {
            root.get_property_no_ns(attr)
                .or_else(|| root.get_child_elements().iter().find_map(|c| c.get_property_no_ns(attr)))
        };
        let catalog = Arc::clone(&self.catalog);
        let entry = match catalog.select(&namespace, stated) {
            Selection::Schema(entry) => entry,
            Selection::UnknownNamespace => {
                return Ok(Verdict::UnknownNamespace { namespace: Some(namespace), version: None });
            }
            Selection::UnknownVersion => {
                let version = catalog.version_attributes(&namespace).into_iter().find_map(stated);
                return Ok(Verdict::UnknownNamespace { namespace: Some(namespace), version });
            }
        };
        let max = self.max_violations;
        let context = self.context(entry)?;
        match context.validate_document(&doc) {
            Ok(()) => Ok(Verdict::Valid { schema: entry.id.clone() }),
            Err(errors) => Ok(Verdict::Invalid { schema: entry.id.clone(), violations: violations(xml, &errors, max) }),
        }
    }

    /// The compiled context for a schema, compiling it on first use.
    fn context(&mut self, entry: &SchemaEntry) -> Result<&mut SchemaValidationContext, ValidateError> {
        let slot = self.compiled.entry(entry.id.clone()).or_insert_with(|| compile(&self.catalog, entry));
        match slot {
            Ok(context) => Ok(context),
            Err(e) => Err(e.clone()),
        }
    }
}

/// Stages and compiles one schema. The staged copy is only needed while libxml2 reads it.
fn compile(catalog: &Catalog, entry: &SchemaEntry) -> Result<SchemaValidationContext, ValidateError> {
    let unusable = |message: String| ValidateError::Schema { schema: entry.id.clone(), message };
    let staged = catalog.stage(entry).map_err(|e| unusable(e.to_string()))?;
    let Some(path) = staged.entry().to_str() else {
        return Err(unusable(format!("staged path `{}` is not UTF-8", staged.entry().display())));
    };
    let mut parser = SchemaParserContext::from_file(path);
    SchemaValidationContext::from_parser(&mut parser).map_err(|errors| {
        let messages: Vec<String> = errors
            .iter()
            .take(5)
            .map(|e| {
                let file = e.filename.as_deref().unwrap_or("?");
                format!("{file}:{}: {}", e.line.unwrap_or(0), message_of(e))
            })
            .collect();
        unusable(messages.join("; "))
    })
}

/// Parses untrusted bytes: recovery off (malformed input fails), network off, no DTD loading.
fn parse(xml: &[u8]) -> Result<Document, ValidateError> {
    let options = ParserOptions { recover: false, no_net: true, ..ParserOptions::default() };
    match Parser::default().parse_string_with_diagnostics(xml, options) {
        Ok((doc, _warnings)) => Ok(doc),
        Err(XmlParseFailure::ParseFailed(diagnostics)) => {
            let first = diagnostics.iter().find(|d| matches!(d.level, XmlErrorLevel::Error | XmlErrorLevel::Fatal));
            Err(match first.or(diagnostics.first()) {
                Some(d) => {
                    ValidateError::Malformed { line: to_u32(d.line), column: to_u32(d.col), message: message_of(d) }
                }
                None => ValidateError::Malformed { line: 0, column: 0, message: "not well-formed".into() },
            })
        }
        Err(XmlParseFailure::DocumentTooLarge) => {
            Err(ValidateError::Malformed { line: 0, column: 0, message: "document too large".into() })
        }
        Err(other) => Err(ValidateError::Unavailable(format!("libxml2 parser: {other}"))),
    }
}

/// libxml2's errors as violations, each with the element path found in the source bytes.
fn violations(xml: &[u8], errors: &[StructuredError], max: usize) -> Vec<Violation> {
    let serious: Vec<&StructuredError> =
        errors.iter().filter(|e| matches!(e.level, XmlErrorLevel::Error | XmlErrorLevel::Fatal)).collect();
    let chosen: Vec<&StructuredError> = if serious.is_empty() { errors.iter().collect() } else { serious };
    // Elements below the last line a shown violation names are never looked at.
    let last_line = chosen.iter().take(max).map(|e| to_u32(e.line)).max().unwrap_or(0);
    let mut locator = path::Locator::new(xml, last_line);
    let mut out = Vec::new();
    for e in chosen.iter().take(max) {
        let message = message_of(e);
        let line = to_u32(e.line);
        let found = locator.find(line, path::element_in_message(&message));
        out.push(match found {
            Some(at) => Violation { line: at.line, column: at.column, path: at.path, message },
            None => Violation { line, column: to_u32(e.col), path: String::new(), message },
        });
    }
    if chosen.len() > max {
        let last = out.last().map(|v| v.line).unwrap_or(0);
        out.push(Violation {
            line: last,
            column: 0,
            path: String::new(),
            message: format!("{} more violations not shown", chosen.len() - max),
        });
    }
    out
}

fn message_of(e: &StructuredError) -> String {
    e.message.as_deref().unwrap_or("unknown error").trim().to_string()
}

fn to_u32(n: Option<i32>) -> u32 {
    n.and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}
