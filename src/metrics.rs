//! Prometheus metrics: request counts and latency histograms per rpc and status code, per-stage
//! histograms (decode, detect, align, embed, thumbnail, store, search), and scrape-time gauges
//! (queue depth, overload rejections, the inference backend, index size: per tenant only with --metrics-tenant-labels),
//! served as text on a separate HTTP port. All metric names live here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Histogram bucket upper bounds, seconds.
const BUCKETS: [f64; 14] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0, 10.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct Registry {
    /// (rpc, grpc code) -> latency histogram (its count is the request count).
    rpcs: BTreeMap<(&'static str, &'static str), Histogram>,
    stages: BTreeMap<&'static str, Histogram>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

fn with_registry(f: impl FnOnce(&mut Registry)) {
    let mut guard = registry().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard);
}

/// Writes answered from a request id's record instead of being written again.
static REPLAYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// ImportFaces items by outcome: CREATED, ADDED, REPLAYED, FAILED.
static IMPORT_ITEMS: [std::sync::atomic::AtomicU64; 4] = [const { std::sync::atomic::AtomicU64::new(0) }; 4];
const IMPORT_OUTCOMES: [&str; 4] = ["CREATED", "ADDED", "REPLAYED", "FAILED"];

/// Counts one replayed write (a request id seen before).
pub fn record_replay() {
    REPLAYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Counts one finished ImportFaces item by its outcome (the ImportOutcome value, 0-3).
pub fn record_import_item(outcome: usize) {
    if let Some(counter) = IMPORT_ITEMS.get(outcome) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Records one finished rpc.
pub fn record_rpc(rpc: &'static str, code: &'static str, elapsed: Duration) {
    with_registry(|r| r.rpcs.entry((rpc, code)).or_default().observe(elapsed.as_secs_f64()));
}

/// Records the time of one pipeline or storage stage.
pub fn record_stage(stage: &'static str, elapsed: Duration) {
    with_registry(|r| r.stages.entry(stage).or_default().observe(elapsed.as_secs_f64()));
}

/// Values read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub queue_depth: usize,
    pub overload_rejections: u64,
    pub index_faces: Vec<(String, usize)>,
    /// Rate-limit buckets held for re-enrollment tokens (capped by --max-token-buckets).
    pub token_buckets: usize,
    /// The inference backend the workers run.
    pub backend: Option<crate::inference::Backend>,
}

/// The whole exposition, Prometheus text format 0.0.4. `tenant_labels`: the index size per
/// tenant, labelled with its name; otherwise one total that names no tenant.
pub fn render(gauges: &Gauges, tenant_labels: bool) -> String {
    let mut out = String::new();
    out.push_str("# HELP facevault_rpc_duration_seconds Latency of facevault rpcs by method and gRPC status code.\n");
    out.push_str("# TYPE facevault_rpc_duration_seconds histogram\n");
    let snapshot = {
        let guard = registry().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (guard.rpcs.clone(), guard.stages.clone())
    };
    for ((rpc, code), h) in &snapshot.0 {
        h.render(&mut out, "facevault_rpc_duration_seconds", &format!("rpc=\"{rpc}\",code=\"{code}\""));
    }
    out.push_str("# HELP facevault_stage_duration_seconds Time spent per pipeline and storage stage.\n");
    out.push_str("# TYPE facevault_stage_duration_seconds histogram\n");
    for (stage, h) in &snapshot.1 {
        h.render(&mut out, "facevault_stage_duration_seconds", &format!("stage=\"{stage}\""));
    }
    out.push_str("# HELP facevault_inference_queue_depth Images waiting for an inference worker.\n");
    out.push_str("# TYPE facevault_inference_queue_depth gauge\n");
    let _ = writeln!(out, "facevault_inference_queue_depth {}", gauges.queue_depth);
    out.push_str("# HELP facevault_overload_rejections_total Requests refused with OVERLOADED.\n");
    out.push_str("# TYPE facevault_overload_rejections_total counter\n");
    let _ = writeln!(out, "facevault_overload_rejections_total {}", gauges.overload_rejections);
    if let Some(backend) = gauges.backend {
        out.push_str("# HELP facevault_inference_backend_info The runtime and precision of each model.\n");
        out.push_str("# TYPE facevault_inference_backend_info gauge\n");
        for (model, engine) in [("detector", backend.detector), ("embedder", backend.embedder)] {
            let (name, precision) = (engine.name(), engine.precision_name());
            let _ = writeln!(
                out,
                "facevault_inference_backend_info{{model=\"{model}\",backend=\"{name}\",precision=\"{precision}\"}} 1"
            );
        }
    }
    out.push_str("# HELP facevault_request_replays_total Writes answered from their request_id's record.\n");
    out.push_str("# TYPE facevault_request_replays_total counter\n");
    let _ = writeln!(out, "facevault_request_replays_total {}", REPLAYS.load(std::sync::atomic::Ordering::Relaxed));
    out.push_str("# HELP facevault_import_items_total ImportFaces items finished, by outcome.\n");
    out.push_str("# TYPE facevault_import_items_total counter\n");
    for (name, counter) in IMPORT_OUTCOMES.iter().zip(&IMPORT_ITEMS) {
        let n = counter.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "facevault_import_items_total{{outcome=\"{name}\"}} {n}");
    }
    out.push_str("# HELP facevault_token_buckets Rate-limit buckets held for re-enrollment tokens.\n");
    out.push_str("# TYPE facevault_token_buckets gauge\n");
    let _ = writeln!(out, "facevault_token_buckets {}", gauges.token_buckets);
    if tenant_labels {
        out.push_str("# HELP facevault_index_faces Faces in the search index per tenant.\n");
        out.push_str("# TYPE facevault_index_faces gauge\n");
        for (tenant, n) in &gauges.index_faces {
            let _ = writeln!(out, "facevault_index_faces{{tenant=\"{tenant}\"}} {n}");
        }
    } else {
        out.push_str("# HELP facevault_index_faces Faces in the search index, all tenants together.\n");
        out.push_str("# TYPE facevault_index_faces gauge\n");
        let total: usize = gauges.index_faces.iter().map(|(_, n)| n).sum();
        let _ = writeln!(out, "facevault_index_faces {total}");
    }
    out
}

/// Serves `GET /metrics` on `listener` with `gauges` read at each scrape, until dropped
/// (`tenant_labels`: see [`render`]).
pub async fn serve(listener: TcpListener, tenant_labels: bool, gauges: impl Fn() -> Gauges + Send + Sync + 'static) {
    let gauges = std::sync::Arc::new(gauges);
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { continue };
        let gauges = gauges.clone();
        tokio::spawn(async move {
            let mut request = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            // Read the request head (bounded: 8 KiB, 5 s).
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
            });
            if read.await.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&request);
            let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?") {
                ("200 OK", render(&gauges(), tenant_labels))
            } else {
                ("404 Not Found", "not found; try /metrics\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_rendered() {
        let mut h = Histogram::default();
        h.observe(0.004);
        h.observe(0.3);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 1"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.35\"} 2"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 2"));
        assert!(out.contains("x_count{a=\"b\"} 2"));
    }
}
