//! Pure trigger decisions (DESIGN.md §6): given what a trigger watch reports ([`WatchedObject`]s)
//! and a Workflow's [`TriggerRecord`], which events fire and what to record. No I/O: the engine in
//! [`super`] feeds it watch events and carries out the fires.
//!
//! Replay safety rests on three rules:
//! - a trigger served for the first time records the objects that already match as a baseline and
//!   fires nothing for them;
//! - afterwards an object fires only when its generation (or resourceVersion, for kinds without a
//!   generation) differs from the recorded one, so a re-list, a restart or a duplicate delivery
//!   fires nothing new;
//! - a recorded object missing from a complete listing was deleted while nobody watched, and
//!   fires `onDelete` once.
//!
//! A Deleted event always carries the recorded version, whichever way the deletion was noticed,
//! so that the Workplan's deterministic name is the same when a crash makes it fire twice.
//!
//! Memory (issue 13: 100,000 matched objects in one director): an object's strings are
//! reference-counted and shared between the watch's state and every record that holds the
//! object: uid, name and resourceVersion are allocated once when the watch reports the object,
//! the kind and namespace once per watch, and identical label sets once per watch. A record
//! loaded from the API server gets its own copies, which the first listing replaces with the
//! watch's ([`on_listed`] and [`on_applied`] swap them in when nothing changed). The record is
//! kept in [`SHARDS`] maps by a hash of the uid, the layout it is saved in, so that saving the
//! shard an event touched reads only that shard.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use shared_types::trigger_record::{SHARDS, shard_of};
use shared_types::{EventKind, RecordedObject, Trigger};

/// One watch: objects of one kind in one namespace (or cluster-wide for cluster-scoped kinds).
/// Discovery resolves the kind to its resource, so a trigger's optional `resource` is not part of
/// the identity: two triggers on one kind share a watch whether or not they name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchKey {
    /// API version, for example `v1` or `apps/v1`.
    pub api_version: Arc<str>,
    /// Kind, for example `ConfigMap`.
    pub kind: Arc<str>,
    /// The namespace watched.
    pub namespace: Option<Arc<str>>,
}

impl WatchKey {
    fn holds(&self, recorded: &Recorded) -> bool {
        // Cluster-scoped objects have no namespace, whatever namespace the trigger defaulted to.
        recorded.api_version == self.api_version
            && recorded.kind == self.kind
            && (recorded.namespace.is_none() || recorded.namespace == self.namespace)
    }
}

/// An object as a trigger watch reports it: metadata only, its strings shared (see the module
/// docs).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct WatchedObject {
    pub uid: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Option<Arc<str>>,
    pub labels: Arc<BTreeMap<String, String>>,
    pub generation: Option<i64>,
    pub resource_version: Option<Arc<str>>,
}

impl WatchedObject {
    fn record(&self, key: &WatchKey) -> Recorded {
        Recorded {
            api_version: key.api_version.clone(),
            kind: key.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            // Kinds with a generation fire on spec changes only; the others on any change.
            generation: self.generation,
            resource_version: if self.generation.is_some() { None } else { self.resource_version.clone() },
        }
    }
}

/// One object of a trigger record in memory: [`RecordedObject`] with shared strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub api_version: Arc<str>,
    pub kind: Arc<str>,
    pub namespace: Option<Arc<str>>,
    pub name: Arc<str>,
    pub generation: Option<i64>,
    pub resource_version: Option<Arc<str>>,
}

impl Recorded {
    /// The saved form.
    pub fn to_saved(&self) -> RecordedObject {
        RecordedObject {
            api_version: self.api_version.to_string(),
            kind: self.kind.to_string(),
            namespace: self.namespace.as_deref().map(str::to_string),
            name: self.name.to_string(),
            generation: self.generation,
            resource_version: self.resource_version.as_deref().map(str::to_string),
        }
    }

