//! The steps of the election scenario: two agents compete for one Lease, only the holder writes
//! status, and a takeover happens only after a release, with no status written while nobody
//! leads.

use std::net::SocketAddr;

use anyhow::{ensure, Context as _, Result};
use fake_apiserver::{FakeApiServer, Verb};
use xdp_ingress_tests::{
    kube::{
        http_addr, ingress_ips, lease_holder, objects::OTHER_CLASS, served_by, settle,
        InProcessRunner,
    },
    proxy::clients::pooled,
};

use crate::{change_class, ours, NS};

/// Where the agents compete for the Lease.
pub(crate) const LEASE_NS: &str = "xk-lease";

/// An Ingress of ours for `<name>.example`.
pub(crate) fn ours_for(name: &str) -> serde_json::Value {
    ours(name, &format!("{name}.example"))
}

/// The first agent leads and writes status; returns its identity.
pub(crate) async fn a_leads_and_writes_status(
    server: &FakeApiServer,
    published: &Option<Vec<String>>,
) -> Result<String> {
    settle("A leads and writes status", async || {
        ensure!(lease_holder(server, LEASE_NS)?.is_some(), "no holder");
        ensure!(
            ingress_ips(server, NS, "one")? == *published,
            "one has no status"
        );
        Ok(())
    })
    .await?;
    let first = lease_holder(server, LEASE_NS)?.context("no holder")?;

    Ok(first)
}

/// Both agents serve each new Ingress; only the leader patches its status, once.
pub(crate) async fn a_change_while_both_run_is_written_once(
    server: &FakeApiServer,
    a: &InProcessRunner,
    b: &InProcessRunner,
    first: &str,
    published: &Option<Vec<String>>,
) -> Result<()> {
    let (http_a, http_b) = (http_addr(a)?, http_addr(b)?);
    let client = pooled();
    for name in ["two", "three"] {
        server.apply(&ours_for(name))?;
        let host = format!("{name}.example");
        let (client, host) = (&client, &host);
        let both_serve = |proxy: SocketAddr| {
            async move || -> Result<()> {
                ensure!(served_by(client, proxy, host).await? == "web");
                ensure!(
                    ingress_ips(server, NS, name)? == *published,
                    "no status yet"
                );
                Ok(())
            }
        };
        tokio::try_join!(
            settle("A serves it", both_serve(http_a)),
            settle("B serves it", both_serve(http_b)),
        )?;
    }
    // Both agents have synced past the status of "two" (same watch, "three" came after it).
    let patches_two = server
        .requests_for(Verb::Patch, "ingresses")
        .into_iter()
        .filter(|r| r.name.as_deref() == Some("two"))
        .count();
    ensure!(
        patches_two == 1,
        "two agents, one leader: {patches_two} status PATCHes of Ingress two"
    );
    ensure!(
        lease_holder(server, LEASE_NS)?.as_deref() == Some(first),
        "the Lease changed hands while its holder ran"
    );

    Ok(())
}

/// When the leader stops it releases the Lease; the other takes it only then, and no status is
/// written while nobody leads.
pub(crate) async fn b_takes_over_after_a_releases(
    server: &FakeApiServer,
    a: InProcessRunner,
    first: &str,
    published: &Option<Vec<String>>,
) -> Result<()> {
    let mark = server.requests().len();
    a.stop().await?;
    ensure!(
        lease_holder(server, LEASE_NS)?.as_deref() != Some(first),
        "A stopped but still holds the Lease"
    );
    server.apply(&ours_for("four"))?;
    settle("B takes over and writes status", async || {
        let holder = lease_holder(server, LEASE_NS)?;
        ensure!(
            holder.is_some() && holder.as_deref() != Some(first),
            "holder {holder:?}"
        );
        ensure!(
            ingress_ips(server, NS, "four")? == *published,
            "four has no status"
        );
        Ok(())
    })
    .await?;
    let second = lease_holder(server, LEASE_NS)?.context("no holder")?;
    let log = server.requests().split_off(mark);
    let lease_update = |needle: Option<&str>| {
        log.iter().position(|r| {
            r.is(Verb::Update, "leases")
                && match needle {
                    Some(identity) => r.body.contains(identity),
                    None => !r.body.contains("holderIdentity"),
                }
        })
    };
    let released = lease_update(None).context("no release of the Lease in the request log")?;
    let acquired = lease_update(Some(&second)).context("no Lease update by B")?;
    ensure!(released < acquired, "B took the Lease before A released it");
    let leaderless: Vec<_> = log[released..acquired]
        .iter()
        .filter(|r| r.is(Verb::Patch, "ingresses"))
        .collect();
    ensure!(
        leaderless.is_empty(),
        "status written while nobody held the Lease: {leaderless:?}"
    );
    let first_four = log
        .iter()
        .position(|r| r.is(Verb::Patch, "ingresses") && r.name.as_deref() == Some("four"))
        .context("no PATCH of four")?;
    ensure!(first_four > acquired, "four was patched before B led");

    Ok(())
}

/// The new leader clears the status of an Ingress that stops being ours and writes a new one's.
pub(crate) async fn new_leader_keeps_status_right(
    server: &FakeApiServer,
    published: &Option<Vec<String>>,
) -> Result<()> {
    change_class(server, "one", OTHER_CLASS)?;
    server.apply(&ours_for("five"))?;
    settle("B clears and writes status", async || {
        ensure!(
            ingress_ips(server, NS, "one")? == Some(Vec::new()),
            "one not cleared"
        );
        ensure!(
            ingress_ips(server, NS, "five")? == *published,
            "five has no status"
        );
        Ok(())
    })
    .await?;
    Ok(())
}
