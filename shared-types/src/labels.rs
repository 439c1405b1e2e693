//! Label and annotation keys kubeci writes and reads.

/// The Workflow a Workplan or pod belongs to.
pub const WORKFLOW: &str = "kube.ci/workflow";
/// The Workplan a pod belongs to.
pub const WORKPLAN: &str = "kube.ci/workplan";
/// The task index of a pod (or `cleanup`).
pub const TASK: &str = "kube.ci/task";
/// Annotation on a Workflow: each new value starts one manual run.
pub const RUN_ANNOTATION: &str = "kube.ci/run";
/// Finalizer on every Workplan from its creation: the workplan-operator removes it once the
/// workspace cleanup was attempted (the final phase is written), or at once when the Workplan is
/// deleted before any task started. A Workplan deleted mid-run thus stays until its workspace
/// cleanup was attempted.
pub const CLEANUP_FINALIZER: &str = "kube.ci/cleanup";
/// The attempt of a task pod when it is a retry (2, 3, …); the first attempt's pod has none.
pub const ATTEMPT: &str = "kube.ci/attempt";
/// Annotation on a Workplan: cancels the run. Its value says who or why, and is kept in the
/// Workplan's reason (`Cancelled by <value> ...`).
pub const CANCEL_ANNOTATION: &str = "kube.ci/cancel";
