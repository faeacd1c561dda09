//! `fabric up`: every component of the fabric in this process, on loopback, until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::config::ServiceConfig;
use common::shutdown::Shutdown;
use tokio::net::TcpListener;

/// Where the fabric keeps queues and the object store.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// redb files in the data directory: one machine, no AWS needed.
    Embedded,
    /// SQS and DynamoDB (the object store and the registry) through
    /// aws-config's default chain (credentials, region, and
    /// `AWS_ENDPOINT_URL_*` for emulators).
    Aws,
}

/// Options of `fabric up`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where queues, the object store and the control plane's registry live.
    #[arg(
        long,
        value_enum,
        env = "FABRIC_UP_BACKEND",
        default_value = "embedded"
    )]
    backend: Backend,
    /// With `--backend aws`: the prefix of every SQS queue, and of the
    /// DynamoDB tables (`{prefix}objectstore`, `{prefix}registry`), so
    /// fabrics sharing an account stay apart (at most 16 letters, digits or `-`).
    #[arg(long, env = "FABRIC_AWS_PREFIX", default_value = "fabric-")]
    aws_prefix: String,
    /// With `--backend aws`: the KMS key that wraps the master key versions
    /// and encrypts the queues (id, ARN or alias); by default the stack's
    /// alias `alias/{prefix}master`, created with its key when missing. A
    /// data directory that already holds a plain master key file keeps it.
    #[arg(long, env = "FABRIC_KMS_KEY_ID")]
    kms_key_id: Option<String>,
    /// Availability zones (labels; each gets its own loopback range).
    #[arg(long, value_delimiter = ',', default_value = "a,b,c")]
    azs: Vec<String>,
    /// Deploy the demo apps (examples/hello.yaml and examples/orders.yaml, two workers each) once the fabric is up.
    #[arg(long)]
    demo: bool,
    /// Port of the load balancer's data path: apps answer at `{app}.{domain}:PORT`.
    #[arg(long, env = "FABRIC_PROXY_PORT", default_value_t = 8080)]
    proxy_port: u16,
    /// POST every event (worker down/up/moved, AZ, deploy steps) as JSON to this URL.
    #[arg(long, env = "FABRIC_EVENTS_WEBHOOK")]
    events_webhook: Option<String>,
    /// The domain apps answer under.
    #[arg(long, env = "FABRIC_DOMAIN", default_value = "fabric.localhost")]
    domain: String,
}

/// The demo apps `--demo` deploys: an echo, and the reliability pattern.
const HELLO: &str = include_str!("../../examples/hello.yaml");
const ORDERS: &str = include_str!("../../examples/orders.yaml");

async fn deploy_demo(url: &str, key: &str, proxy: SocketAddr) -> anyhow::Result<()> {
    let client = control_plane::client::Client::new(url, key);
    let deploy = |manifest: &str, size, persistent_queues| control_plane::model::DeployRequest {
        persistent_queues,
        ..control_plane::model::DeployRequest::of(manifest, 2, size)
    };
    let hello = client.deploy(&deploy(HELLO, 0.1, false)).await?;
    let orders = client.deploy(&deploy(ORDERS, 0.2, true)).await?;
    for app in [&hello, &orders] {
        println!(
            "Demo app {} v{} is serving on {}/{} workers ({} queues):",
            app.app.name,
            app.app.version,
            app.ready,
            app.app.workers,
            if app.app.persistent_queues {
                "persistent, encrypted"
            } else {
                "transient"
            }
        );
        for w in client.workers(&app.app.name).await? {
            println!("  {:<9} AZ {}  {}", w.id, w.az, w.url);
        }
    }
    println!("Try:");
    println!("  curl {}/hello/you", hello.url);
    println!(
        "  curl -X POST -H 'content-type: application/json' -d '{{\"orderId\": \"42\"}}' {}/orders",
        orders.url
    );
    println!("  curl {}/orders/42", orders.url);
    println!("  (any client: curl -H 'Host: hello.<domain>' http://{proxy}/hello/you)");
    Ok(())
}

