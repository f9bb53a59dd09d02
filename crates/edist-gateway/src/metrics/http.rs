//! A minimal HTTP/1.1 server for Prometheus: `GET /metrics` answers the text exposition, every
//! other request 404 (or 405/400). One request per connection, bounded request size and time,
//! so a scraper or a stray client cannot hold the gateway's resources.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Produces the exposition text at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Largest request head read (request line and headers).
const MAX_REQUEST: usize = 8192;
/// Time allowed for a request head to arrive.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once.
const MAX_CONNECTIONS: usize = 16;

/// Binds `addr`; returns the listener (serve it with [`serve`]) and the address bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Serves scrapes until the task is aborted.
pub async fn serve(listener: TcpListener, render: Render) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let render = render.clone();
        tokio::spawn(async move {
            let _ = answer(sock, &render).await;
            drop(permit);
        });
    }
}

/// The request line's method and path, once the head is complete (`\r\n\r\n`).
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(head.get(..end)?).ok()?;
    let mut parts = text.lines().next()?.split(' ');
    Some((parts.next()?, parts.next()?))
}

async fn answer(mut sock: TcpStream, render: &Render) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let parsed = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            if let Some((m, p)) = request_line(&head) {
                return Some((m.to_string(), p.to_string()));
            }
            if head.len() >= MAX_REQUEST {
                return None;
            }
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
    })
    .await
    .ok()
    .flatten();
    let (status, body) = match parsed {
        None => ("400 Bad Request", String::new()),
        Some((m, _)) if m != "GET" => ("405 Method Not Allowed", String::new()),
        Some((_, p)) if p == "/metrics" || p.starts_with("/metrics?") => ("200 OK", render()),
        Some(_) => ("404 Not Found", "try /metrics\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        super::CONTENT_TYPE,
        body.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_refuses_the_rest() {
        let (l, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let n2 = n.clone();
        let task = tokio::spawn(serve(
            l,
            Arc::new(move || format!("x {}\n", n2.fetch_add(1, std::sync::atomic::Ordering::Relaxed))),
        ));
        let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nx 0\n"), "{r}");
        assert!(get(addr, "GET /metrics HTTP/1.0\r\n\r\n").await.ends_with("x 1\n"));
        assert!(get(addr, "GET / HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        assert!(get(addr, &"A".repeat(MAX_REQUEST)).await.starts_with("HTTP/1.1 400"));
        task.abort();
    }
}
