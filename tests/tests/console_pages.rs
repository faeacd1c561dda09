//! Every console page and form over HTTP, without a browser, against a
//! whole fabric: what each answers signed in and signed out, the headers
//! every answer carries, CSRF and cross-origin refusals, tenant isolation,
//! and app-written text escaped on the pages that show it.

use std::time::Duration;

use fabric_tests::fabric::{Fabric, HELLO};
use fabric_tests::until;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};

const HOSTILE: &str = "<script>alert(1)</script>";

/// A console session over plain HTTP: its cookie and CSRF token.
struct Session {
    url: String,
    http: reqwest::Client,
    cookie: String,
    csrf: String,
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..].split('"').next().unwrap_or("").to_string()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client")
}

/// Signs in with `key`: the sign-in form's token, then the form.
async fn sign_in_as(fabric: &Fabric, key: &str) -> Result<Session, (StatusCode, String)> {
    let (url, http) = (fabric.url(), client());
    let form = http
        .get(format!("{url}/console/sign-in"))
        .send()
        .await
        .expect("sign-in page");
    let pre = cookie_value(form.headers(), "fabric_console_sign_in").expect("a sign-in cookie");
    let token = csrf_of(&form.text().await.expect("the form"));
    let r = http
        .post(format!("{url}/console/sign-in"))
        .header("cookie", format!("fabric_console_sign_in={pre}"))
        .form(&[("key", key), ("csrf", &token)])
        .send()
        .await
        .expect("sign in");
    if r.status() != StatusCode::SEE_OTHER {
        return Err((r.status(), r.text().await.unwrap_or_default()));
    }
    let cookie = cookie_value(r.headers(), "fabric_console").expect("a session cookie");
    let mut s = Session {
        url,
        http,
        cookie,
        csrf: String::new(),
    };
    let (_, page) = s.get("/console/deploy").await;
    s.csrf = csrf_of(&page);
    Ok(s)
}

impl Session {
    async fn get(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("a page");
        (r.status(), r.text().await.unwrap_or_default())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("cookie", format!("fabric_console={}", self.cookie))
    }

    /// Posts `form` (with the session's token unless it has one) and returns
    /// the status, where it redirects and the flash shown there.
    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, Option<String>, String) {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        if !fields.iter().any(|(k, _)| *k == "csrf") {
            fields.push(("csrf", &self.csrf));
        }
        let r = self
            .request(reqwest::Method::POST, path)
            .form(&fields)
            .send()
            .await
            .expect("a form");
        let status = r.status();
        let to = r
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let shown = match &to {
            Some(to) => self.get(to.split('#').next().unwrap_or(to)).await.1,
            None => r.text().await.unwrap_or_default(),
        };
        (status, to, shown)
    }
}

