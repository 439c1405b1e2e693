//! `ui`: a live web view of the namespace's Workflows and their runs, served on loopback.
//!
//! The server acts with the user's kubeconfig (the [`Cluster`] the other commands use), so the
//! page sees exactly what the user can, and nothing else holds credentials: the page gets data,
//! never a token. A run's DAG is drawn by [`Graph::svg_with_states`] from [`status::run_tree`]'s
//! states, pushed as Server-Sent Events whenever a watch of the Workplan, its RequestState or its
//! pods changes; a step's log streams the same way through [`logs::stream`]. Every stream owns its
//! watches: a client that goes away drops the stream, and with it the watches.
//!
//! Because a loopback server that holds the user's credentials is reachable from any page the
//! browser opens (DNS rebinding: `evil.example` resolving to 127.0.0.1), every request must name
//! this server in its `Host` header, and any `Origin` header must be this server's.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shared_types::{Workflow, Workplan, labels};
use tokio::sync::{mpsc, watch};

use crate::graph::Graph;
use crate::logs::{self, AbortOnDrop, Line, Snapshot, Until};
use crate::{Cluster, Error, status};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const UI_JS: &str = include_str!("../assets/ui.js");
const UI_CSS: &str = include_str!("../assets/ui.css");

/// Nothing but this server: no inline script, no other origin, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// How often an idle stream sends a comment: it keeps proxies from closing it and lets the
/// server notice a client that went away.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// `kubectl kubeci ui`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct UiArgs {
    /// The address to listen on. Loopback only, unless `--allow-remote`.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST), value_name = "IP")]
    pub address: IpAddr,

    /// The port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub port: u16,

    /// Open the page in the default browser (`xdg-open`, `open`).
    #[arg(long)]
    pub open: bool,

    /// Listen on a non-loopback `--address`: anyone who can reach it reads the cluster with your
    /// credentials.
    #[arg(long)]
    pub allow_remote: bool,
}

/// Why the web view could not start.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(
        "error: --address {0} is not a loopback address: the page reads the cluster with your kubeconfig's \
         credentials, so anyone who can reach {0} could too. Use 127.0.0.1 (the default) or ::1, or add \
         --allow-remote if that is what you want"
    )]
    NotLoopback(IpAddr),
    #[error("error: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("error: serving the web view: {0}")]
    Serve(std::io::Error),
}

/// What every handler shares.
struct Ui {
    cluster: Cluster,
    /// `Host` values this server answers to, lower case.
    hosts: Vec<String>,
}

/// Serves the web view until Ctrl-C; prints the page's URL to `out` once it listens.
pub async fn serve(cluster: Cluster, args: &UiArgs, out: &mut dyn Write) -> Result<(), Error> {
    let listener = listen(args).await?;
    let addr = listener.local_addr().map_err(|source| UiError::Bind { addr: bound(args), source })?;
    let url = format!("http://{addr}/");
    let namespace = cluster.namespace.clone();
    let app = router(cluster, addr);
    writeln!(out, "{url}")?;
    out.flush()?;
    eprintln!("Serving the kubeci web view of namespace {namespace} at {url} (Ctrl-C to stop)");
    if args.open {
        open_browser(&url);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(UiError::Serve)?;
    Ok(())
}

fn bound(args: &UiArgs) -> SocketAddr {
    SocketAddr::new(args.address, args.port)
}

/// Refuses a non-loopback address without `--allow-remote` (before anything else is done).
pub fn check_address(args: &UiArgs) -> Result<(), UiError> {
    if !args.address.is_loopback() && !args.allow_remote {
        return Err(UiError::NotLoopback(args.address));
    }
    Ok(())
}

async fn listen(args: &UiArgs) -> Result<tokio::net::TcpListener, UiError> {
    check_address(args)?;
    let addr = bound(args);
    tokio::net::TcpListener::bind(addr).await.map_err(|source| UiError::Bind { addr, source })
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    match std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(_) => {}
        Err(e) => eprintln!("could not open a browser ({opener}: {e}); open {url} yourself"),
    }
}

