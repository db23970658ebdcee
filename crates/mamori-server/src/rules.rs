//! The detection rules the server runs, and their management through the API.
//!
//! The base rules come from files (the installed SigmaHQ corpus and Mamori's own rules);
//! custom rules are Sigma YAML kept in the state database. Adding a custom rule compiles
//! the whole set with it first: a rule that does not parse or compile (or whose id is
//! taken) is refused with the reason and never reaches detection; otherwise the new set
//! replaces the running one between two batches. Disabling a rule (base or custom) stops
//! its alerts at once, without recompiling; a disabled rule still feeds the correlations
//! that use it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use mamori_sigma::{CompileOptions, RuleSet};
use serde::Serialize;

use crate::ServerError;
use crate::state::State;

/// Where the base rules come from.
#[derive(Debug, Clone, Default)]
pub struct RuleSource {
    /// Rule files and directories.
    pub paths: Vec<PathBuf>,
    /// Rules held in memory: (name, YAML).
    pub texts: Vec<(String, String)>,
    /// Compile options.
    pub options: CompileOptions,
}

/// A rule as listed by the API.
#[derive(Debug, Clone, Serialize)]
pub struct RuleRow {
    /// Sigma id (the title when the rule has none).
    pub id: String,
    /// Title.
    pub title: String,
    /// Level.
    pub level: String,
    /// ATT&CK and other tags.
    pub tags: Vec<String>,
    /// `detection` or `correlation`.
    pub kind: &'static str,
    /// Whether it raises alerts.
    pub enabled: bool,
    /// Added through the API.
    pub custom: bool,
}

/// What compiling the base rules produced, for the start-up report.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Rules compiled.
    pub loaded: usize,
    /// Documents refused: (file, reason).
    pub refused: Vec<(String, String)>,
}

/// The running rules.
pub struct Rules {
    source: RuleSource,
    current: RwLock<Arc<RuleSet>>,
    disabled: Arc<RwLock<HashSet<String>>>,
    custom: RwLock<HashSet<String>>,
    /// One rebuild at a time.
    building: Mutex<()>,
}

const CUSTOM_PREFIX: &str = "custom:";

/// Largest custom rule accepted.
pub const MAX_RULE_BYTES: usize = 256 << 10;

/// A rule's id as alerts and the API use it.
pub fn rule_id(meta: &mamori_sigma::ast::RuleMeta) -> &str {
    meta.id.as_deref().unwrap_or(&meta.title)
}

fn build(
    source: &RuleSource,
    custom: &[(String, String)],
) -> Result<mamori_sigma::load::Loaded, ServerError> {
    let mut texts: Vec<(String, &str)> = source
        .texts
        .iter()
        .map(|(n, t)| (n.clone(), t.as_str()))
        .collect();
    texts.extend(
        custom
            .iter()
            .map(|(id, yaml)| (format!("{CUSTOM_PREFIX}{id}"), yaml.as_str())),
    );
    let refs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    mamori_sigma::load::load(&source.paths, &refs, source.options.clone())
        .map_err(|e| ServerError::Invalid(format!("loading rules: {e}")))
}

impl Rules {
    /// Compiles the base rules with the custom rules stored in `state`.
    pub fn load(source: RuleSource, state: &State) -> Result<(Rules, LoadReport), ServerError> {
        let custom = state.custom_rules()?;
        let loaded = build(&source, &custom)?;
        let report = LoadReport {
            loaded: loaded.rules.rules().len(),
            refused: loaded
                .report
                .iter()
                .filter_map(|o| {
                    let e = o.error.as_ref()?;
                    Some((o.path.display().to_string(), e.to_string()))
                })
                .collect(),
        };
        let rules = Rules {
            source,
            current: RwLock::new(Arc::new(loaded.rules)),
            disabled: Arc::new(RwLock::new(state.disabled_rules()?.into_iter().collect())),
            custom: RwLock::new(custom.into_iter().map(|(id, _)| id).collect()),
            building: Mutex::new(()),
        };
        Ok((rules, report))
    }

    /// The running rule set.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The disabled rule ids (shared with the detection thread).
    pub fn disabled(&self) -> Arc<RwLock<HashSet<String>>> {
        self.disabled.clone()
    }

    /// Every rule, with whether it is enabled and whether it is custom.
    pub fn list(&self) -> Vec<RuleRow> {
        let set = self.current();
        let disabled = self.disabled.read().map(|d| d.clone()).unwrap_or_default();
        let custom = self.custom.read().map(|c| c.clone()).unwrap_or_default();
        set.rules()
            .iter()
            .map(|info| {
                let id = rule_id(&info.meta).to_string();
                RuleRow {
                    title: info.meta.title.clone(),
                    level: info.meta.level.as_str().to_string(),
                    tags: info.meta.tags.clone(),
                    kind: match info.kind {
                        mamori_sigma::RuleKind::Detection => "detection",
                        _ => "correlation",
                    },
                    enabled: !disabled.contains(&id),
                    custom: custom.contains(&id),
                    id,
                }
            })
            .collect()
    }

