//! kubeci's contract in code: the `Workflow`, `Workplan`, `RequestState` and `TriggerRecord`
//! custom resources (group `kube.ci`, version `v1alpha1`), the planner that compiles a Workflow's DAG into a
//! Workplan's tasks, and the rendering of one task as a pod.
//!
//! Everything here is pure: no API client, no runtime, no I/O. The binaries (director,
//! workplan-operator, worker, kubectl-kubeci) are thin shells around these functions.

pub mod crds;
pub mod labels;
pub mod limits;
pub mod outcome;
pub mod planner;
pub mod pod;
pub mod protocol;
pub mod render;
pub mod repo;
pub mod request_state;
pub mod trigger_record;
pub mod workflow;
pub mod workplan;

pub use planner::{Invalid, Limits, Problem};
pub use pod::{PodTemplate, PodVolume, Retries};
pub use request_state::{HistoryEntry, Job, JobState, RequestState, RequestStateSpec, RequestStateStatus};
pub use trigger_record::{TriggerRecord, TriggerRecordSpec};
pub use workflow::{
    RecordedObject, RunSettings, Step, Trigger, Workflow, WorkflowSpec, WorkflowStatus, WorkplanCounts,
};
pub use workplan::{EventKind, Phase, Task, TriggerEvent, Workplan, WorkplanSpec, WorkplanStatus};
