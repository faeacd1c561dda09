//! Leases: one holder at a time, and a takeover after expiry fences the old holder.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;

use crate::harness::{Harness, unique, until_past};

pub async fn one_lease_holder_at_a_time_and_takeover_fences(h: Harness) {
    const CONTENDERS: usize = 8;
    const TRIES: usize = 6;
    let name = unique("primary");
    let inside = Arc::new(AtomicUsize::new(0));
    let granted = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..CONTENDERS).map(|i| {
        let (client, name, inside, granted) = (
            h.client.clone(),
            name.clone(),
            inside.clone(),
            granted.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..TRIES {
                match client
                    .acquire(&name, &format!("worker-{i}"), Duration::from_secs(30))
                    .await
                {
                    Ok(lease) => {
                        assert_eq!(
                            inside.fetch_add(1, Ordering::SeqCst),
                            0,
                            "two holders at once"
                        );
                        granted.lock().await.push(lease.token);
                        tokio::task::yield_now().await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                        client.release(&lease).await.unwrap();
                    }
                    Err(e) if e.is_conflict() => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
    });
    futures::future::try_join_all(tasks).await.unwrap();
    let tokens = granted.lock().await.clone();
    assert!(!tokens.is_empty());
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not increasing: {tokens:?}"
    );

    // Takeover after expiry: the new holder's token is larger, the old one is fenced off.
    let takeover = unique("lock");
    // Long enough to outlast the calls below however slow; shortened by the renewal.
    let a = h
        .client
        .acquire(&takeover, "a", Duration::from_secs(60))
        .await
        .unwrap();
    let again = h
        .client
        .acquire(&takeover, "a", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        again.token, a.token,
        "re-acquiring what one holds keeps the token"
    );
    let held = h
        .client
        .acquire(&takeover, "b", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(held.is_conflict(), "{held}");
    let a = h
        .client
        .renew(&again, Duration::from_millis(300))
        .await
        .unwrap();
    until_past(a.expires_at).await;
    let b = h
        .client
        .acquire(&takeover, "b", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(b.token > a.token, "{b:?} after {a:?}");
    assert!(
        h.client
            .renew(&a, Duration::from_secs(30))
            .await
            .unwrap_err()
            .is_conflict()
    );
    assert!(h.client.release(&a).await.unwrap_err().is_conflict());
    h.client.release(&b).await.unwrap();
    let c = h
        .client
        .acquire(&takeover, "a", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(c.token > b.token, "release keeps the counter");
}
