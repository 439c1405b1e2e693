//! Where the trigger engine keeps each Workflow's trigger record (issue 13, failure 4).
//!
//! Before, the whole record (every matched object's uid, name and version) lived in the
//! Workflow's status and was applied whole after every batch of events: each save cost
//! O(matches), and at about 11,000 matched objects the Workflow passed the API server's object
//! limit (1.5 MiB) and every later save failed. Now:
//!
//! - The per-object part lives in `TriggerRecord` objects (kind of kubeci, namespaced), one per
//!   non-empty shard of [`SHARDS`], an object's shard chosen by a stable hash of its uid. Each is
//!   owned by its Workflow (deleted with it), written only by the director with the manager
//!   [`FIELD_MANAGER`] by server-side apply, whole (its `objects` map is atomic: one field for
//!   the manager to own, not one per uid). An event rewrites the one shard its object is in: at
//!   100,000 matched objects about 390 objects, 66 KB; a shard reaches the object limit only
//!   beyond 2 million matched objects.
//! - The Workflow's status keeps what is small whatever the matches: `baselinedTriggers` (one
//!   line per trigger) and the summary `triggerRecord` (objects and shards), applied after the
//!   shards it counts, by the same manager, together with `pendingRuns`.
//!
//! Why per-object versions rather than a per-trigger resourceVersion watermark (comparable
//! since Kubernetes 1.35, KEP-5504): deletions while the director is down need every object's
//! uid and name anyway (`onDelete` fires with the name), so a watermark saves only the version,
//! a few bytes an object; it would not work for kinds with a generation (they fire on
//! generation changes only); and the record of an object with a pending run must stay at what it
//! was before the run ([`super::triggers::pending`]), which a single watermark can only express
//! by holding back every object behind the oldest pending run.
//!
//! Crash safety: the shards are saved before the status, and the status only once every shard
//! was saved, so a baseline the status announces is always in the shards. A shard save that
//! fails leaves the shard marked and is retried with the next save.
//!
//! Migration: a Workflow whose status still holds the old `lastObservedResourceGeneration` and no
//! `triggerRecord` summary was last served by an older director. Its old map is merged into the
//! record read from the shards (a shard's entry wins; none exist unless an earlier migration
//! was interrupted), every shard is saved, and the status apply that writes the summary leaves
//! the old map out, which removes it (the manager owned it). Nothing fires: the record is the
//! same record. Once the summary exists the old map is ignored.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use shared_types::trigger_record::{SHARDS, shard_name};
use shared_types::workflow::{PendingRuns, TriggerRecordSummary};
use shared_types::{TriggerRecord as RecordShard, Workflow, labels};

use crate::triggers::decide::{Interner, Recorded, Shard, TriggerRecord};

pub use shared_types::trigger_record::shard_of;

/// The field manager of the trigger record (its TriggerRecord objects, and in the Workflow's
/// status `baselinedTriggers`, `triggerRecord` and `pendingRuns`).
pub const FIELD_MANAGER: &str = "kubeci-director-triggers";

/// Shards saved at once: a baseline over 100,000 objects writes every shard.
const CONCURRENT_SAVES: usize = 8;

/// Shards listed per page when a record is loaded (at 100,000 objects about 66 KB each).
const PAGE: u32 = 16;

/// What the Workflow's status shows of its trigger record and pending runs: compared with what
/// was last saved, so that an unchanged status is not written again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordStatus {
    pub baselined: Vec<String>,
    pub summary: TriggerRecordSummary,
    pub pending: Option<PendingRuns>,
}

/// A record as loaded.
pub struct Loaded {
    pub record: TriggerRecord,
    /// Objects per saved shard.
    pub counts: BTreeMap<u32, usize>,
    /// Taken over from the old status form: every shard is to be saved.
    pub migrated: bool,
}

/// Loads and saves Workflows' trigger records. The engine loads a Workflow's record once, when
/// it first serves it, and saves it after changes; nothing else reads or writes it.
#[derive(Clone)]
pub struct Records {
    client: Client,
}