    /// From the saved form; `intern` shares the strings many objects have in common.
    pub fn from_saved(saved: RecordedObject, intern: &mut Interner) -> Recorded {
        Recorded {
            api_version: intern.get(&saved.api_version),
            kind: intern.get(&saved.kind),
            namespace: saved.namespace.as_deref().map(|ns| intern.get(ns)),
            name: saved.name.into(),
            generation: saved.generation,
            resource_version: saved.resource_version.map(Into::into),
        }
    }

    fn same_version(&self, other: &Recorded) -> bool {
        self.generation == other.generation && self.resource_version == other.resource_version
    }
}

/// Shares equal strings (kinds, API versions, namespaces) among the objects of a loaded record.
#[derive(Default)]
pub struct Interner(HashSet<Arc<str>>);

impl Interner {
    pub fn get(&mut self, text: &str) -> Arc<str> {
        if let Some(found) = self.0.get(text) {
            return found.clone();
        }
        let new: Arc<str> = text.into();
        self.0.insert(new.clone());
        new
    }
}

/// One trigger of one Workflow, resolved against the Workflow's namespace.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Stable text naming the trigger, recorded once its baseline is taken.
    pub identity: String,
    pub key: WatchKey,
    pub name: Option<String>,
    pub selector: Selector,
    pub on_add_or_update: bool,
    pub on_delete: bool,
}

impl Rule {
    /// Resolves `trigger` of a Workflow in `namespace`. Fails on a selector the API would not take.
    pub fn new(trigger: &Trigger, namespace: &str) -> Result<Rule, String> {
        let label_selector = trigger.selector.clone().unwrap_or_default();
        let selector = Selector::try_from(label_selector.clone()).map_err(|e| e.to_string())?;
        let ns = trigger.namespace.clone().unwrap_or_else(|| namespace.to_string());
        Ok(Rule {
            identity: identity(trigger, &ns, &label_selector),
            key: WatchKey {
                api_version: trigger.api_version.as_str().into(),
                kind: trigger.kind.as_str().into(),
                namespace: Some(ns.into()),
            },
            name: trigger.name.clone(),
            selector,
            on_add_or_update: trigger.on_add_or_update,
            on_delete: trigger.on_delete,
        })
    }

    fn matches(&self, object: &WatchedObject) -> bool {
        self.names(&object.name) && self.selector.matches(&object.labels)
    }

    fn names(&self, name: &str) -> bool {
        self.name.as_deref().is_none_or(|wanted| wanted == name)
    }
}

fn identity(trigger: &Trigger, namespace: &str, selector: &LabelSelector) -> String {
    let selector = Selector::try_from(selector.clone()).map(|s| s.to_string()).unwrap_or_default();
    let name = trigger.name.as_deref().unwrap_or("*");
    format!("{} {} {namespace}/{name} {{{selector}}}", trigger.api_version, trigger.kind)
}

/// One shard of a record: objects by uid.
pub type Shard = BTreeMap<Arc<str>, Recorded>;

/// What the director has recorded for one Workflow's triggers: the objects, kept in the
/// Workflow's TriggerRecord objects (one per non-empty shard), and the baselined triggers, kept
/// in its status (`baselinedTriggers`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TriggerRecord {
    /// Recorded trigger objects by shard, then by uid.
    shards: BTreeMap<u32, Shard>,
    len: usize,
    /// Identities of the triggers whose baseline is taken.
    pub baselined: BTreeSet<String>,
}

impl TriggerRecord {
    pub fn get(&self, uid: &str) -> Option<&Recorded> {
        self.shards.get(&shard_of(uid))?.get(uid)
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.get(uid).is_some()
    }

    /// Records `uid`, returning what was recorded for it before.
    pub fn insert(&mut self, uid: Arc<str>, recorded: Recorded) -> Option<Recorded> {
        let before = self.shards.entry(shard_of(&uid)).or_default().insert(uid, recorded);
        if before.is_none() {
            self.len += 1;
        }
        before
    }

    pub fn remove(&mut self, uid: &str) -> Option<Recorded> {
        let index = shard_of(uid);
        let shard = self.shards.get_mut(&index)?;
        let removed = shard.remove(uid)?;
        if shard.is_empty() {
            self.shards.remove(&index);
        }
        self.len -= 1;
        Some(removed)
    }

