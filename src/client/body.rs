//! Bounded reading of what a server sends.
//!
//! A server decides how much it sends: a model list, a health answer, a `/metrics` page, an
//! error page or a stream may have no end, by bug or by malice. Everything kvbench keeps from a
//! server is capped here, and going over a cap is an error of its own kind
//! ([`crate::record::ErrorKind::ResponseTooLarge`], `response_too_large`), never an unbounded
//! buffer. The caps are far above what a working server sends.

use std::time::Duration;

/// Largest JSON body read whole (`/v1/models`, `/version`, `/props`, health checks).
pub const MAX_JSON_BODY: usize = 16 << 20;
/// Largest `/metrics` page read (vLLM's, with every histogram, is well under 1 MiB).
pub const MAX_METRICS_BODY: usize = 32 << 20;
/// Longest SSE line, and largest SSE event, of a stream.
pub const MAX_EVENT_BYTES: usize = 8 << 20;
/// Most token-bearing events in one response (each costs 8 bytes of the record).
pub const MAX_TOKEN_EVENTS: usize = 1 << 20;
/// Most answer and reasoning text kept from one response (`--save-text`, quality suites).
pub const MAX_TEXT_BYTES: usize = 64 << 20;
/// Bytes of an error response's body kept for its message (the rest is not read).
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Why a body read whole could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the cap.
    #[error("response_too_large: the body is larger than {}", size(*.limit))]
    TooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
    /// Reading failed (reset, timeout); the message is secret-free.
    #[error("{0}")]
    Read(String),
}

/// A byte count as people write it: `16 MiB`, `64 KiB`, `100 bytes`.
pub fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// Reads the whole body of `resp`, failing with [`BodyError::TooLarge`] as soon as it is
/// known to exceed `limit` (from `Content-Length`, or once that much has arrived).
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge { limit });
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(BodyError::Read(super::describe_reqwest(&e))),
        }
    }
}

/// The first `limit` bytes of the body of `resp` (of an error answer, for its message), read
/// within `within`; the rest is never read. Whatever arrived is returned, also after a failure.
pub async fn read_prefix(mut resp: reqwest::Response, limit: usize, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        while out.len() < limit {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = limit - out.len();
                    out.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
    out
}

/// GET `url` and parse its JSON body, for the small side endpoints kvbench reads besides the
/// API (llama.cpp's `/props`): redirects only within the same origin, the body capped at
/// [`MAX_JSON_BODY`], within `timeout`. `None` for any failure (these facts are optional).
pub async fn get_json_capped(url: &str, timeout: Duration) -> Option<serde_json::Value> {
    let client = reqwest::Client::builder()
        .redirect(super::same_origin_redirects())
        .timeout(timeout)
        .build()
        .ok()?;
    let r = client.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let bytes = read_capped(r, MAX_JSON_BODY).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(16 << 20), "16 MiB");
        assert_eq!(size(64 * 1024), "64 KiB");
        assert_eq!(size(1000), "1000 bytes");
        assert_eq!(
            BodyError::TooLarge { limit: 16 << 20 }.to_string(),
            "response_too_large: the body is larger than 16 MiB"
        );
    }

    /// A one-shot HTTP server on loopback answering every connection with `answer`.
    async fn serve(answer: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        url
    }

    #[tokio::test]
    async fn side_json_is_capped_and_never_follows_another_origin() {
        let json = "{\"n_ctx\": 4096}";
        let ok = serve(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        ))
        .await;
        let t = Duration::from_secs(5);
        assert_eq!(
            get_json_capped(&format!("{ok}/props"), t).await.unwrap()["n_ctx"],
            4096
        );
        // A redirect to another server (another port is another origin) is not followed.
        let redirect = serve(format!(
            "HTTP/1.1 302 Found\r\nLocation: {ok}/props\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert!(get_json_capped(&format!("{redirect}/props"), t)
            .await
            .is_none());
        // A body announced beyond the cap is not read.
        let huge = serve(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            MAX_JSON_BODY + 1
        ))
        .await;
        assert!(get_json_capped(&format!("{huge}/props"), t).await.is_none());
    }
}
