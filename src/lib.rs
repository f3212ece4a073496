//! facevault: a gRPC face enrollment service. `run` is the process entry point; `serve` is
//! what main and the integration tests share.

pub mod admin_cli;
pub mod app;
pub mod cli_client;
pub mod config;
mod connections;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod imaging;
pub mod import_cli;
pub mod inference;
pub mod metrics;
pub mod migrate;
pub mod search;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod threads;
pub mod verify;

use std::future::Future;

use tokio::net::TcpListener;

pub use config::Config;
pub use error::{Error, Result};

/// Binds the configured address and serves until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<()> {
    let listener = TcpListener::bind(config.listen).await.map_err(|e| Error::internal("binding the listener", e))?;
    tracing::info!(address = %config.listen, "listening");
    serve(config, listener, shutdown::signal()).await
}

/// Serves on `listener` until `shutdown` completes. Health reports NOT_SERVING until the models
/// are loaded, verified and warmed up, then SERVING; on shutdown NOT_SERVING again, then the
/// in-flight requests drain.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with_slot(config, listener, shutdown, grpc::AppSlot::default()).await
}

/// [`serve`], filling `slot` with the application once it is ready (tests inspect the store
/// and the index through it).
pub async fn serve_with_slot(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    slot: grpc::AppSlot,
) -> Result<()> {
    config.validate().map_err(|message| Error::Unavailable { message: format!("invalid configuration: {message}") })?;
    let keys = match &config.keys_file {
        Some(path) => app::KeyRing::load(path)?,
        None => {
            tracing::warn!(
                "INSECURE DEVELOPMENT MODE: no keys file; every call is accepted as key \"dev\" of tenant \"dev\" \
                 with every scope. Never run like this outside a laptop."
            );
            app::KeyRing::development()
        }
    }
    .with_limits(app::CallerLimits {
        max_concurrent_per_key: config.max_concurrent_per_key,
        max_token_buckets: config.max_token_buckets,
    });
    let quotas = keys.quotas();
    let (routes, health) = grpc::router(slot.clone(), keys.clone(), &config).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = grpc::tls_config(&config)? {
        builder = builder.tls_config(tls).map_err(|e| Error::Unavailable { message: format!("TLS set-up: {e}") })?;
    }
    let seconds = std::time::Duration::from_secs;
    let server = builder
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_max_header_list_size(config.max_header_bytes)
        .http2_keepalive_interval(Some(seconds(config.http2_keepalive_interval)))
        .http2_keepalive_timeout(Some(seconds(config.http2_keepalive_timeout)))
        .trace_fn(|request| tracing::info_span!("grpc", path = %request.uri().path()))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            connections::limited(listener, config.max_connections, seconds(config.handshake_timeout)),
            async move {
                let _ = stop_rx.await;
            },
        );
    let server = tokio::spawn(server);

    let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = async {
        shutdown.await;
        stopping.store(true, std::sync::atomic::Ordering::Release);
        grpc::set_not_serving(&health).await;
        let _ = stop_tx.send(());
    };
    tokio::pin!(stop);
    let app = tokio::select! {
        app = app::App::open(&config, quotas) => app?,
        () = &mut stop => return drain(server, config.drain_timeout).await,
    };
    if let Some(address) = config.metrics_listen {
        let listener =
            TcpListener::bind(address).await.map_err(|e| Error::internal("binding the metrics listener", e))?;
        tracing::info!(%address, "metrics on http://{address}/metrics");
        let (observed, callers) = (app.clone(), keys.clone());
        tokio::spawn(metrics::serve(listener, config.metrics_tenant_labels, move || metrics::Gauges {
            token_buckets: callers.token_buckets(),
            ..observed.gauges()
        }));
    }
    let purge = tokio::spawn(app.clone().purge_tokens_periodically());
    let purge_requests = tokio::spawn(app.clone().purge_requests_periodically());
    let follow = tokio::spawn(app.clone().follow_log_periodically(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_millis(config.postgres_poll_ms),
    ));
    let reindex = tokio::spawn(app.clone().follow_reindex_periodically(std::time::Duration::from_secs(1)));
    slot.set(app.clone());
    grpc::set_serving(&health).await;
    tracing::info!("serving");
    let watch = tokio::spawn(health_follows_the_store(app.clone(), health.clone(), stopping.clone()));
    let recover = tokio::spawn(app.clone().recover_periodically(std::time::Duration::from_secs(1)));
    stop.await;
    purge.abort();
    purge_requests.abort();
    follow.abort();
    reindex.abort();
    watch.abort();
    recover.abort();
    drain(server, config.drain_timeout).await?;
    if let Err(err) = app.snapshot_index().await {
        tracing::warn!(error = %err, "no index snapshot at stop: the next start applies more of the log, or rebuilds");
    }
    // Every acknowledged write was durable already; this covers the rest (the log's
    // compaction) and marks the store closed cleanly.
    app.close().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Reports NOT_SERVING while the store cannot make writes durable (a write or a sync failed,
/// or the store is being reopened after such a fault), and SERVING again once it is reopened:
/// a load balancer sends traffic elsewhere meanwhile. Leaves health alone once `stopping`.
async fn health_follows_the_store(
    app: app::App,
    health: tonic_health::server::HealthReporter,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut failing = false;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if stopping.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        match (app.write_failure(), failing) {
            (Some(reason), false) => {
                tracing::error!(
                    reason,
                    "writes cannot be made durable: health reports NOT_SERVING until the store is reopened"
                );
                grpc::set_not_serving(&health).await;
                failing = true;
            }
            (None, true) => {
                tracing::info!("the store is open again: health reports SERVING");
                grpc::set_serving(&health).await;
                failing = false;
                // The server may have begun to stop meanwhile: stopping wins.
                if stopping.load(std::sync::atomic::Ordering::Acquire) {
                    grpc::set_not_serving(&health).await;
                    return;
                }
            }
            _ => {}
        }
    }
}

/// Waits for the stopping server to finish its calls and connections, for at most
/// `timeout_s` seconds; then stops accepting work anyway (a client that never reads or answers
/// must not hold the process up).
async fn drain(
    mut server: tokio::task::JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    timeout_s: u64,
) -> Result<()> {
    match tokio::time::timeout(std::time::Duration::from_secs(timeout_s), &mut server).await {
        Ok(joined) => {
            joined.map_err(|e| Error::internal("joining the server", e))?.map_err(|e| Error::internal("serving", e))
        }
        Err(_) => {
            tracing::warn!(
                drain_timeout_s = timeout_s,
                "connections still open after the drain timeout; stopping anyway"
            );
            server.abort();
            Ok(())
        }
    }
}