    /// Validates and adds a custom rule (one Sigma document, or a correlation with the rules
    /// it uses); returns the ids added and the new set for detection. Refusals are
    /// [`ServerError::Invalid`] with the reason.
    pub fn add_custom(
        &self,
        state: &State,
        actor: &str,
        yaml: &str,
    ) -> Result<(Vec<String>, Arc<RuleSet>), ServerError> {
        let _one = self.building.lock().unwrap_or_else(|p| p.into_inner());
        if yaml.len() > MAX_RULE_BYTES {
            return Err(ServerError::Invalid(
                "the rule is larger than 256 KiB".into(),
            ));
        }
        let docs = mamori_sigma::parse::parse_documents(yaml);
        if docs.is_empty() {
            return Err(ServerError::Invalid("no rule in the body".into()));
        }
        let mut ids = Vec::new();
        for d in &docs {
            let doc = d
                .as_ref()
                .map_err(|e| ServerError::Invalid(format!("the rule does not parse: {e}")))?;
            let Some(id) = doc.meta().id.clone() else {
                return Err(ServerError::Invalid(format!(
                    "rule {:?}: a custom rule needs an `id` (a UUID) to be managed by",
                    doc.meta().title
                )));
            };
            if id.len() > 128 || id.chars().any(|c| c.is_control() || c == '/') {
                return Err(ServerError::Invalid(format!(
                    "rule id {id:?}: at most 128 printable characters, no '/'"
                )));
            }
            ids.push(id);
        }
        let current = self.current();
        let taken: HashSet<&str> = current.rules().iter().map(|i| rule_id(&i.meta)).collect();
        if let Some(id) = ids.iter().find(|id| taken.contains(id.as_str())) {
            return Err(ServerError::Invalid(format!(
                "a rule with id {id} is already loaded (disable it, or give the new rule its own id)"
            )));
        }
        // The whole set with the new rule: it must compile there, as it will run.
        let mut custom = state.custom_rules()?;
        let key = ids.join(",");
        custom.push((key.clone(), yaml.to_string()));
        let loaded = build(&self.source, &custom)?;
        let name = format!("{CUSTOM_PREFIX}{key}");
        if let Some(bad) = loaded
            .report
            .iter()
            .find(|o| o.error.is_some() && o.path.to_string_lossy() == name)
        {
            return Err(ServerError::Invalid(format!(
                "rule {}: {}",
                bad.title.as_deref().unwrap_or("?"),
                bad.error
                    .as_ref()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            )));
        }
        let title = docs
            .iter()
            .flatten()
            .map(|d| d.meta().title.clone())
            .collect::<Vec<_>>()
            .join(" + ");
        state.add_custom_rule(actor, &key, &title, yaml)?;
        let set = Arc::new(loaded.rules);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = set.clone();
        if let Ok(mut c) = self.custom.write() {
            c.extend(ids.iter().cloned());
        }
        Ok((ids, set))
    }

    /// Deletes a custom rule; returns the new set for detection, or `None` if there is no
    /// custom rule with this id.
    pub fn delete_custom(
        &self,
        state: &State,
        actor: &str,
        id: &str,
    ) -> Result<Option<Arc<RuleSet>>, ServerError> {
        let _one = self.building.lock().unwrap_or_else(|p| p.into_inner());
        let custom = state.custom_rules()?;
        let Some((key, _)) = custom
            .iter()
            .find(|(k, _)| k.split(',').any(|k| k == id))
            .cloned()
        else {
            return Ok(None);
        };
        let rest: Vec<(String, String)> = custom.into_iter().filter(|(k, _)| *k != key).collect();
        let loaded = build(&self.source, &rest)?;
        state.delete_custom_rule(actor, &key)?;
        let set = Arc::new(loaded.rules);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = set.clone();
        if let Ok(mut c) = self.custom.write() {
            for k in key.split(',') {
                c.remove(k);
            }
        }
        Ok(Some(set))
    }

    /// Enables or disables a loaded rule; false if no rule has this id.
    pub fn set_enabled(
        &self,
        state: &State,
        actor: &str,
        id: &str,
        enabled: bool,
        reason: &str,
    ) -> Result<bool, ServerError> {
        let known = self
            .current()
            .rules()
            .iter()
            .any(|i| rule_id(&i.meta) == id);
        if !known {
            return Ok(false);
        }
        state.set_rule_enabled(actor, id, enabled, reason)?;
        let mut d = self.disabled.write().unwrap_or_else(|p| p.into_inner());
        if enabled {
            d.remove(id);
        } else {
            d.insert(id.to_string());
        }
        Ok(true)
    }
}
