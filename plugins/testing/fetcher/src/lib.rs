//! Fetches a URL over outbound HTTP when asked (`POST /fetch` with the URL as the body),
//! answering 200 with `<status> <body>`, or 502 with the error: for the outbound HTTP
//! grant tests.

use apiary_plugin_sdk::http::{Handler, Request, Response, Router};
use apiary_plugin_sdk::{export, outbound, InitError, Plugin};

struct Fetcher;

impl Plugin for Fetcher {
    fn init(_config: String) -> Result<(), InitError> {
        Ok(())
    }
}

impl Handler for Fetcher {
    fn handle(req: Request) -> Response {
        Router::new()
            .post("/fetch", |req, _| {
                let url = String::from_utf8_lossy(&req.body).to_string();
                match outbound::send("POST", &url, &[("x-from", b"fetcher")], b"ping", 1 << 20) {
                    Ok(r) => Response::text(
                        200,
                        format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
                    ),
                    Err(e) => Response::text(502, e.to_string()),
                }
            })
            .dispatch(req)
    }
}

export!(Fetcher: http);
