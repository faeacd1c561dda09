//! The web console in a real headless Chromium, against a whole fabric
//! (`fabric up`, embedded backends): a tenant signs in, deploys through the
//! dialog, watches workers spread over zones, a queue fill and a killed
//! worker come back without reloading, changes a property and rolls back,
//! reads and redrives dead letters, has a bad manifest refused at its line,
//! and signs out; another tenant cannot reach the first one's app.
//!
//! Screenshots of the main pages go to `$FABRIC_CONSOLE_SCREENSHOTS` when
//! set (the project keeps them in `docs/console/`), else to the test
//! target's scratch directory.

use std::path::PathBuf;
use std::time::Duration;

use fabric_tests::browser::{Browser, WAIT};
use fabric_tests::fabric::Fabric;
use fabric_tests::until;

/// An app with a persistent queue whose consumer refuses every message:
/// each is retried, then dead-lettered, so the queue's counts move.
const SHOP: &str = r#"name: shop
flows:
  - name: accept
    source: { http: { method: POST, path: /orders } }
    steps:
      - publish: { queue: incoming }
      - respond: { status: 202, body: '{accepted: .id}' }
  - name: process
    source: { queue: { name: incoming, concurrency: 1, max-deliveries: 2 } }
    steps:
      - raise-error: { type: "APP:REFUSED", message: '"no stock for " + (.id | tostring)' }
"#;

/// A manifest whose line 6 names a step that does not exist.
const BROKEN: &str = "name: broken\nflows:\n  - name: hello\n    source: { http: { method: GET, path: /hi } }\n    steps:\n      - teleport: { to: mars }\n";

fn screenshots() -> PathBuf {
    std::env::var_os("FABRIC_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console"))
}

async fn sign_in(b: &Browser, fabric: &Fabric, key: &str) {
    b.open(&format!("{}/console", fabric.url())).await;
    b.find("form[action='/console/sign-in']").await;
    assert_eq!(
        b.path().await,
        "/console/sign-in",
        "signed out, the console asks to sign in"
    );
    b.type_into("#key", key).await;
    b.click(".sign-in button[type=submit]").await;
    b.wait_for("the apps page", "table.apps").await;
}