fn deploy(fabric: &Fabric, key: &str, args: &[&str]) {
    let run = fabric.cli_env(
        &[&["apps", "deploy"][..], args].concat(),
        &[("FABRIC_TOKEN", key)],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_answer_signed_in_and_send_the_signed_out_to_sign_in() {
    let fabric = Fabric::start();
    deploy(
        &fabric,
        &fabric.admin_key(),
        &[HELLO, "--workers", "2", "--size", "0.1"],
    );
    let url = fabric.url();
    let http = client();
    for path in [
        "/console/apps",
        "/console/apps/hello",
        "/console/deploy",
        "/console/azs",
        "/console/apps/hello/progress",
    ] {
        let r = http
            .get(format!("{url}{path}"))
            .send()
            .await
            .expect("a page");
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers()[LOCATION], "/console/sign-in", "{path}");
    }
    for path in [
        "/console/apps/live",
        "/console/apps/hello/live",
        "/console/azs/live",
    ] {
        let r = http
            .get(format!("{url}{path}"))
            .send()
            .await
            .expect("a stream");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let r = http
        .get(format!("{url}/console"))
        .send()
        .await
        .expect("the root");
    assert_eq!(r.headers()[LOCATION], "/console/apps");

    let refused = sign_in_as(&fabric, "wfk_not-a-key")
        .await
        .err()
        .expect("an unknown key is refused");
    assert_eq!(refused.0, StatusCode::UNAUTHORIZED);
    assert!(refused.1.contains("unknown API key"), "{}", refused.1);

    let admin = sign_in_as(&fabric, &fabric.admin_key())
        .await
        .expect("the admin signs in");
    for (path, status, holds) in [
        ("/console/apps", StatusCode::OK, "data-app=\"hello\""),
        (
            "/console/apps/hello",
            StatusCode::OK,
            "data-worker=\"hello-1\"",
        ),
        (
            "/console/deploy",
            StatusCode::OK,
            "enctype=\"multipart/form-data\"",
        ),
        ("/console/azs", StatusCode::OK, "data-zone=\"c\""),
        (
            "/console/apps/nope",
            StatusCode::NOT_FOUND,
            "no app named nope",
        ),
        (
            "/console/apps/hello/queues/greetings",
            StatusCode::NOT_FOUND,
            "no persistent queue",
        ),
        (
            "/console/assets/nope.js",
            StatusCode::NOT_FOUND,
            "no such file",
        ),
    ] {
        let (got, page) = admin.get(path).await;
        assert_eq!(got, status, "{path}: {page}");
        assert!(page.contains(holds), "{path} shows {holds}: {page}");
        assert!(
            !page.contains("panicked") && !page.contains("RUST_BACKTRACE"),
            "{path}"
        );
    }
    let r = admin
        .request(reqwest::Method::GET, "/console/apps/hello")
        .send()
        .await
        .expect("a page");
    let h = r.headers();
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-store");
    assert!(h["server-timing"].to_str().unwrap().starts_with("app;dur="));

    let css = http
        .get(format!("{url}/console/assets/console.css"))
        .send()
        .await
        .expect("the stylesheet");
    assert_eq!(css.status(), StatusCode::OK);
    let tag = css.headers()["etag"].clone();
    let again = http
        .get(format!("{url}/console/assets/console.css"))
        .header("if-none-match", tag)
        .send()
        .await
        .expect("the stylesheet again");
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // A live stream sends the page's parts as HTML fragments.
    let mut live = admin
        .request(reqwest::Method::GET, "/console/apps/hello/live")
        .send()
        .await
        .expect("a stream");
    assert_eq!(live.status(), StatusCode::OK);
    let mut seen = String::new();
    while !seen.contains("event: workers") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), live.chunk())
            .await
            .expect("the stream sends")
            .expect("the stream reads")
            .expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("data-worker=\"hello-2\""), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_need_the_session_token_and_this_origin() {
    let fabric = Fabric::start();
    let acme = fabric.tenant("acme").await;
    deploy(&fabric, &acme, &[HELLO, "--workers", "1", "--size", "0.1"]);
    let s = sign_in_as(&fabric, &acme).await.expect("acme signs in");

    let (status, _, page) = s
        .post(
            "/console/apps/hello/scale",
            &[("workers", "2"), ("size", "0.1"), ("csrf", "forged")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    let r = s
        .request(reqwest::Method::POST, "/console/apps/hello/restart")
        .header("origin", "http://evil.example")
        .form(&[("csrf", s.csrf.as_str())])
        .send()
        .await
        .expect("a cross-origin form");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (status, _, _) = s.post("/console/sign-out", &[("csrf", "forged")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A sign-in without the form's own cookie is refused too.
    let r = client()
        .post(format!("{}/console/sign-in", fabric.url()))
        .form(&[("key", acme.as_str()), ("csrf", "made-up")])
        .send()
        .await
        .expect("a forged sign-in");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(fabric.workers("hello").len(), 1, "nothing forged was done");

    // With the token: scaled; a delete needs the name typed.
    let (status, to, page) = s
        .post(
            "/console/apps/hello/scale",
            &[("workers", "2"), ("size", "0.1")],
        )
        .await;
    assert_eq!(
        (status, to.as_deref()),
        (StatusCode::SEE_OTHER, Some("/console/apps/hello"))
    );
    assert!(page.contains("hello runs 2 workers"), "{page}");
    let (_, _, page) = s
        .post(
            "/console/apps/hello/scale",
            &[("workers", "9"), ("size", "0.1")],
        )
        .await;
    assert!(
        page.contains("workers must be 1 to 8"),
        "the API's refusal is shown: {page}"
    );
    // A canary, shown on the app's page and aborted there.
    let dir = tempfile::tempdir().expect("a temp dir");
    let v2 = dir.path().join("hello.yaml");
    std::fs::write(&v2, std::fs::read_to_string(HELLO).unwrap()).expect("a manifest");
    deploy(
        &fabric,
        &acme,
        &[
            v2.to_str().unwrap(),
            "--workers",
            "2",
            "--size",
            "0.1",
            "--canary",
            "20",
        ],
    );
    let (_, page) = s.get("/console/apps/hello").await;
    assert!(page.contains("data-canary=\"2\""), "{page}");
    assert!(page.contains("takes 20%"), "{page}");
    let (_, to, page) = s.post("/console/apps/hello/abort", &[]).await;
    assert_eq!(to.as_deref(), Some("/console/apps/hello"));
    assert!(page.contains("the canary is retired"), "{page}");
    assert!(!page.contains("data-canary"), "{page}");
    let (_, _, page) = s.post("/console/apps/hello/promote", &[]).await;
    assert!(page.contains("hello has no canary"), "{page}");

    // Autoscaling, set and turned off from the app's page.
    let (_, _, page) = s
        .post(
            "/console/apps/hello/autoscale",
            &[("action", "set"), ("min", "3"), ("max", "2"), ("cpu", "70")],
        )
        .await;
    assert!(
        page.contains("autoscaling needs 1 &lt;= min &lt;= max"),
        "{page}"
    );
    let (_, to, page) = s
        .post(
            "/console/apps/hello/autoscale",
            &[("action", "set"), ("min", "1"), ("max", "2"), ("cpu", "70")],
        )
        .await;
    assert_eq!(to.as_deref(), Some("/console/apps/hello#autoscaling"));
    assert!(
        page.contains("hello scales by itself: 1 to 2 workers on CPU 70%"),
        "{page}"
    );
    assert!(page.contains("data-autoscale=\"on\""), "{page}");
    let (_, _, page) = s
        .post("/console/apps/hello/autoscale", &[("action", "off")])
        .await;
    assert!(page.contains("hello no longer scales by itself"), "{page}");
    let (_, _, page) = s
        .post("/console/apps/hello/delete", &[("confirm", "hell")])
        .await;
    assert!(page.contains("type hello to delete it"), "{page}");
    assert!(!fabric.workers("hello").is_empty());
    let (_, to, page) = s
        .post("/console/apps/hello/delete", &[("confirm", "hello")])
        .await;
    assert_eq!(to.as_deref(), Some("/console/apps"));
    assert!(page.contains("hello is deleted"), "{page}");

    let (status, to, _) = s.post("/console/sign-out", &[]).await;
    assert_eq!(
        (status, to.as_deref()),
        (StatusCode::SEE_OTHER, Some("/console/sign-in"))
    );
    let (status, _) = s.get("/console/apps").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the session ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_reaches_only_its_own_apps_and_a_revoked_key_ends_its_session() {
    let fabric = Fabric::start();
    let acme = fabric.tenant("acme").await;
    let globex = fabric.tenant("globex").await;
    deploy(
        &fabric,
        &acme,
        &[
            HELLO,
            "--name",
            "acme-hello",
            "--workers",
            "1",
            "--size",
            "0.1",
        ],
    );
    let g = sign_in_as(&fabric, &globex).await.expect("globex signs in");
    let (_, list) = g.get("/console/apps").await;
    assert!(!list.contains("acme-hello"), "{list}");
    for path in [
        "/console/apps/acme-hello",
        "/console/apps/acme-hello/queues/x",
    ] {
        let (status, page) = g.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!page.contains("data-worker"), "{page}");
    }
    for (path, form) in [
        (
            "/console/apps/acme-hello/delete",
            vec![("confirm", "acme-hello")],
        ),
        ("/console/apps/acme-hello/restart", vec![]),
        (
            "/console/apps/acme-hello/properties",
            vec![("action", "set"), ("name", "x"), ("value", "y")],
        ),
        ("/console/apps/acme-hello/rollback", vec![("to", "1")]),
    ] {
        let (_, _, page) = g.post(path, &form).await;
        assert!(page.contains("no app named acme-hello"), "{path}: {page}");
    }
    let (status, _) = g.get("/console/azs").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "zones are the admin's");
    let (_, _, page) = g.post("/console/azs/a/fail", &[]).await;
    assert!(page.contains("only the admin"), "{page}");
    let mut live = g
        .request(reqwest::Method::GET, "/console/apps/acme-hello/live")
        .send()
        .await
        .expect("a stream");
    let body = tokio::time::timeout(Duration::from_secs(10), async {
        let mut all = String::new();
        while let Ok(Some(c)) = live.chunk().await {
            all.push_str(&String::from_utf8_lossy(&c));
        }
        all
    })
    .await
    .expect("another tenant's app's stream ends at once");
    assert!(!body.contains("data-worker"), "{body}");
    assert_eq!(
        fabric.workers("acme-hello").len(),
        1,
        "acme's app is untouched"
    );

    // acme's key revoked: its console session ends at its next page.
    let a = sign_in_as(&fabric, &acme).await.expect("acme signs in");
    let own = control_plane::client::Client::new(&fabric.url(), &acme);
    let first = own
        .keys()
        .await
        .expect("acme's keys")
        .into_iter()
        .find(|k| k.current)
        .expect("its key");
    let second = own
        .create_key(&control_plane::access::NewKey::default())
        .await
        .expect("a second key");
    control_plane::client::Client::new(&fabric.url(), &second.api_key)
        .revoke_key(&first.id)
        .await
        .expect("the first key revoked");
    let (status, _) = a.get("/console/apps").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _) = a.get("/console/apps").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the session is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_app_writes_is_shown_escaped_and_secrets_never() {
    let fabric = Fabric::start();
    let dir = tempfile::tempdir().expect("a temp dir");
    let manifest = dir.path().join("loud.yaml");
    std::fs::write(
        &manifest,
        format!(
            "name: loud\nflows:\n  - name: shout\n    source: {{ http: {{ method: GET, path: /shout }} }}\n    steps:\n      - log: '\"{HOSTILE}\"'\n      - respond: {{ status: 200, body: '\"ok\"' }}\n"
        ),
    )
    .expect("the manifest");
    let admin = fabric.admin_key();
    deploy(
        &fabric,
        &admin,
        &[
            manifest.to_str().unwrap(),
            "--workers",
            "1",
            "--size",
            "0.1",
            "--property",
            &format!("banner={HOSTILE}"),
            "--secure-property",
            "password=hunter2-marker",
        ],
    );
    let r = reqwest::Client::new()
        .get(format!("http://{}/shout", fabric.proxy))
        .header("host", "loud.fabric.localhost")
        .send()
        .await
        .expect("a request");
    assert_eq!(r.status(), 200);
    let s = sign_in_as(&fabric, &admin)
        .await
        .expect("the admin signs in");
    let page = until(
        "the app's log line on its page",
        Duration::from_secs(30),
        async || {
            let (_, page) = s.get("/console/apps/loud?grep=alert").await;
            if page.contains("&lt;script&gt;alert(1)&lt;/script&gt;")
                && page.matches("alert(1)").count() >= 2
            {
                Ok(page)
            } else {
                Err(page.len())
            }
        },
    )
    .await;
    assert!(
        !page.contains(HOSTILE),
        "no app-written markup reaches the page"
    );
    assert!(
        !page.contains("hunter2-marker"),
        "a secure property never shows"
    );
    assert!(page.contains("********"));
    let (_, _, shown) = s
        .post(
            "/console/apps/loud/properties",
            &[
                ("action", "set"),
                ("name", "password"),
                ("value", "other-marker"),
                ("secure", "on"),
            ],
        )
        .await;
    assert!(shown.contains("secure property password set"), "{shown}");
    assert!(!shown.contains("other-marker"));
}
