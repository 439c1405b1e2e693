//! Label and annotation keys kubeci writes and reads.

/// The Workflow a Workplan or pod belongs to.
pub const WORKFLOW: &str = "kube.ci/workflow";
/// The Workplan a pod belongs to.
pub const WORKPLAN: &str = "kube.ci/workplan";
/// The task index of a pod (or `cleanup`).
pub const TASK: &str = "kube.ci/task";
/// Annotation on a Workflow: each new value starts one manual run.
pub const RUN_ANNOTATION: &str = "kube.ci/run";