    /// How many objects are recorded.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Recorded)> {
        self.shards.values().flatten()
    }

    /// The objects of shard `index` (empty when it holds none).
    pub fn shard(&self, index: u32) -> Option<&Shard> {
        self.shards.get(&index)
    }

    /// The shards that hold objects.
    pub fn shard_indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.shards.keys().copied()
    }

    fn retain(&mut self, mut keep: impl FnMut(&Arc<str>, &Recorded) -> bool) {
        for shard in self.shards.values_mut() {
            shard.retain(|uid, recorded| keep(uid, recorded));
        }
        self.shards.retain(|_, shard| !shard.is_empty());
        self.len = self.shards.values().map(BTreeMap::len).sum();
    }

    /// Where the watch's copy of an unchanged object's strings can replace the record's own
    /// (loaded from the API server), it does, so that each string is kept once.
    fn share(&mut self, object: &WatchedObject) {
        let Some(shard) = self.shards.get_mut(&shard_of(&object.uid)) else { return };
        let Some((uid, recorded)) = shard.get_key_value(&object.uid) else { return };
        if Arc::ptr_eq(uid, &object.uid) {
            return; // shared already
        }
        let mut recorded = recorded.clone();
        if recorded.name == object.name {
            recorded.name = object.name.clone();
        }
        if recorded.resource_version.is_some() && recorded.resource_version == object.resource_version {
            recorded.resource_version = object.resource_version.clone();
        }
        shard.remove(&object.uid);
        shard.insert(object.uid.clone(), recorded);
    }
}

/// Every shard index a record can use.
pub fn all_shards() -> std::ops::Range<u32> {
    0..SHARDS
}

/// An event that starts a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fire {
    pub event: EventKind,
    pub uid: Arc<str>,
    pub object: Recorded,
    /// What the record held for `uid` before this event: what is saved for it until the run's
    /// Workplan exists, so that a restart in between decides this event again.
    pub previous: Option<Recorded>,
}

/// The result of one decision: what fires and what changed in the record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub fires: Vec<Fire>,
    /// Deliveries of a version already recorded.
    pub deduplicated: u64,
    /// Uids recorded or re-recorded.
    pub recorded: Vec<Arc<str>>,
    /// Uids no longer recorded.
    pub removed: Vec<Arc<str>>,
    /// Whether a baseline was taken.
    pub baselined: bool,
}

impl Outcome {
    /// Whether the record changed and must be saved.
    pub fn changed(&self) -> bool {
        self.baselined || !self.recorded.is_empty() || !self.removed.is_empty()
    }
}

/// Forgets triggers the Workflow no longer has, and the objects only they watched.
pub fn retain(rules: &[Rule], record: &mut TriggerRecord) -> Outcome {
    let mut outcome = Outcome::default();
    let identities: HashSet<&str> = rules.iter().map(|r| r.identity.as_str()).collect();
    let before = record.baselined.len();
    record.baselined.retain(|id| identities.contains(id.as_str()));
    outcome.baselined = before != record.baselined.len();
    record.retain(|uid, recorded| {
        let kept = rules.iter().any(|r| r.key.holds(recorded) && r.names(&recorded.name));
        if !kept {
            outcome.removed.push(uid.clone());
        }
        kept
    });
    outcome
}

