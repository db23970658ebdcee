//! Loading rule files and directories, with a report of what loaded and why the rest did not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::ast::Document;
use crate::compile::{CompileOptions, Compiler, RuleSet};
use crate::error::SigmaError;
use crate::parse::{MAX_RULE_FILE_BYTES, parse_documents};

/// The outcome for one document of one file.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The file.
    pub path: PathBuf,
    /// The document's title, when it parsed far enough to have one.
    pub title: Option<String>,
    /// The document's id, when it has one.
    pub id: Option<String>,
    /// `None` when the document loaded; otherwise why it did not.
    pub error: Option<SigmaError>,
}

/// A compiled rule set and the per-document report.
#[derive(Debug)]
pub struct Loaded {
    /// The rules that loaded.
    pub rules: RuleSet,
    /// One entry per document (and per unreadable file), sorted by path.
    pub report: Vec<Outcome>,
}

impl Loaded {
    /// Number of documents that loaded.
    pub fn passed(&self) -> usize {
        self.report.iter().filter(|o| o.error.is_none()).count()
    }

    /// Number of documents (or files) that did not.
    pub fn failed(&self) -> usize {
        self.report.len() - self.passed()
    }
}

/// Lists the rule files (`*.yml`, `*.yaml`) under `paths` (files or directories, recursive),
/// sorted, skipping hidden directories.
pub fn rule_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SigmaError> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| SigmaError::Io {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        if meta.is_file() {
            files.push(p.clone());
            continue;
        }
        for entry in walkdir::WalkDir::new(p)
            .follow_links(true)
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
        {
            let entry = entry.map_err(|e| SigmaError::Io {
                path: e.path().map(Path::to_path_buf).unwrap_or_else(|| p.clone()),
                reason: e.to_string(),
            })?;
            let path = entry.path();
            if entry.file_type().is_file()
                && matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yml" | "yaml")
                )
            {
                files.push(path.to_path_buf());
            }
        }
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Reads and parses one file into documents (or errors), each tagged with the path.
pub fn read_file(path: &Path) -> Vec<Result<Document, SigmaError>> {
    let text = match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_RULE_FILE_BYTES as u64 => {
            return vec![Err(SigmaError::Yaml(format!(
                "file is {} bytes, larger than the {MAX_RULE_FILE_BYTES} byte limit",
                m.len()
            )))];
        }
        _ => match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(t) => t,
                Err(_) => return vec![Err(SigmaError::Yaml("file is not valid UTF-8".into()))],
            },
            Err(e) => {
                return vec![Err(SigmaError::Io {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })];
            }
        },
    };
    let mut docs = parse_documents(&text);
    for d in docs.iter_mut().flatten() {
        d.meta_mut().path = Some(path.to_path_buf());
    }
    docs
}

/// Loads every rule under `paths`, plus `texts` (name, YAML) held in memory, and compiles
/// them together.
pub fn load(
    paths: &[PathBuf],
    texts: &[(&str, &str)],
    options: CompileOptions,
) -> Result<Loaded, SigmaError> {
    let files = rule_files(paths)?;
    let mut report = Vec::new();
    let mut compiler = Compiler::new(options);
    for (name, text) in texts {
        for d in parse_documents(text) {
            match d {
                Ok(mut doc) => {
                    doc.meta_mut().path = Some(PathBuf::from(name));
                    compiler.add(doc);
                }
                Err(error) => report.push(Outcome {
                    path: PathBuf::from(name),
                    title: None,
                    id: None,
                    error: Some(error),
                }),
            }
        }
    }
    for f in &files {
        for d in read_file(f) {
            match d {
                Ok(doc) => compiler.add(doc),
                Err(error) => report.push(Outcome {
                    path: f.clone(),
                    title: None,
                    id: None,
                    error: Some(error),
                }),
            }
        }
    }
    let (rules, rejected) = compiler.compile();
    for info in rules.rules() {
        report.push(Outcome {
            path: info.meta.path.clone().unwrap_or_default(),
            title: Some(info.meta.title.clone()),
            id: info.meta.id.clone(),
            error: None,
        });
    }
    for r in rejected {
        report.push(Outcome {
            path: r.meta.path.clone().unwrap_or_default(),
            title: Some(r.meta.title),
            id: r.meta.id,
            error: Some(r.error),
        });
    }
    report.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.title.cmp(&b.title)));
    Ok(Loaded { rules, report })
}

/// Reads a placeholders file: a YAML mapping from placeholder name to a value or a list.
pub fn load_placeholders(path: &Path) -> Result<HashMap<String, Vec<String>>, SigmaError> {
    let text = std::fs::read_to_string(path).map_err(|e| SigmaError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let docs = yaml_rust2::YamlLoader::load_from_str(&text)
        .map_err(|e| SigmaError::Yaml(e.to_string()))?;
    let mut out = HashMap::new();
    let Some(yaml_rust2::Yaml::Hash(h)) = docs.first() else {
        return Err(SigmaError::invalid(
            "(placeholders)",
            "expected a mapping of name → values",
        ));
    };
    for (k, v) in h {
        let Some(name) = k.as_str() else { continue };
        let values: Vec<String> = match v {
            yaml_rust2::Yaml::Array(a) => a.iter().filter_map(scalar).collect(),
            other => scalar(other).into_iter().collect(),
        };
        out.insert(name.to_string(), values);
    }
    Ok(out)
}

fn scalar(y: &yaml_rust2::Yaml) -> Option<String> {
    match y {
        yaml_rust2::Yaml::String(s) | yaml_rust2::Yaml::Real(s) => Some(s.clone()),
        yaml_rust2::Yaml::Integer(i) => Some(i.to_string()),
        yaml_rust2::Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}