/// Whether the page was not reloaded since [`mark_page`].
async fn still_same_page(b: &Browser) -> bool {
    b.client
        .execute("return window.__fabricTest === 1;", vec![])
        .await
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

async fn mark_page(b: &Browser) {
    b.client
        .execute("window.__fabricTest = 1; return 1;", vec![])
        .await
        .expect("mark the page");
}

async fn attr(b: &Browser, css: &str, name: &str) -> Option<String> {
    let el = b.all(css).await.into_iter().next()?;
    el.attr(name).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_runs_an_app_from_the_console() {
    let fabric = Fabric::start();
    let acme = fabric.tenant("acme").await;
    let b = Browser::start().await;
    let shots = screenshots();

    sign_in(&b, &fabric, &acme).await;
    assert!(
        b.text("header.top").await.contains("acme"),
        "the page names the tenant"
    );

    // Deploy through the dialog, the manifest uploaded as a file.
    b.click("a.button.primary[href='/console/deploy']").await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("shop.yaml");
    std::fs::write(&file, SHOP).expect("write the manifest");
    b.find("#file")
        .await
        .send_keys(&file.display().to_string())
        .await
        .expect("choose the file");
    // Named in the dialog: its progress shows while the API deploys it.
    b.type_into("input[name=name]", "shop").await;
    b.find("select[name=workers]")
        .await
        .select_by_value("2")
        .await
        .expect("two workers");
    b.click("input[name=persistent]").await;
    b.click("form.deploy button[type=submit]").await;
    b.wait_for("the deploy's progress", "[data-outcome]").await;
    assert_eq!(b.path().await, "/console/apps/shop/progress");
    b.wait_for("the deploy to serve", "[data-outcome=served]")
        .await;
    b.screenshot(&shots, "deploy-progress").await;
    b.click("[data-outcome=served] a[href='/console/apps/shop']")
        .await;

    // Its two workers, in two zones.
    b.wait_for("shop's page", "section#workers").await;
    for zone in ["a", "b"] {
        b.wait_for(
            &format!("a ready worker in zone {zone}"),
            &format!("section.zone[data-zone={zone}] article.worker[data-state=ready]"),
        )
        .await;
    }
    mark_page(&b).await;

    // Traffic: every order is refused by the consumer, retried, then
    // dead-lettered; the queue's counts move on the page as it happens.
    let http = reqwest::Client::new();
    for id in 1..=5 {
        let r = http
            .post(format!("http://{}/orders", fabric.proxy))
            .header("host", "shop.fabric.localhost")
            .json(&serde_json::json!({ "id": id }))
            .send()
            .await
            .expect("an order");
        assert_eq!(r.status(), 202);
    }
    until("the dead letters counted on the page", WAIT, async || {
        let n = b.text("tr[data-queue=incoming] td[data-dlq]").await;
        (n.trim() == "5").then_some(()).ok_or(n)
    })
    .await;
    assert!(
        still_same_page(&b).await,
        "the counts moved without a reload"
    );
    b.wait_for("the depth chart drawn", "figure.chart .uplot")
        .await;
    b.screenshot(&shots, "app").await;

    // kill -9 a worker: its card goes down and comes back, without a reload.
    let card = "article.worker[data-worker='shop-1']";
    let pid: u32 = attr(&b, card, "data-pid")
        .await
        .and_then(|p| p.parse().ok())
        .expect("shop-1's pid on its card");
    fabric_tests::process::kill9_pid(pid);
    until("shop-1 back with a new process", WAIT, async || {
        let now = attr(&b, card, "data-pid").await;
        let state = attr(&b, card, "data-state").await;
        match (now, state.as_deref()) {
            (Some(p), Some("ready")) if p != pid.to_string() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        still_same_page(&b).await,
        "the card came back without a reload"
    );
    assert_eq!(attr(&b, card, "data-restarts").await.as_deref(), Some("1"));

    // A property, then a rollback to the first configuration.
    b.type_into("#properties form.inline input[name=name]", "greeting")
        .await;
    b.type_into("#properties form.inline input[name=value]", "hello")
        .await;
    b.click("#properties form.inline button[type=submit]").await;
    b.wait_text("the property set", "p.flash.done", "property greeting set")
        .await;
    b.wait_for("the property listed", "tr[data-property=greeting]")
        .await;
    b.click("tr[data-configuration='1'] button[type=submit]")
        .await;
    b.wait_text(
        "the rollback done",
        "p.flash.done",
        "rolled back to configuration #1",
    )
    .await;
    assert!(
        !b.has("tr[data-property=greeting]").await,
        "configuration #1 had no property"
    );
    assert!(
        b.text("#history").await.contains("rollback"),
        "the rollback is in the history"
    );

    // The dead letters: sealed until one is asked for, then redriven.
    b.click("tr[data-queue=incoming] td[data-dlq] a").await;
    b.wait_for("the dead letters", "table.letters").await;
    assert_eq!(b.all("tr[data-message]").await.len(), 5);
    assert!(
        !b.has("pre.body").await,
        "an encrypted queue's bodies are not shown unasked"
    );
    b.click("tr[data-message] form button").await;
    b.wait_for("one body shown", "pre.body").await;
    assert!(b.text("pre.body").await.contains("\"id\""));
    assert_eq!(b.all("pre.body").await.len(), 1, "only the one asked for");
    b.screenshot(&shots, "dead-letters").await;
    b.click("form[action$='/redrive'] button").await;
    b.wait_text(
        "the redrive done",
        "p.flash.done",
        "5 dead letters moved back",
    )
    .await;

    // A bad manifest is refused, its line shown.
    b.open(&format!("{}/console/deploy", fabric.url())).await;
    b.type_into("#manifest", BROKEN).await;
    b.click("form.deploy button[type=submit]").await;
    b.wait_for("the refusal", "div.flash.refused").await;
    let refusal = b.text("div.flash.refused").await;
    assert!(refusal.contains("line 6"), "{refusal}");
    b.find("li.refused[data-line='6']").await;
    assert!(b.text("li.refused").await.contains("teleport"));
    b.screenshot(&shots, "deploy-refused").await;
    let apps = fabric.cli(&["apps", "list", "--output", "json"]);
    assert!(!apps.stdout.contains("broken"), "nothing was deployed");

    // Sign out: the console asks to sign in again.
    b.click(".who button[type=submit]").await;
    b.find("form[action='/console/sign-in']").await;
    b.open(&format!("{}/console/apps/shop", fabric.url())).await;
    b.find("form[action='/console/sign-in']").await;
    assert_eq!(b.path().await, "/console/sign-in");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_cannot_reach_an_app_from_the_console() {
    let fabric = Fabric::start();
    let acme = fabric.tenant("acme").await;
    let globex = fabric.tenant("globex").await;
    let run = fabric.cli_env(
        &[
            "apps",
            "deploy",
            fabric_tests::fabric::HELLO,
            "--name",
            "acme-hello",
            "--workers",
            "2",
            "--size",
            "0.1",
        ],
        &[("FABRIC_TOKEN", &acme)],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let b = Browser::start().await;
    let shots = screenshots();

    sign_in(&b, &fabric, &globex).await;
    assert!(
        !b.has("tr[data-app='acme-hello']").await,
        "globex's list has no acme app"
    );
    b.open(&format!("{}/console/apps/acme-hello", fabric.url()))
        .await;
    b.wait_for("the not-found page", "section.problem").await;
    assert!(
        b.text("section.problem")
            .await
            .contains("no app named acme-hello")
    );
    b.open(&format!(
        "{}/console/apps/acme-hello/queues/incoming",
        fabric.url()
    ))
    .await;
    b.wait_for("the not-found page", "section.problem").await;
    b.click(".who button[type=submit]").await;
    b.find("form[action='/console/sign-in']").await;

    // The admin sees every app and the zones.
    sign_in(&b, &fabric, &fabric.admin_key()).await;
    b.wait_for(
        "acme's app listed for the admin",
        "tr[data-app='acme-hello']",
    )
    .await;
    until(
        "acme-hello ready on the list",
        Duration::from_secs(30),
        async || {
            let t = b.text("tr[data-app='acme-hello'] td[data-ready]").await;
            (t.trim() == "2 / 2").then_some(()).ok_or(t)
        },
    )
    .await;
    b.screenshot(&shots, "apps").await;
    b.click("nav a[href='/console/azs']").await;
    b.wait_for("the zones", "section.zone[data-zone=c]").await;
    b.screenshot(&shots, "zones").await;

    // The zone drill: zone a fails, its worker comes up elsewhere; restored.
    b.click("section.zone[data-zone=a] form button[type=submit]")
        .await;
    b.wait_text("the drill done", "p.flash.done", "zone a: fail done")
        .await;
    b.find("section.zone[data-zone=a] .badge.state-down").await;
    fabric.wait_workers("acme-hello", "acme-hello's workers out of zone a", |ws| {
        fabric_tests::fabric::ready(ws, 2) && ws.iter().all(|w| w["az"] != "a")
    });
    b.click("section.zone[data-zone=a] form button[type=submit]")
        .await;
    b.wait_for(
        "zone a restored",
        "section.zone[data-zone=a] .badge.state-up",
    )
    .await;
    b.close().await;
}