impl Records {
    pub fn new(client: Client) -> Records {
        Records { client }
    }

    fn shards(&self, workflow: &Workflow) -> Api<RecordShard> {
        Api::namespaced(self.client.clone(), &workflow.namespace().unwrap_or_default())
    }

    /// The record of `workflow` as last saved, migrated from the old status form if that is
    /// what it has.
    pub async fn load(&self, workflow: &Workflow) -> kube::Result<Loaded> {
        let api = self.shards(workflow);
        let uid = workflow.uid().unwrap_or_default();
        let mut params = ListParams::default()
            .labels(&format!("{}={}", labels::WORKFLOW, workflow.name_any()))
            .limit(PAGE);
        let mut record = TriggerRecord::default();
        let mut counts = BTreeMap::new();
        let mut intern = Interner::default();
        loop {
            let page = api.list(&params).await?;
            for shard in page.items {
                // An earlier Workflow of the same name whose records are not collected yet.
                if !shard.owner_references().iter().any(|owner| owner.uid == uid) {
                    continue;
                }
                let Ok(index) = u32::try_from(shard.spec.shard) else { continue };
                let mut held = 0;
                for (uid, saved) in shard.spec.objects {
                    // Only the shard the uid hashes to is read for it again.
                    if shard_of(&uid) == index {
                        record.insert(uid.into(), Recorded::from_saved(saved, &mut intern));
                        held += 1;
                    }
                }
                counts.insert(index, held);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        let status = workflow.status.as_ref();
        let old = status.filter(|s| s.trigger_record.is_none()).map(|s| &s.last_observed_resource_generation);
        let migrated = old.is_some_and(|old| !old.is_empty());
        for (uid, saved) in old.into_iter().flatten() {
            if !record.contains(uid) {
                record.insert(uid.as_str().into(), Recorded::from_saved(saved.clone(), &mut intern));
            }
        }
        record.baselined = status.map(|s| s.baselined_triggers.iter().cloned().collect()).unwrap_or_default();
        Ok(Loaded { record, counts, migrated })
    }

    /// Saves `shards` of `workflow`'s record (an empty shard is deleted), then, once they are
    /// all saved, its status if `status` is given.
    pub async fn save(
        &self,
        workflow: &Workflow,
        shards: Vec<(u32, Shard)>,
        status: Option<&RecordStatus>,
    ) -> kube::Result<()> {
        let api = self.shards(workflow);
        futures::stream::iter(shards)
            .map(|(index, objects)| {
                let api = api.clone();
                async move {
                    let name = shard_name(&workflow.name_any(), &workflow.uid().unwrap_or_default(), index);
                    if objects.is_empty() {
                        return match api.delete(&name, &DeleteParams::default()).await {
                            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                            other => other.map(|_| ()),
                        };
                    }
                    let params = PatchParams::apply(FIELD_MANAGER).force();
                    api.patch(&name, &params, &Patch::Apply(shard_apply(workflow, index, &objects)))
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(CONCURRENT_SAVES)
            .try_collect::<()>()
            .await?;
        let Some(status) = status else { return Ok(()) };
        let api: Api<Workflow> =
            Api::namespaced(self.client.clone(), &workflow.namespace().unwrap_or_default());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch_status(&workflow.name_any(), &params, &Patch::Apply(status_apply(workflow, status)))
            .await
            .map(|_| ())
    }
}

/// The server-side apply of one shard: the whole object.
pub fn shard_apply(workflow: &Workflow, index: u32, objects: &Shard) -> serde_json::Value {
    debug_assert!(index < SHARDS);
    let saved: BTreeMap<&str, shared_types::RecordedObject> =
        objects.iter().map(|(uid, recorded)| (&**uid, recorded.to_saved())).collect();
    let owner = workflow.controller_owner_ref(&()).map(|mut owner| {
        // Blocking the Workflow's deletion would need the right to set its finalizers.
        owner.block_owner_deletion = None;
        owner
    });
    serde_json::json!({
        "apiVersion": RecordShard::api_version(&()),
        "kind": RecordShard::kind(&()),
        "metadata": {
            "name": shard_name(&workflow.name_any(), &workflow.uid().unwrap_or_default(), index),
            "labels": { labels::WORKFLOW: workflow.name_any() },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "spec": {
            "workflow": workflow.name_any(),
            "shard": index,
            "count": objects.len(),
            "objects": saved,
        },
    })
}

/// The server-side apply of the status fields the manager owns. Whole, because an apply removes
/// the fields its manager owned before and leaves out: `pendingRuns` goes once nothing is
/// pending, and the old `lastObservedResourceGeneration` goes with the first apply.
pub fn status_apply(workflow: &Workflow, status: &RecordStatus) -> serde_json::Value {
    let mut fields = serde_json::json!({
        "baselinedTriggers": status.baselined,
        "triggerRecord": status.summary,
    });
    if let Some(pending) = &status.pending {
        fields["pendingRuns"] = serde_json::to_value(pending).expect("serializes");
    }
    serde_json::json!({
        "apiVersion": Workflow::api_version(&()),
        "kind": Workflow::kind(&()),
        "metadata": { "name": workflow.name_any() },
        "status": fields,
    })
}

/// The summary of a record saved in shards of these sizes.
pub fn summary(counts: &BTreeMap<u32, usize>) -> TriggerRecordSummary {
    TriggerRecordSummary {
        objects: counts.values().sum::<usize>() as i64,
        shards: counts.values().filter(|n| **n > 0).count() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn workflow() -> Workflow {
        let mut workflow: Workflow = serde_yaml::from_str(shared_types::repo::SEED_WORKFLOW).unwrap();
        workflow.status = None;
        workflow.metadata.uid = Some("0f1e2d3c-aaaa-bbbb-cccc-000000000001".into());
        workflow
    }

    fn recorded(rv: &str) -> Recorded {
        Recorded {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("ns".into()),
            name: "my-config".into(),
            generation: None,
            resource_version: Some(rv.into()),
        }
    }

    #[test]
    fn a_shard_is_applied_whole_and_owned_by_its_workflow() {
        let objects: Shard = BTreeMap::from([(Arc::from("u1"), recorded("7"))]);
        let apply = shard_apply(&workflow(), 3, &objects);
        assert_eq!(
            apply,
            serde_json::json!({
                "apiVersion": "kube.ci/v1alpha1",
                "kind": "TriggerRecord",
                "metadata": {
                    "name": "my-workflow-0f1e2d3c-03",
                    "labels": {"kube.ci/workflow": "my-workflow"},
                    "ownerReferences": [{
                        "apiVersion": "kube.ci/v1alpha1",
                        "kind": "Workflow",
                        "name": "my-workflow",
                        "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001",
                        "controller": true,
                    }],
                },
                "spec": {
                    "workflow": "my-workflow",
                    "shard": 3,
                    "count": 1,
                    "objects": {
                        "u1": {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "ns", "name": "my-config", "resourceVersion": "7"}
                    },
                },
            })
        );
    }

    #[test]
    fn the_status_holds_only_the_summary() {
        let status = RecordStatus {
            baselined: vec!["v1 ConfigMap ns/my-config {}".into()],
            summary: summary(&BTreeMap::from([(3, 2), (9, 1)])),
            pending: None,
        };
        let apply = status_apply(&workflow(), &status);
        assert_eq!(
            apply["status"],
            serde_json::json!({
                "baselinedTriggers": ["v1 ConfigMap ns/my-config {}"],
                "triggerRecord": {"objects": 3, "shards": 2},
            })
        );
        // Pending runs are shown beside the record.
        let pending = PendingRuns { count: 2, reason: Some("CreateFailed".into()), ..PendingRuns::default() };
        let apply = status_apply(&workflow(), &RecordStatus { pending: Some(pending), ..status });
        assert_eq!(apply["status"]["pendingRuns"], serde_json::json!({"count": 2, "reason": "CreateFailed"}));
    }
}
