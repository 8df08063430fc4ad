//! Starts an axum router on 127.0.0.1 with a free port, for the fake CRMs and destination.
//! The server lives as long as the returned handle; dropping it stops the server.

use tokio::task::JoinHandle;

/// A running loopback server; aborted on drop so tests leave nothing behind.
pub struct LoopbackServer {
    pub base_url: String,
    task: JoinHandle<()>,
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(router: axum::Router) -> LoopbackServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("loopback address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    LoopbackServer {
        base_url: format!("http://{addr}"),
        task,
    }
}
