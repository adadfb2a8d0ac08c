//! LIST: selectors, `limit`/`continue` paging and the 410 Gone of a token or an exact
//! resourceVersion older than the compaction point.

use serde_json::{json, Value};

use super::{call::Call, lock};
use crate::{resources::RESOURCES, store::ApiError};

impl Call<'_> {
    pub(super) fn list(&self) -> Result<Value, ApiError> {
        let def = &RESOURCES[self.res];
        let sel = self.selector()?;
        let limit: usize = self.q.number("limit")?.unwrap_or(0);
        let store = lock(&self.shared.store);
        if self.q.get("resourceVersionMatch") == Some("Exact") {
            let rv: u64 = self.q.number("resourceVersion")?.unwrap_or(0);
            if rv < store.compacted_before {
                return Err(ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    store.compacted_before
                )));
            }
        }
        let (rv, after) = match self.q.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let mut parts = token.splitn(3, '/');
                let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(ApiError::bad_request(format!(
                        "invalid continue token {token:?}"
                    )));
                };
                let rv: u64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid continue token {token:?}"))
                })?;
                if rv < store.compacted_before {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some((ns.to_string(), name.to_string())))
            }
            None => (store.rv, None),
        };
        let items: Vec<_> = store
            .list(self.res, self.list_ns(), &sel)
            .into_iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
            .collect();
        let mut meta = json!({"resourceVersion": rv.to_string()});
        let page: Vec<Value> = if limit > 0 && items.len() > limit {
            let last = &items[limit - 1].0;
            meta["continue"] = json!(format!("{rv}/{}/{}", last.0, last.1));
            meta["remainingItemCount"] = json!(items.len() - limit);
            items[..limit].iter().map(|(_, o)| (*o).clone()).collect()
        } else {
            items.iter().map(|(_, o)| (*o).clone()).collect()
        };
        Ok(json!({
            "kind": format!("{}List", def.kind),
            "apiVersion": def.api_version(),
            "metadata": meta,
            "items": page,
        }))
    }
}
