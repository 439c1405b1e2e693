//! Reporting objects that do not deserialize, for every controller: why (the serde error with the
//! field's path) and the server-side apply that marks one `False` condition on such an object
//! without touching anything else. The object cannot be typed, so both work on its raw JSON.

use k8s_openapi::jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// Why `object` does not deserialize as a `K`, with the path of the field at fault
/// (`status: duplicate field observedGeneration`,
/// `status.taskIndex: invalid value: integer 1099511627776, expected i32`); `None` if it does.
pub fn explain<K: DeserializeOwned>(object: &Value) -> Option<String> {
    let error = serde_path_to_error::deserialize::<_, K>(object).err()?;
    Some(format!("{}: {}", error.path(), error.inner()).replace('`', ""))
}

/// A condition to mark `False` on a malformed object.
pub struct FalseCondition<'a> {
    /// The object's `apiVersion` and `kind`.
    pub api_version: &'a str,
    pub kind: &'a str,
    /// The field manager whose status fields the apply carries.
    pub manager: &'a str,
    /// The condition's type and reason, and the message (the error with its path).
    pub type_: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
}

/// The server-side apply (on the status subresource) of `condition` on the malformed `object`:
/// every status field its manager owns, as stored, with the condition replaced (its transition
/// time kept if it was already False) and the object's resourceVersion as a precondition. An
/// apply that left the manager's other fields out would delete them; the user's bad field is
/// never touched.
pub fn condition_false(object: &Value, condition: &FalseCondition, now: Timestamp) -> Value {
    let status = object.get("status").cloned().unwrap_or(Value::Null);
    let mut fields = status_fields(object, condition.manager)
        .and_then(|set| owned(&status, set).as_object().cloned())
        .unwrap_or_default();
    let previous = status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|all| all.iter().find(|c| c["type"] == condition.type_ && c["status"] == "False"));
    let since = previous.map_or_else(|| json!(now.to_string()), |c| c["lastTransitionTime"].clone());
    let mut marked = json!({
        "type": condition.type_,
        "status": "False",
        "reason": condition.reason,
        "message": condition.message,
        "lastTransitionTime": since,
    });
    if let Some(generation) = object.pointer("/metadata/generation") {
        marked["observedGeneration"] = generation.clone();
    }
    let mut conditions: Vec<Value> = fields
        .remove("conditions")
        .and_then(|c| c.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["type"] != condition.type_)
        .collect();
    conditions.push(marked);
    fields.insert("conditions".into(), Value::Array(conditions));
    json!({
        "apiVersion": condition.api_version,
        "kind": condition.kind,
        "metadata": {
            "name": object.pointer("/metadata/name"),
            "resourceVersion": object.pointer("/metadata/resourceVersion"),
        },
        "status": fields,
    })
}

/// The status fields `manager` owns by apply: `f:status` of its `managedFields` entry on the
/// status subresource.
fn status_fields<'a>(object: &'a Value, manager: &str) -> Option<&'a Map<String, Value>> {
    object.pointer("/metadata/managedFields")?.as_array()?.iter().find_map(|entry| {
        let ours =
            entry["manager"] == manager && entry["operation"] == "Apply" && entry["subresource"] == "status";
        ours.then(|| entry.pointer("/fieldsV1/f:status")?.as_object()).flatten()
    })
}

/// The parts of `value` named by the field set `fields` (the `fieldsV1` format: `f:<name>` for a
/// field, `k:<key json>` for a list item by its keys, `v:<value json>` for a set item,
/// `i:<index>` for a list item by position; `.` for the node itself).
pub fn owned(value: &Value, fields: &Map<String, Value>) -> Value {
    let children = || fields.iter().filter(|(name, _)| *name != ".");
    let below = |set: &Value| set.as_object().cloned().unwrap_or_default();
    match value {
        Value::Object(map) => Value::Object(
            children()
                .filter_map(|(name, set)| {
                    let name = name.strip_prefix("f:")?;
                    Some((name.to_string(), owned(map.get(name)?, &below(set))))
                })
                .collect(),
        ),
        Value::Array(items) if children().next().is_some() => Value::Array(
            items
                .iter()
                .enumerate()
                .filter_map(|(index, item)| {
                    let (_, set) = children().find(|(name, _)| names(name, index, item))?;
                    Some(owned(item, &below(set)))
                })
                .collect(),
        ),
        leaf => leaf.clone(),
    }
}

/// Whether the list item `item` at `index` is the one `name` (a `k:`, `v:` or `i:` key) means.
fn names(name: &str, index: usize, item: &Value) -> bool {
    if let Some(keys) = name.strip_prefix("k:") {
        serde_json::from_str::<Map<String, Value>>(keys)
            .is_ok_and(|keys| keys.iter().all(|(key, value)| item.get(key) == Some(value)))
    } else if let Some(value) = name.strip_prefix("v:") {
        serde_json::from_str::<Value>(value).is_ok_and(|value| value == *item)
    } else {
        name.strip_prefix("i:").and_then(|i| i.parse::<usize>().ok()) == Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Thing {
        status: Status,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    #[serde(rename_all = "camelCase")]
    struct Status {
        #[serde(alias = "lastCount")]
        count: Option<i32>,
        items: Vec<Item>,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        n: i32,
    }

    #[test]
    fn explains_with_the_path() {
        let duplicate = json!({"status": {"count": 1, "lastCount": 2, "items": []}});
        assert_eq!(explain::<Thing>(&duplicate).as_deref(), Some("status: duplicate field count"));
        let too_big = json!({"status": {"items": [{"n": 1}, {"n": 1_099_511_627_776_i64}]}});
        assert_eq!(
            explain::<Thing>(&too_big).as_deref(),
            Some("status.items[1].n: invalid value: integer 1099511627776, expected i32")
        );
        assert_eq!(explain::<Thing>(&json!({"status": {"items": []}})), None);
    }

    #[test]
    fn owned_fields_follow_the_field_set() {
        let value = json!({"a": ["x", "y", "z", "x"], "b": {"c": 1}, "d": 2});
        let set = json!({"f:a": {"v:\"x\"": {}, "i:2": {}}, "f:b": {}}).as_object().cloned().unwrap();
        assert_eq!(owned(&value, &set), json!({"a": ["x", "z", "x"], "b": {}}));
    }

    #[test]
    fn the_condition_replaces_only_its_own_and_keeps_the_managers_fields() {
        let object = json!({
            "metadata": {
                "name": "w", "resourceVersion": "7", "generation": 3,
                "managedFields": [{
                    "manager": "m", "operation": "Apply", "subresource": "status",
                    "fieldsV1": {"f:status": {"f:steps": {}, "f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:type": {}, "f:status": {}}}}},
                }],
            },
            "status": {
                "steps": 5, "userField": "bad",
                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "then"}],
            },
        });
        let condition = FalseCondition {
            api_version: "kube.ci/v1alpha1",
            kind: "Workflow",
            manager: "m",
            type_: "Ready",
            reason: "Malformed",
            message: "status: bad",
        };
        let apply = condition_false(&object, &condition, Timestamp::from_second(0).unwrap());
        assert_eq!(apply["metadata"], json!({"name": "w", "resourceVersion": "7"}));
        assert_eq!(apply["status"]["steps"], 5, "the manager's own field is kept");
        assert!(apply["status"].get("userField").is_none(), "the bad field is never touched");
        assert_eq!(
            apply["status"]["conditions"],
            json!([{"type": "Ready", "status": "False", "reason": "Malformed", "message": "status: bad",
                    "lastTransitionTime": "then", "observedGeneration": 3}])
        );
    }
}