/// Starts every component, prints where each answers, and runs until a signal;
/// then drains and stops everything it started, workers included.
pub async fn run(args: Args, data_dir: PathBuf) -> anyhow::Result<()> {
    let aws = args.backend == Backend::Aws;
    let mut config: ServiceConfig = ServiceConfig {
        data_dir: data_dir.clone(),
        fabric_name: args.aws_prefix.clone(),
        // The quick path: whatever is missing is created.
        create_resources: true,
        ..ServiceConfig::default()
    };
    common::secret_file::make_private(&data_dir)
        .map_err(|e| anyhow::anyhow!("data directory {}: {e}", data_dir.display()))?;
    // With AWS, the fabric's KMS key encrypts the queues (SSE-KMS) and
    // wraps the master key versions.
    let mut kms_key = None;
    if aws {
        let alias = format!("alias/{}master", args.aws_prefix);
        let key = args.kms_key_id.clone().unwrap_or(alias);
        let kms = common::kms::Kms::new(&key, &args.aws_prefix).await;
        let arn = kms
            .ensure_key()
            .await
            .unwrap_or_else(|e| common::secrets::KeyringError::from(e).exit());
        if !plain_master_key(&data_dir) {
            config.kms_key_id = Some(arn.clone());
        }
        kms_key = Some(arn);
    }
    let keyring = common::secrets::load_keyring(&config)
        .await
        .unwrap_or_else(|e| e.exit());
    common::secrets::token_key(&config).unwrap_or_else(|e| e.exit());

    let shutdown = Shutdown::new(Duration::from_secs(10));
    shutdown.on_signals();
    // The data path binds first, so a taken port stops `up` before anything starts.
    let proxy_http = TcpListener::bind((config.listen.ip(), args.proxy_port))
        .await
        .map_err(|e| anyhow::anyhow!("lb-proxy: cannot listen on port {}: {e}", args.proxy_port))?;
    let proxy_addr = proxy_http.local_addr()?;
    let mut lines = Vec::new();
    let mut urls = Vec::new();
    {
        let listener = TcpListener::bind(config.listen).await?;
        lines.push(ops_line(queue_svc::NAME, listener.local_addr()?));
        urls.push(format!("http://{}", listener.local_addr()?));
        let settings = queue_svc::settings::Settings {
            backend: if aws {
                queue_svc::settings::BackendKind::Sqs
            } else {
                queue_svc::settings::BackendKind::Embedded
            },
            sqs_prefix: args.aws_prefix.clone(),
            sqs_kms_key: kms_key.clone(),
            ..Default::default()
        };
        let (config, sd) = (config.with_settings(settings), shutdown.clone());
        shutdown.spawn(queue_svc::NAME, async move {
            queue_svc::run(config, listener, sd).await
        });
    }
    {
        let listener = TcpListener::bind(config.listen).await?;
        lines.push(ops_line(objectstore_svc::NAME, listener.local_addr()?));
        urls.push(format!("http://{}", listener.local_addr()?));
        let settings = objectstore_svc::Settings {
            backend: if aws {
                objectstore_svc::BackendKind::DynamoDb
            } else {
                objectstore_svc::BackendKind::Embedded
            },
            table: format!("{}objectstore", args.aws_prefix),
        };
        let (config, sd) = (config.with_settings(settings), shutdown.clone());
        shutdown.spawn(objectstore_svc::NAME, async move {
            objectstore_svc::run(config, listener, sd).await
        });
    }

    let proxy_admin = TcpListener::bind(config.listen).await?;
    let admin_addr = proxy_admin.local_addr()?;
    lines.push(ops_line(lb_proxy::NAME, admin_addr));
    {
        // Anything else an operator set (`FABRIC_*`) stands.
        let base: lb_proxy::Settings = common::config::load(None).unwrap_or_else(|e| e.exit());
        let settings = lb_proxy::Settings {
            proxy_listen: proxy_addr,
            domain: args.domain.clone(),
            ..base
        };
        let listeners = lb_proxy::Listeners {
            admin: proxy_admin,
            http: proxy_http,
            https: None,
        };
        let (config, sd) = (config.with_settings(settings), shutdown.clone());
        shutdown.spawn(lb_proxy::NAME, async move {
            lb_proxy::serve(config, listeners, sd).await
        });
    }

    let listener = TcpListener::bind(config.listen).await?;
    let cp_url = format!("http://{}", listener.local_addr()?);
    // Anything else an operator set (`FABRIC_TENANT_QUOTA__APPS`, ...) stands.
    let cp_base: control_plane::Settings = common::config::load(None).unwrap_or_else(|e| e.exit());
    let cp_config = config.with_settings(control_plane::Settings {
        azs: args.azs.clone(),
        domain: args.domain.clone(),
        proxy_port: proxy_addr.port(),
        // Every route change goes to the load balancer at once.
        routes_push: vec![format!("http://{admin_addr}/routes")],
        queue_url: Some(urls[0].clone()),
        objectstore_url: Some(urls[1].clone()),
        events_webhook: args.events_webhook.clone(),
        registry_table: aws.then(|| format!("{}registry", args.aws_prefix)),
        // Apps call apps through the load balancer's public data port.
        egress_allow: [proxy_addr.to_string()]
            .into_iter()
            .chain(cp_base.egress_allow.iter().cloned())
            .collect(),
        ..cp_base
    });
    let admin_key = control_plane::admin_key(&data_dir)?;
    // A fabric without its control plane is of no use: if it cannot start
    // (say, its registry cannot be opened), everything stops and says why.
    let cp_failed = std::sync::Arc::new(std::sync::OnceLock::new());
    {
        let (sd, failed) = (shutdown.clone(), cp_failed.clone());
        shutdown.spawn(control_plane::NAME, async move {
            let result = control_plane::run(cp_config, listener, sd.clone()).await;
            if let Err(e) = &result {
                let _ = failed.set(e.to_string());
                sd.trigger();
            }
            result
        });
    }
    let url_file = data_dir.join(crate::cli::URL_FILE);
    std::fs::write(&url_file, format!("{cp_url}\n"))?;

    println!(
        "Worker Fabric is up (data in {}, master key version {}{}; queues, object store and registry: {}).",
        data_dir.display(),
        keyring.newest_version(),
        match &config.kms_key_id {
            Some(key) => format!(" wrapped by KMS key {key}"),
            // Kept so that what it sealed stays readable.
            None if aws => " from the plain key file this fabric already had".to_string(),
            None => String::new(),
        },
        if aws { "SQS and DynamoDB" } else { "embedded" }
    );
    println!("  control-plane    {cp_url}  (the API `fabric apps ...` talks to)");
    println!("  console          {cp_url}/console  (sign in with the admin API key below)");
    for line in &lines {
        println!("{line}");
    }
    println!(
        "Apps answer through the load balancer on {proxy_addr} as {{app}}.{} (or with that Host header).",
        args.domain
    );
    println!(
        "Admin API key: in {} (readable by you only); `fabric` commands on this machine use it for this fabric.",
        data_dir.join(control_plane::ADMIN_KEY_FILE).display()
    );
    if args.demo
        && let Err(e) = deploy_demo(&cp_url, &admin_key, proxy_addr).await
    {
        eprintln!("fabric: the demo app did not deploy: {e}");
    }
    println!("Other `fabric` commands on this machine find this fabric by themselves, e.g.:");
    println!("  fabric apps deploy examples/hello.yaml --workers 2 --size 0.1");
    println!(
        "  fabric apps deploy examples/orders.yaml --workers 2 --size 0.2 --persistent-queues"
    );
    println!("Press Ctrl-C to stop.");
    shutdown.triggered().await;
    let clean = shutdown.drain().await;
    let _ = std::fs::remove_file(&url_file);
    if let Some(e) = cp_failed.get() {
        anyhow::bail!("the control plane stopped: {e}");
    }
    println!(
        "Worker Fabric stopped{}.",
        if clean { "" } else { " (grace period expired)" }
    );
    Ok(())
}

/// Whether the fabric already has a plain master key (its file in the data
/// directory, or `FABRIC_MASTER_KEY`) and no KMS-wrapped one: records sealed
/// under it would not open with a new KMS keyring, so it is kept.
fn plain_master_key(data_dir: &std::path::Path) -> bool {
    let wrapped = data_dir.join(common::kms::WRAPPED_FILE).exists();
    let plain = data_dir.join(common::secrets::MASTER_KEY_FILE).exists()
        || std::env::var_os(common::secrets::MASTER_KEY_ENV).is_some();
    plain && !wrapped
}

fn ops_line(name: &str, addr: SocketAddr) -> String {
    format!("  {name:<16} http://{addr}  (/healthz /readyz /metrics)")
}
