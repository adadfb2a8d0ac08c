//! WATCH: the event stream after a resourceVersion from the kept history, the initial ADDED
//! events, BOOKMARKs, selectors moving objects in and out, `timeoutSeconds`, and the 410 ERROR event.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, Response};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::{call::Call, lock, Body, Shared};
use crate::{
    resources::RESOURCES,
    selector::Selector,
    store::{ApiError, EventType, Store},
};

impl Call<'_> {
    pub(super) fn watch(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Response<Body>, ApiError> {
        let sel = self.selector()?;
        let start: Option<u64> = self.q.number("resourceVersion")?;
        let timeout: Option<u64> = self.q.number("timeoutSeconds")?;
        let spec = WatchSpec {
            res: self.res,
            ns: self.list_ns().map(str::to_string),
            sel,
            start,
            initial_events: self.q.flag("sendInitialEvents"),
            bookmarks: self.q.flag("allowWatchBookmarks"),
            timeout: timeout.filter(|t| *t > 0).map(Duration::from_secs),
        };
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(run_watch(self.shared.clone(), spec, tx, shutdown));
        let mut resp = Response::new(Body::Stream(rx));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
}

pub(super) struct WatchSpec {
    pub(super) res: usize,
    pub(super) ns: Option<String>,
    pub(super) sel: Selector,
    pub(super) start: Option<u64>,
    pub(super) initial_events: bool,
    pub(super) bookmarks: bool,
    pub(super) timeout: Option<Duration>,
}

pub(super) fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

pub(super) fn bookmark(res: usize, rv: u64, initial_end: bool) -> Bytes {
    let def = &RESOURCES[res];
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": meta}),
    )
}

/// The lines for the history after `cursor` that this watch should see.
pub(super) fn pending(store: &Store, spec: &WatchSpec, cursor: u64) -> Vec<Bytes> {
    let from = store.history.partition_point(|e| e.rv <= cursor);
    let in_ns = |o: &Value| {
        spec.ns
            .as_deref()
            .is_none_or(|ns| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
    };
    let mut out = Vec::new();
    for e in &store.history[from..] {
        if e.res != spec.res || !in_ns(&e.obj) {
            continue;
        }
        let now = spec.sel.matches(&e.obj);
        let ty = match e.ty {
            EventType::Modified => {
                let before = e.prev.as_ref().is_some_and(|p| spec.sel.matches(p));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
            ty => now.then_some(ty),
        };
        if let Some(ty) = ty {
            out.push(event_line(ty.as_str(), &e.obj));
        }
    }
    out
}

pub(super) async fn run_watch(
    shared: Arc<Shared>,
    spec: WatchSpec,
    tx: mpsc::Sender<Bytes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changed = shared.changed.subscribe();
    let (mut cursor, first) = {
        let store = lock(&shared.store);
        match spec.start {
            Some(n) if n != 0 && !spec.initial_events => {
                if n < store.compacted_before {
                    let gone = ApiError::expired(format!(
                        "too old resource version: {n} ({})",
                        store.compacted_before
                    ));
                    (u64::MAX, vec![event_line("ERROR", &gone.to_status())])
                } else {
                    (n, Vec::new())
                }
            }
            _ => {
                // No resourceVersion (or 0), or a streaming list: the current state first.
                let mut lines: Vec<Bytes> = store
                    .list(spec.res, spec.ns.as_deref(), &spec.sel)
                    .into_iter()
                    .map(|(_, o)| event_line("ADDED", o))
                    .collect();
                if spec.initial_events {
                    lines.push(bookmark(spec.res, store.rv, true));
                }
                (store.rv, lines)
            }
        }
    };
    for line in first {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    if cursor == u64::MAX {
        // The 410 ERROR event was the whole stream.
        return;
    }
    let deadline = async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let period = shared.opts.bookmark_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        let lines = {
            let store = lock(&shared.store);
            let lines = pending(&store, &spec, cursor);
            cursor = cursor.max(store.rv);
            lines
        };
        for line in lines {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tick.tick(), if spec.bookmarks => {
                if tx.send(bookmark(spec.res, cursor, false)).await.is_err() {
                    return;
                }
            }
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = shutdown.changed() => return,
        }
    }
}
