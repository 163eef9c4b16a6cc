//! The console's files, embedded in the binary: no build step, no JavaScript toolchain, no
//! file outside the binary at run time. Everything is served under `/console/`.

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

macro_rules! assets {
    ($($path:literal => $ty:literal,)*) => {
        /// Every file of the console, by its path under `/console/`.
        pub const ALL: &[Asset] = &[$(Asset {
            path: $path,
            content_type: $ty,
            body: include_str!(concat!("../assets/", $path)),
        },)*];
    };
}

assets! {
    "index.html" => "text/html; charset=utf-8",
    "console.css" => "text/css; charset=utf-8",
    "js/app.js" => "text/javascript; charset=utf-8",
    "js/api.js" => "text/javascript; charset=utf-8",
    "js/ui.js" => "text/javascript; charset=utf-8",
    "js/chart.js" => "text/javascript; charset=utf-8",
    "js/cluster.js" => "text/javascript; charset=utf-8",
    "js/instances.js" => "text/javascript; charset=utf-8",
    "js/groups.js" => "text/javascript; charset=utf-8",
    "js/accounts.js" => "text/javascript; charset=utf-8",
}

/// The file at `path` (what follows `/console`): `/` and the empty path are the page.
pub fn find(path: &str) -> Option<&'static Asset> {
    let path = match path {
        "" | "/" => "index.html",
        p => p.strip_prefix('/')?,
    };
    ALL.iter().find(|a| a.path == path)
}

impl Asset {
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from_static(self.body.as_bytes())));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(self.content_type),
        );
        // A node upgraded in place serves new files at the same paths: revalidate each time.
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-cache"),
        );
        resp
    }
}