/// The `Host` values a server bound to `addr` answers to: the address itself, and `localhost`
/// for a loopback one.
pub fn allowed_hosts(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![addr.to_string()];
    if addr.ip().is_loopback() {
        hosts.push(format!("localhost:{port}"));
    }
    hosts
}

/// The web view's routes for a server bound to `addr`.
pub fn router(cluster: Cluster, addr: SocketAddr) -> Router {
    let ui = Arc::new(Ui { cluster, hosts: allowed_hosts(addr) });
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui.js", get(|| async { asset("text/javascript; charset=utf-8", UI_JS) }))
        .route("/ui.css", get(|| async { asset("text/css; charset=utf-8", UI_CSS) }))
        .route("/api/namespaces", get(namespaces))
        .route("/api/stats", get(|| async { axum::Json(json!({"watching": logs::watching()})) }))
        .route("/api/workflows", get(workflows))
        .route("/api/workplans/{name}", get(workplan))
        .route("/api/workplans/{name}/events", get(workplan_events))
        .route("/api/workplans/{name}/logs", get(workplan_logs))
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such page".into()) })
        .layer(middleware::from_fn_with_state(ui.clone(), guard))
        .with_state(ui)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Refuses requests for another host or from another origin; adds the headers that keep the
/// page to itself.
async fn guard(State(ui): State<Arc<Ui>>, request: Request, next: Next) -> Response {
    if let Err(problem) = check_origin(&ui.hosts, request.headers()) {
        return problem.into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `Ok` when `Host` is one of `hosts` and `Origin`, if any, is `http://` one of them.
pub fn check_origin(hosts: &[String], headers: &HeaderMap) -> Result<(), Problem> {
    let refuse = |what: String| {
        Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "refused: {what}; this server answers to {} only (it reads the cluster with your credentials, \
                 so it refuses other hosts and origins: DNS rebinding protection)",
                hosts.join(", ")
            ),
        )
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_ascii_lowercase);
    match host {
        Some(host) if hosts.contains(&host) => {}
        Some(host) => return Err(refuse(format!("Host {host:?} is not this server"))),
        None => return Err(refuse("no Host header".into())),
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default().to_ascii_lowercase();
        let ours = origin.strip_prefix("http://").is_some_and(|o| hosts.iter().any(|h| h == o));
        if !ours {
            return Err(refuse(format!("Origin {origin:?} is not this server")));
        }
    }
    Ok(())
}

/// An error as the API answers it: a status and `{"error": "..."}`.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub message: String,
}

