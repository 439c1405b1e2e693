//! The `TriggerRecord` custom resource: one shard of a Workflow's trigger record, kept by the
//! director out of the Workflow so that the Workflow stays small whatever its triggers match.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::workflow::RecordedObject;

/// Shards per Workflow: a trigger object's record lives in shard `fnv1a64(uid) % SHARDS`. With
/// about 170 bytes per object, a shard holds about 66 KB at 100,000 matched objects, and reaches
/// the API server's 1.5 MiB object limit only beyond 2 million.
pub const SHARDS: u32 = 256;

/// The shard of a trigger object's uid: FNV-1a, which (unlike std's hasher) is the same in every
/// build, so a record saved by one director is found by the next.
pub fn shard_of(uid: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uid.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(SHARDS)) as u32
}

/// The name of shard `shard` of the Workflow `workflow` with uid `workflow_uid`: the uid's first
/// 8 characters tell a Workflow apart from an earlier one of the same name whose records the
/// garbage collector has not deleted yet.
pub fn shard_name(workflow: &str, workflow_uid: &str, shard: u32) -> String {
    let uid: String = workflow_uid.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    format!("{workflow}-{uid}-{shard:02x}")
}

/// One shard of a Workflow's trigger record, written only by the director (field manager
/// `kubeci-director-triggers`) and owned by the Workflow, so it is deleted with it. Together the
/// shards hold every trigger object the Workflow's triggers matched, by uid, with the version
/// last acted on: an object fires only when its version differs, and a recorded object missing
/// from a complete listing was deleted while the director was away and fires `onDelete` once.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "kube.ci",
    version = "v1alpha1",
    kind = "TriggerRecord",
    namespaced,
    derive = "PartialEq",
    shortname = "ktr",
    category = "kubeci",
    doc = "One shard of a Workflow's trigger record: the trigger objects it matched, by uid, with the version the director last acted on. Written only by the director; deleted with its Workflow.",
    printcolumn(
        name = "Workflow",
        type_ = "string",
        json_path = ".spec.workflow",
        description = "The Workflow whose record this is"
    ),
    printcolumn(
        name = "Shard",
        type_ = "integer",
        json_path = ".spec.shard",
        description = "Which shard of the record (by a hash of the object's uid)"
    ),
    printcolumn(
        name = "Objects",
        type_ = "integer",
        json_path = ".spec.count",
        description = "Trigger objects in this shard"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRecordSpec {
    /// The Workflow (in this namespace) whose record this is.
    pub workflow: String,

    /// Which shard of the record this is: it holds the objects whose uid hashes to it.
    pub shard: i32,

    /// How many objects this shard holds (the size of `objects`).
    pub count: i32,

    /// The recorded trigger objects by uid: which object, and its generation (or its
    /// resourceVersion for kinds without a generation). Written whole by the director.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-map-type" = "atomic"))]
    pub objects: BTreeMap<String, RecordedObject>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Pinned: a different hash would make a new director look in the wrong shard.
        assert_eq!(
            shard_of("0b0f7c2e-7a2f-4d1b-9a51-5f0c0d8e1a11"),
            shard_of("0b0f7c2e-7a2f-4d1b-9a51-5f0c0d8e1a11")
        );
        assert_eq!(shard_of(""), (0xcbf2_9ce4_8422_2325u64 % 256) as u32);
        let mut counts = vec![0u32; SHARDS as usize];
        for i in 0..100_000u32 {
            counts[shard_of(&format!("{i:08x}-0000-4000-8000-{:012x}", i * 7919)) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 300 && *max < 500, "uneven shards: {min}..{max}");
    }

    #[test]
    fn names_fit_and_tell_incarnations_apart() {
        let long = "w".repeat(63);
        let name = shard_name(&long, "1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809", 255);
        assert_eq!(name, format!("{long}-1a2b3c4d-ff"));
        assert!(name.len() <= 253);
        assert_ne!(shard_name("wf", "11111111-x", 0), shard_name("wf", "22222222-x", 0));
    }
}
