//! facevault: a gRPC face enrollment service. `run` is the process entry point; `serve` is
//! what main and the integration tests share.

pub mod app;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod imaging;
pub mod inference;
pub mod shutdown;
pub mod telemetry;

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

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
    let slot = grpc::AppSlot::default();
    let (routes, health) = grpc::router(slot.clone(), &config).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .trace_fn(|request| tracing::info_span!("grpc", path = %request.uri().path()))
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            let _ = stop_rx.await;
        });
    let server = tokio::spawn(server);

    let stop = async {
        shutdown.await;
        grpc::set_not_serving(&health).await;
        let _ = stop_tx.send(());
    };
    tokio::pin!(stop);
    let app = tokio::select! {
        app = app::App::open(&config) => app?,
        () = &mut stop => {
            return server.await.map_err(|e| Error::internal("joining the server", e))?
                .map_err(|e| Error::internal("serving", e));
        }
    };
    slot.set(app);
    grpc::set_serving(&health).await;
    tracing::info!("serving");
    stop.await;
    server.await.map_err(|e| Error::internal("joining the server", e))?.map_err(|e| Error::internal("serving", e))?;
    tracing::info!("stopped");
    Ok(())
}