impl Problem {
    fn new(status: StatusCode, message: String) -> Problem {
        Problem { status, message }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

impl From<Error> for Problem {
    fn from(error: Error) -> Problem {
        let status = match &error {
            Error::NotFound { .. } | Error::NoSuchStep { .. } | Error::WorkplanDeleted { .. } => {
                StatusCode::NOT_FOUND
            }
            Error::Malformed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Kube { source: kube::Error::Api(status), .. } => {
                StatusCode::from_u16(status.code).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        let message = error.to_string();
        Problem::new(status, message.strip_prefix("error: ").unwrap_or(&message).to_string())
    }
}

/// `?namespace=` (default: the command's namespace) and, for logs, `?step=`.
#[derive(Deserialize, Default)]
struct Params {
    namespace: Option<String>,
    step: Option<String>,
}

/// Whether `name` is a DNS-1123 subdomain (object names) or, with `label`, a DNS-1123 label
/// (namespaces): what the API server would accept, so nothing else reaches a request path.
pub fn valid_name(name: &str, label: bool) -> bool {
    let max = if label { 63 } else { 253 };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !p.starts_with('-')
            && !p.ends_with('-')
    };
    !name.is_empty() && name.len() <= max && if label { part_ok(name) } else { name.split('.').all(part_ok) }
}

fn name_problem(kind: &str, name: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        format!("{name:?} is not a valid {kind} name (lower-case letters, digits, '-' and '.')"),
    )
}

impl Ui {
    /// The Cluster of `?namespace=`, checked.
    fn cluster(&self, params: &Params) -> Result<Cluster, Problem> {
        match &params.namespace {
            None => Ok(self.cluster.clone()),
            Some(ns) if valid_name(ns, true) => {
                Ok(Cluster { client: self.cluster.client.clone(), namespace: ns.clone() })
            }
            Some(ns) => Err(name_problem("namespace", ns)),
        }
    }
}

fn workplan_name(name: &str) -> Result<(), Problem> {
    if valid_name(name, false) { Ok(()) } else { Err(name_problem("Workplan", name)) }
}

/// The namespaces the user may list (just the current one when listing is forbidden).
async fn namespaces(State(ui): State<Arc<Ui>>) -> Response {
    let current = ui.cluster.namespace.clone();
    let listed = Api::<Namespace>::all(ui.cluster.client.clone()).list(&ListParams::default()).await;
    let mut names: Vec<String> = match listed {
        Ok(list) => list.items.into_iter().filter_map(|n| n.metadata.name).collect(),
        Err(_) => Vec::new(),
    };
    if !names.contains(&current) {
        names.push(current.clone());
    }
    names.sort();
    axum::Json(json!({"current": current, "namespaces": names})).into_response()
}

/// The namespace's Workflows, each with its runs (oldest first).
async fn workflows(State(ui): State<Arc<Ui>>, Query(params): Query<Params>) -> Result<Response, Problem> {
    let cluster = ui.cluster(&params)?;
    let (workflows, bad_workflows) = cluster.list::<Workflow>("").await?;
    let (workplans, bad_workplans) = cluster.list::<Workplan>(labels::WORKFLOW).await?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut names: Vec<String> = workflows.iter().filter_map(|w| w.metadata.name.clone()).collect();
    names.sort();
    let label_of = |wp: &Workplan| {
        wp.metadata.labels.as_ref().and_then(|l| l.get(labels::WORKFLOW)).cloned().unwrap_or_default()
    };
    let listed: Vec<status::Runs> = names
        .iter()
        .map(|name| {
            let mine: Vec<Workplan> = workplans.iter().filter(|wp| label_of(wp) == *name).cloned().collect();
            status::runs(name, &cluster.namespace, &mine, Vec::new(), now)
        })
        .collect();
    let malformed: Vec<String> = bad_workflows.iter().chain(&bad_workplans).map(malformed_text).collect();
    Ok(axum::Json(json!({"namespace": cluster.namespace, "workflows": listed, "malformed": malformed}))
        .into_response())
}

fn malformed_text(error: &Error) -> String {
    match error {
        Error::Malformed { kind, name, message } => format!("{kind} {name}: {message}"),
        other => other.to_string(),
    }
}

/// A run as the page draws it: the tree of tasks and steps, and the DAG with each step's state.
#[derive(Serialize, PartialEq)]
pub struct RunView {
    pub tree: status::RunTree,
    pub svg: String,
}

/// The view of `snapshot`'s run; `None` once its Workplan is gone.
pub fn run_view(snapshot: &Snapshot, now: k8s_openapi::jiff::Timestamp) -> Option<RunView> {
    let workplan = snapshot.workplan.as_ref()?;
    let pods: Vec<_> = snapshot.pods.values().cloned().collect();
    let tree = status::run_tree(workplan, snapshot.request.as_ref(), &pods, now);
    let states: HashMap<String, String> = tree
        .tasks
        .iter()
        .flat_map(|t| &t.steps)
        .map(|s| (s.name.clone(), format!("{:?}", s.state)))
        .collect();
    let svg = Graph::of_workplan(workplan).svg_with_states(&states);
    Some(RunView { tree, svg })
}

/// The run as it is now.
async fn snapshot_now(cluster: &Cluster, name: &str) -> Result<Snapshot, Problem> {
    workplan_name(name)?;
    let (workplan, request, pods) = cluster.run(name).await?;
    Ok(Snapshot {
        workplan: Some(workplan),
        pods: pods.into_iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), p)).collect(),
        request,
        ..Snapshot::default()
    })
}