/// A complete listing of `key`: baselines new triggers, and diffs the others against the record
/// (changes, additions and deletions that happened while nobody watched).
pub fn on_listed(
    rules: &[Rule],
    key: &WatchKey,
    record: &mut TriggerRecord,
    listed: &[WatchedObject],
) -> Outcome {
    let mut outcome = Outcome::default();
    let (baselined, new): (Vec<&Rule>, Vec<&Rule>) =
        rules.iter().filter(|r| r.key == *key).partition(|r| record.baselined.contains(&r.identity));

    if !baselined.is_empty() {
        for object in listed {
            applied(&baselined, key, record, object, &mut outcome);
        }
        let present: HashSet<&str> = listed.iter().map(|o| &*o.uid).collect();
        let vanished: Vec<Arc<str>> = record
            .iter()
            .filter(|(uid, recorded)| key.holds(recorded) && !present.contains(&***uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in vanished {
            let recorded = record.remove(&uid).expect("collected from the record");
            let fires = baselined.iter().any(|r| r.on_delete && r.names(&recorded.name));
            if fires {
                let previous = Some(recorded.clone());
                outcome.fires.push(Fire {
                    event: EventKind::Deleted,
                    uid: uid.clone(),
                    object: recorded,
                    previous,
                });
            }
            outcome.removed.push(uid);
        }
    }

    for rule in new {
        for object in listed.iter().filter(|o| rule.matches(o)) {
            if !record.contains(&object.uid) {
                record.insert(object.uid.clone(), object.record(key));
                outcome.recorded.push(object.uid.clone());
            }
        }
        record.baselined.insert(rule.identity.clone());
        outcome.baselined = true;
    }
    outcome
}

/// An object of `key` was added or changed.
pub fn on_applied(
    rules: &[Rule],
    key: &WatchKey,
    record: &mut TriggerRecord,
    object: &WatchedObject,
) -> Outcome {
    let mut outcome = Outcome::default();
    let baselined: Vec<&Rule> =
        rules.iter().filter(|r| r.key == *key && record.baselined.contains(&r.identity)).collect();
    applied(&baselined, key, record, object, &mut outcome);
    outcome
}

/// An object of `key` was deleted.
pub fn on_deleted(
    rules: &[Rule],
    key: &WatchKey,
    record: &mut TriggerRecord,
    object: &WatchedObject,
) -> Outcome {
    let mut outcome = Outcome::default();
    let Some(recorded) = record.remove(&object.uid) else {
        return outcome; // never matched, or already handled
    };
    let fires = rules.iter().any(|r| {
        r.key == *key && r.on_delete && record.baselined.contains(&r.identity) && r.names(&recorded.name)
    });
    if fires {
        let previous = Some(recorded.clone());
        outcome.fires.push(Fire {
            event: EventKind::Deleted,
            uid: object.uid.clone(),
            object: recorded,
            previous,
        });
    }
    outcome.removed.push(object.uid.clone());
    outcome
}

fn applied(
    rules: &[&Rule],
    key: &WatchKey,
    record: &mut TriggerRecord,
    object: &WatchedObject,
    outcome: &mut Outcome,
) {
    let matching: Vec<&&Rule> = rules.iter().filter(|r| r.matches(object)).collect();
    if matching.is_empty() {
        // Out of the triggers' scope (say its labels changed): forget it, fire nothing.
        if record.remove(&object.uid).is_some() {
            outcome.removed.push(object.uid.clone());
        }
        return;
    }
    let recorded = object.record(key);
    let previous = record.get(&object.uid).cloned();
    let event = match &previous {
        Some(previous) if previous.same_version(&recorded) => {
            outcome.deduplicated += 1;
            record.share(object);
            return;
        }
        Some(_) => EventKind::Updated,
        None => EventKind::Added,
    };
    record.insert(object.uid.clone(), recorded.clone());
    outcome.recorded.push(object.uid.clone());
    if matching.iter().any(|r| r.on_add_or_update) {
        outcome.fires.push(Fire { event, uid: object.uid.clone(), object: recorded, previous });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn trigger(
        name: Option<&str>,
        labels: &[(&str, &str)],
        on_add_or_update: bool,
        on_delete: bool,
    ) -> Trigger {
        Trigger {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            resource: Some("configmaps".into()),
            namespace: None,
            name: name.map(Into::into),
            selector: Some(LabelSelector {
                match_labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                match_expressions: None,
            }),
            on_add_or_update,
            on_delete,
        }
    }

    fn rules(triggers: &[Trigger]) -> Vec<Rule> {
        triggers.iter().map(|t| Rule::new(t, "ns").unwrap()).collect()
    }

    fn cm(uid: &str, name: &str, rv: &str, labels: &[(&str, &str)]) -> WatchedObject {
        WatchedObject {
            uid: uid.into(),
            name: name.into(),
            namespace: Some("ns".into()),
            labels: Arc::new(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            generation: None,
            resource_version: Some(rv.into()),
        }
    }

    fn fired(outcome: &Outcome) -> Vec<(EventKind, String, String)> {
        outcome
            .fires
            .iter()
            .map(|f| {
                let version = f
                    .object
                    .resource_version
                    .as_deref()
                    .map(str::to_string)
                    .or(f.object.generation.map(|g| format!("g{g}")))
                    .unwrap_or_default();
                (f.event, f.object.name.to_string(), version)
            })
            .collect()
    }

    fn key() -> WatchKey {
        rules(&[trigger(None, &[], true, true)])[0].key.clone()
    }

    /// A Workflow whose trigger has taken its baseline over `existing`.
    fn baselined(rules: &[Rule], existing: &[WatchedObject]) -> TriggerRecord {
        let mut record = TriggerRecord::default();
        let outcome = on_listed(rules, &key(), &mut record, existing);
        assert!(outcome.fires.is_empty(), "a baseline fires nothing: {outcome:?}");
        record
    }

    #[test]
    fn existing_objects_are_a_baseline() {
        let rules = rules(&[trigger(Some("my-config"), &[], true, true)]);
        let mut record = TriggerRecord::default();
        let outcome = on_listed(
            &rules,
            &key(),
            &mut record,
            &[cm("u1", "my-config", "10", &[]), cm("u2", "other", "11", &[])],
        );
        assert_eq!(fired(&outcome), vec![]);
        assert!(outcome.baselined);
        assert_eq!(outcome.recorded, vec![Arc::<str>::from("u1")]);
        assert_eq!(record.get("u1").unwrap().resource_version.as_deref(), Some("10"));
        assert_eq!(record.baselined.len(), 1);
    }

    #[test]
    fn each_new_version_fires_once() {
        let rules = rules(&[trigger(Some("my-config"), &[], true, true)]);
        let mut record = baselined(&rules, &[cm("u1", "my-config", "10", &[])]);
        let update = cm("u1", "my-config", "12", &[]);
        let first = on_applied(&rules, &key(), &mut record, &update);
        assert_eq!(fired(&first), vec![(EventKind::Updated, "my-config".into(), "12".into())]);
        let previous = first.fires[0].previous.as_ref().and_then(|p| p.resource_version.as_deref());
        assert_eq!(previous, Some("10"), "what is saved until the run exists");
        let replay = on_applied(&rules, &key(), &mut record, &update);
        assert_eq!((fired(&replay), replay.deduplicated, replay.changed()), (vec![], 1, false));
    }

    #[test]
    fn new_objects_fire_added() {
        let rules = rules(&[trigger(None, &[("app", "web")], true, false)]);
        let mut record = baselined(&rules, &[]);
        let outcome = on_applied(&rules, &key(), &mut record, &cm("u9", "web-2", "30", &[("app", "web")]));
        assert_eq!(fired(&outcome), vec![(EventKind::Added, "web-2".into(), "30".into())]);
    }

    #[test]
    fn non_matching_objects_are_ignored() {
        let rules = rules(&[trigger(Some("my-config"), &[("app", "web")], true, true)]);
        let mut record = baselined(&rules, &[]);
        for object in
            [cm("a", "other-name", "1", &[("app", "web")]), cm("b", "my-config", "1", &[("app", "db")])]
        {
            let outcome = on_applied(&rules, &key(), &mut record, &object);
            assert_eq!((fired(&outcome), outcome.changed()), (vec![], false));
        }
        let other_namespace = WatchKey { namespace: Some("elsewhere".into()), ..key() };
        let outcome =
            on_applied(&rules, &other_namespace, &mut record, &cm("c", "my-config", "1", &[("app", "web")]));
        assert_eq!((fired(&outcome), outcome.changed()), (vec![], false));
    }

    #[test]
    fn relists_fire_only_what_changed_while_away() {
        let rules = rules(&[trigger(None, &[], true, true)]);
        let mut record = baselined(
            &rules,
            &[cm("same", "same", "1", &[]), cm("changed", "changed", "2", &[]), cm("gone", "gone", "3", &[])],
        );
        let relist =
            [cm("same", "same", "1", &[]), cm("changed", "changed", "5", &[]), cm("new", "new", "6", &[])];
        let outcome = on_listed(&rules, &key(), &mut record, &relist);
        assert_eq!(
            fired(&outcome),
            vec![
                (EventKind::Updated, "changed".into(), "5".into()),
                (EventKind::Added, "new".into(), "6".into()),
                (EventKind::Deleted, "gone".into(), "3".into()),
            ]
        );
        assert_eq!(outcome.deduplicated, 1);
        let again = on_listed(&rules, &key(), &mut record, &relist);
        assert_eq!((fired(&again), again.changed()), (vec![], false), "a second re-list fires nothing");
    }

    #[test]
    fn deletions_fire_once_with_the_recorded_version() {
        let rules = rules(&[trigger(None, &[], true, true)]);
        let mut record = baselined(&rules, &[cm("u1", "cfg", "7", &[])]);
        let final_state = cm("u1", "cfg", "8", &[]);
        let outcome = on_deleted(&rules, &key(), &mut record, &final_state);
        assert_eq!(fired(&outcome), vec![(EventKind::Deleted, "cfg".into(), "7".into())]);
        assert_eq!(
            outcome.fires[0].previous.as_ref(),
            Some(&outcome.fires[0].object),
            "kept until the run exists"
        );
        assert_eq!(fired(&on_deleted(&rules, &key(), &mut record, &final_state)), vec![]);
    }

    #[test]
    fn event_flags_are_honoured_but_objects_are_still_recorded() {
        let only_delete = rules(&[trigger(None, &[], false, true)]);
        let mut record = baselined(&only_delete, &[]);
        let outcome = on_applied(&only_delete, &key(), &mut record, &cm("u1", "cfg", "1", &[]));
        assert_eq!((fired(&outcome), outcome.recorded.clone()), (vec![], vec![Arc::<str>::from("u1")]));
        assert_eq!(
            fired(&on_deleted(&only_delete, &key(), &mut record, &cm("u1", "cfg", "2", &[]))).len(),
            1
        );

        let only_update = rules(&[trigger(None, &[], true, false)]);
        let mut record = baselined(&only_update, &[cm("u1", "cfg", "1", &[])]);
        let outcome = on_deleted(&only_update, &key(), &mut record, &cm("u1", "cfg", "2", &[]));
        assert_eq!((fired(&outcome), outcome.removed.clone()), (vec![], vec![Arc::<str>::from("u1")]));
    }

    #[test]
    fn kinds_with_a_generation_fire_on_spec_changes_only() {
        let rules = rules(&[trigger(None, &[], true, true)]);
        let deployment = |rv: &str, generation: i64| WatchedObject {
            generation: Some(generation),
            ..cm("d", "web", rv, &[])
        };
        let mut record = baselined(&rules, &[deployment("1", 1)]);
        let status_only = on_applied(&rules, &key(), &mut record, &deployment("2", 1));
        assert_eq!((fired(&status_only), status_only.deduplicated), (vec![], 1));
        let spec_change = on_applied(&rules, &key(), &mut record, &deployment("3", 2));
        assert_eq!(fired(&spec_change), vec![(EventKind::Updated, "web".into(), "g2".into())]);
    }

    #[test]
    fn leaving_the_selector_forgets_without_firing() {
        let rules = rules(&[trigger(None, &[("app", "web")], true, true)]);
        let mut record = baselined(&rules, &[cm("u1", "cfg", "1", &[("app", "web")])]);
        let outcome = on_applied(&rules, &key(), &mut record, &cm("u1", "cfg", "2", &[("app", "db")]));
        assert_eq!((fired(&outcome), outcome.removed.clone()), (vec![], vec![Arc::<str>::from("u1")]));
    }

    #[test]
    fn two_triggers_on_one_object_fire_once() {
        let rules =
            rules(&[trigger(Some("cfg"), &[], true, true), trigger(None, &[("app", "web")], true, true)]);
        let mut record = baselined(&rules, &[]);
        let outcome = on_applied(&rules, &key(), &mut record, &cm("u1", "cfg", "1", &[("app", "web")]));
        assert_eq!(fired(&outcome).len(), 1);
    }

    #[test]
    fn a_trigger_added_later_takes_its_own_baseline() {
        let first = rules(&[trigger(Some("a"), &[], true, true)]);
        let mut record = baselined(&first, &[cm("ua", "a", "1", &[]), cm("ub", "b", "1", &[])]);
        let both = rules(&[trigger(Some("a"), &[], true, true), trigger(Some("b"), &[], true, true)]);
        assert!(!retain(&both, &mut record).changed());
        let outcome =
            on_listed(&both, &key(), &mut record, &[cm("ua", "a", "1", &[]), cm("ub", "b", "1", &[])]);
        assert_eq!(fired(&outcome), vec![], "b already existed when its trigger appeared");
        assert!(record.contains("ub"));
        let update = on_applied(&both, &key(), &mut record, &cm("ub", "b", "2", &[]));
        assert_eq!(fired(&update), vec![(EventKind::Updated, "b".into(), "2".into())]);
    }

    #[test]
    fn the_record_is_kept_in_the_shards_it_is_saved_in() {
        let mut record = TriggerRecord::default();
        let uids: Vec<String> = (0..50).map(|i| format!("uid-{i}")).collect();
        for uid in &uids {
            record.insert(uid.as_str().into(), cm(uid, uid, "1", &[]).record(&key()));
        }
        assert_eq!(record.len(), 50);
        for uid in &uids {
            assert!(record.shard(shard_of(uid)).is_some_and(|shard| shard.contains_key(uid.as_str())));
        }
        assert_eq!(record.iter().count(), 50);
        let lonely = uids.iter().find(|u| uids.iter().filter(|o| shard_of(o) == shard_of(u)).count() == 1);
        if let Some(lonely) = lonely {
            record.remove(lonely);
            assert!(record.shard(shard_of(lonely)).is_none(), "an emptied shard goes");
        }
    }

    #[test]
    fn a_loaded_record_shares_the_watchs_strings_once_listed() {
        let rules = rules(&[trigger(None, &[], true, true)]);
        let mut record = baselined(&rules, &[]);
        // As loaded from the API server: strings of its own.
        let mut intern = Interner::default();
        let saved = cm("u1", "cfg", "7", &[]).record(&key()).to_saved();
        record.insert(Arc::from("u1"), Recorded::from_saved(saved, &mut intern));
        let listed = cm("u1", "cfg", "7", &[]);
        let outcome = on_listed(&rules, &key(), &mut record, std::slice::from_ref(&listed));
        assert_eq!((fired(&outcome), outcome.deduplicated), (vec![], 1));
        let shard = record.shard(shard_of("u1")).unwrap();
        let (uid, recorded) = shard.get_key_value("u1").unwrap();
        assert!(Arc::ptr_eq(uid, &listed.uid), "one uid string");
        assert!(Arc::ptr_eq(&recorded.name, &listed.name), "one name string");
        assert!(
            Arc::ptr_eq(
                recorded.resource_version.as_ref().unwrap(),
                listed.resource_version.as_ref().unwrap()
            ),
            "one resourceVersion string"
        );
    }

    #[test]
    fn removed_triggers_are_forgotten() {
        let rules_ab = rules(&[trigger(Some("a"), &[], true, true), trigger(Some("b"), &[], true, true)]);
        let mut record = baselined(&rules_ab, &[cm("ua", "a", "1", &[]), cm("ub", "b", "1", &[])]);
        let only_a = rules(&[trigger(Some("a"), &[], true, true)]);
        let outcome = retain(&only_a, &mut record);
        assert_eq!(outcome.removed, vec![Arc::<str>::from("ub")]);
        assert_eq!(record.baselined.len(), 1);
        // Nothing fires for b's deletion now.
        assert_eq!(fired(&on_deleted(&only_a, &key(), &mut record, &cm("ub", "b", "2", &[]))), vec![]);
    }
}
