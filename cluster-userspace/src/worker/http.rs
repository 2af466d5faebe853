//! The demo worker's HTTP answers: `GET /` names the process that handled it, `GET /work` first
//! burns CPU like the seeds' `for (i = 0; i < 1e7; i++)`, `GET /message` returns the last
//! message the supervisor sent (`cluster broadcast`, `cluster send`), anything else is 404.

use std::hint::black_box;

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Bytes,
    header::{CONTENT_TYPE, HeaderValue},
};

/// Largest `iterations` accepted by `/work`.
pub const MAX_ITERATIONS: u64 = 10_000_000_000;

/// Who answers: put in every response.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub pid: u32,
    pub slot: u32,
}

/// Answers one request. The CPU loop of `/work` runs on the worker's only thread, as a
/// single-threaded Node process would: a busy worker accepts nothing meanwhile.
pub fn respond<B>(
    request: &Request<B>,
    identity: Identity,
    last_message: Option<&str>,
) -> Response<Full<Bytes>> {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n",
        );
    }
    match request.uri().path() {
        "/" => handled(identity),
        "/work" => match iterations(request.uri().query()) {
            Ok(n) => {
                burn_cpu(n);
                handled(identity)
            }
            Err(reason) => plain(StatusCode::BAD_REQUEST, &format!("{reason}\n")),
        },
        "/message" => match last_message {
            Some(json) => {
                let mut response = plain(StatusCode::OK, &format!("{json}\n"));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
                    .headers_mut()
                    .insert("x-worker-pid", HeaderValue::from(identity.pid));
                response
            }
            None => plain(StatusCode::NOT_FOUND, "no message yet\n"),
        },
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Reads `iterations=N` from the query string.
pub fn iterations(query: Option<&str>) -> Result<u64, String> {
    let value = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("iterations="))
        .ok_or("missing `iterations`: use /work?iterations=N")?;
    let n: u64 = value
        .parse()
        .map_err(|_| format!("`iterations` must be a whole number, got {value:?}"))?;
    if n > MAX_ITERATIONS {
        return Err(format!(
            "`iterations` must be at most {MAX_ITERATIONS}, got {n}"
        ));
    }
    Ok(n)
}

/// A loop the optimiser cannot remove: every step goes through `black_box`.
fn burn_cpu(iterations: u64) -> u64 {
    let mut acc = 0u64;
    for i in 0..iterations {
        acc = black_box(acc.wrapping_add(i));
    }
    acc
}

fn handled(identity: Identity) -> Response<Full<Bytes>> {
    let body = format!(
        "Handled by process {} (worker {})\n",
        identity.pid, identity.slot
    );
    let mut response = plain(StatusCode::OK, &body);
    let headers = response.headers_mut();
    headers.insert("x-worker-pid", HeaderValue::from(identity.pid));
    headers.insert("x-worker-slot", HeaderValue::from(identity.slot));
    response
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    const ME: Identity = Identity { pid: 42, slot: 3 };

    fn get(uri: &str) -> Response<Full<Bytes>> {
        respond(&Request::get(uri).body(()).unwrap(), ME, None)
    }

    fn body(response: Response<Full<Bytes>>) -> String {
        let collected = block_on(response.into_body().collect());
        String::from_utf8(collected.unwrap().to_bytes().to_vec()).unwrap()
    }

    /// Runs a future to completion on a throwaway runtime.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(future)
    }

    #[test]
    fn root_names_the_worker() {
        let response = get("/");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-worker-pid"], "42");
        assert_eq!(response.headers()["x-worker-slot"], "3");
        assert_eq!(body(response), "Handled by process 42 (worker 3)\n");
    }

    #[test]
    fn work_validates_iterations() {
        assert_eq!(get("/work?iterations=1000").status(), StatusCode::OK);
        assert_eq!(get("/work?iterations=0").status(), StatusCode::OK);
        for bad in [
            "/work",
            "/work?iterations=abc",
            "/work?iterations=-1",
            "/work?iterations=10000000001",
        ] {
            let response = get(bad);
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
            let text = body(response);
            assert_eq!(text.lines().count(), 1, "{text}");
        }
        assert_eq!(iterations(Some("x=1&iterations=5")), Ok(5));
        assert_eq!(
            iterations(Some("iterations=10000000000")),
            Ok(MAX_ITERATIONS)
        );
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(get("/nope").status(), StatusCode::NOT_FOUND);
        let post = respond(&Request::post("/").body(()).unwrap(), ME, None);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn message_returns_the_last_one() {
        assert_eq!(get("/message").status(), StatusCode::NOT_FOUND);
        let response = respond(
            &Request::get("/message").body(()).unwrap(),
            ME,
            Some("{\"users\":3}"),
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response), "{\"users\":3}\n");
    }

    #[test]
    fn burn_is_not_optimised_away() {
        assert_eq!(burn_cpu(10), 45);
    }
}