/// One run, once.
async fn workplan(
    State(ui): State<Arc<Ui>>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Result<Response, Problem> {
    let cluster = ui.cluster(&params)?;
    let snapshot = snapshot_now(&cluster, &name).await?;
    let view = run_view(&snapshot, k8s_openapi::jiff::Timestamp::now()).expect("the Workplan was read");
    Ok(axum::Json(view).into_response())
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
type Events = Sse<axum::response::sse::KeepAliveStream<EventStream>>;

/// The events a spawned producer sends, as a response body that aborts the producer (and so its
/// watches) when dropped: when the client goes away, hyper drops the body.
fn events_of(producer: impl FnOnce(mpsc::Sender<Event>) -> tokio::task::JoinHandle<()>) -> Events {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let task = AbortOnDrop(producer(tx));
    let stream = futures::stream::unfold((rx, task), |(mut rx, task)| async move {
        let event = rx.recv().await?;
        Some((Ok(event), (rx, task)))
    });
    Sse::new(Box::pin(stream) as EventStream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// `run` with the [`RunView`] each time it changes, `gone` when the Workplan is deleted.
async fn workplan_events(
    State(ui): State<Arc<Ui>>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Result<Events, Problem> {
    let cluster = ui.cluster(&params)?;
    let first = snapshot_now(&cluster, &name).await?;
    Ok(events_of(move |tx| tokio::spawn(run_events(cluster, name, first, tx))))
}

async fn run_events(cluster: Cluster, name: String, first: Snapshot, tx: mpsc::Sender<Event>) {
    let (snapshots, mut rx) = watch::channel(first);
    let _watches =
        AbortOnDrop(tokio::spawn(logs::keep_current(cluster.clone(), name.clone(), snapshots, true)));
    let mut last = String::new();
    loop {
        let view = run_view(&rx.borrow_and_update(), k8s_openapi::jiff::Timestamp::now());
        let Some(view) = view else {
            let gone = format!("Workplan {:?} was deleted from namespace {:?}", name, cluster.namespace);
            let _ = tx.send(Event::default().event("gone").data(gone)).await;
            return;
        };
        let data = serde_json::to_string(&view).expect("plain data serializes");
        if data != last {
            if tx.send(Event::default().event("run").data(data.clone())).await.is_err() {
                return;
            }
            last = data;
        }
        if rx.changed().await.is_err() {
            let _ = tx.send(Event::default().event("problem").data("the watches of the run ended")).await;
            return;
        }
    }
}

/// `line` (`{"step", "text"}`) per log line of `?step=` (or of every step in execution order),
/// `wait` while a step has not started, `problem` on an error, then `end`. Finished pods
/// included; live until the step ends.
async fn workplan_logs(
    State(ui): State<Arc<Ui>>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Result<Events, Problem> {
    let cluster = ui.cluster(&params)?;
    workplan_name(&name)?;
    // Named errors before the stream starts: a missing Workplan or step is a 404, not an event.
    let workplan: Workplan = cluster.get(&name).await?;
    logs::stages(&workplan, params.step.as_deref())?;
    let step = params.step;
    Ok(events_of(move |tx| tokio::spawn(log_events(cluster, name, step, tx))))
}

async fn log_events(cluster: Cluster, name: String, step: Option<String>, tx: mpsc::Sender<Event>) {
    let (lines, mut incoming) = mpsc::unbounded_channel::<Line>();
    let read = async move { logs::stream(&cluster, &name, step.as_deref(), Until::StepsEnd, &lines).await };
    let forward = async {
        while let Some(line) = incoming.recv().await {
            let event = match line {
                Line::Log { step, text } => {
                    Event::default().event("line").data(json!({"step": step, "text": text}).to_string())
                }
                Line::Progress(text) => Event::default().event("wait").data(text),
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    };
    let (read, ()) = futures::join!(read, forward);
    if let Err(e) = read {
        let message = e.to_string();
        let message = message.strip_prefix("error: ").unwrap_or(&message).to_string();
        let _ = tx.send(Event::default().event("problem").data(message)).await;
    }
    let _ = tx.send(Event::default().event("end").data("")).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn only_this_servers_host_and_origin_are_served() {
        let hosts = allowed_hosts("127.0.0.1:8001".parse().unwrap());
        assert_eq!(hosts, ["127.0.0.1:8001", "localhost:8001"]);
        assert!(check_origin(&hosts, &headers(&[("host", "127.0.0.1:8001")])).is_ok());
        assert!(check_origin(&hosts, &headers(&[("host", "LOCALHOST:8001")])).is_ok());
        assert!(
            check_origin(
                &hosts,
                &headers(&[("host", "localhost:8001"), ("origin", "http://localhost:8001")])
            )
            .is_ok()
        );
        // DNS rebinding: the browser sends the attacker's name.
        let refused = check_origin(&hosts, &headers(&[("host", "evil.example:8001")])).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(
            refused.message.contains("Host \"evil.example:8001\" is not this server"),
            "{}",
            refused.message
        );
        assert!(check_origin(&hosts, &headers(&[("host", "127.0.0.1:8002")])).is_err());
        assert!(check_origin(&hosts, &headers(&[])).is_err());
        // A foreign page calling us with the right Host (a simple request) still names its origin.
        let foreign = headers(&[("host", "127.0.0.1:8001"), ("origin", "http://evil.example")]);
        assert!(
            check_origin(&hosts, &foreign).unwrap_err().message.contains("Origin \"http://evil.example\"")
        );
        assert!(check_origin(&hosts, &headers(&[("host", "127.0.0.1:8001"), ("origin", "null")])).is_err());
        let v6 = allowed_hosts("[::1]:9".parse().unwrap());
        assert_eq!(v6, ["[::1]:9", "localhost:9"]);
        assert_eq!(allowed_hosts("10.0.0.5:9".parse().unwrap()), ["10.0.0.5:9"]);
    }

    #[test]
    fn names_that_could_not_be_objects_are_refused() {
        for good in ["wp", "my-workflow-abc12", "a.b-c", "x1"] {
            assert!(valid_name(good, false), "{good}");
        }
        for bad in ["", "../etc", "..", "a/b", "<script>", "A", "-a", "a-", "a..b", &"a".repeat(254)] {
            assert!(!valid_name(bad, false), "{bad}");
        }
        assert!(valid_name("team-a", true));
        assert!(!valid_name("team.a", true));
        assert!(!valid_name(&"a".repeat(64), true));
    }

    #[tokio::test]
    async fn a_non_loopback_address_is_refused_unless_allowed() {
        let args = |address: &str, allow_remote| UiArgs {
            address: address.parse().unwrap(),
            port: 0,
            open: false,
            allow_remote,
        };
        let refused = listen(&args("0.0.0.0", false)).await.unwrap_err().to_string();
        assert!(refused.starts_with("error: --address 0.0.0.0 is not a loopback address"), "{refused}");
        assert!(refused.contains("--allow-remote"), "{refused}");
        assert!(listen(&args("127.0.0.1", false)).await.is_ok());
        assert!(listen(&args("0.0.0.0", true)).await.is_ok());
    }

    #[test]
    fn the_page_is_self_contained() {
        // No other origin anywhere: no CDN, no fonts, no fetch elsewhere.
        for (name, text) in [("index.html", INDEX_HTML), ("ui.js", UI_JS), ("ui.css", UI_CSS)] {
            for needle in ["http://", "https://", "//cdn", "<script>", "eval(", "innerHTML"] {
                assert!(!text.contains(needle), "{name} contains {needle:?}");
            }
        }
        assert!(INDEX_HTML.contains("<script src=\"/ui.js\"></script>"));
    }
}
