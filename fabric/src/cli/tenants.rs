//! The admin's `tenants` commands and every tenant's `keys` commands.

use std::process::ExitCode;

use clap::Subcommand;
use control_plane::access::{self, KeyInfo, NewKey, TenantInfo};

use super::{Output, Target, done, exit, fail, print};

/// `fabric tenants ...` (the admin key only).
#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Create a tenant and print its first API key (once); a tenant that
    /// exists is given another key.
    Create {
        /// The tenant: a DNS label (lowercase letters, digits, inner hyphens).
        name: String,
    },
    /// List tenants: name, created, apps, keys.
    List,
    /// Delete a tenant and all its keys; refused while it owns apps, unless
    /// `--force`, which deletes them first (their data purged).
    Delete {
        /// The tenant.
        name: String,
        /// Delete the tenant's apps too (as `fabric apps delete` does).
        #[arg(long)]
        force: bool,
    },
}

/// `fabric keys ...` (any tenant, for its own keys).
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a new API key for your tenant and print it (once).
    Create {
        /// A name to tell it apart (letters, digits, `-`, `_`, `.`, spaces; at most 64).
        #[arg(long)]
        name: Option<String>,
        /// How long it is accepted: 1 day to 2 years (`90d`, `12w`, `1y`);
        /// by default it does not expire.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List your tenant's keys: id, name, prefix, created, expires, last used
    /// (never the keys themselves).
    List,
    /// Revoke one of your tenant's keys: it is refused from then on.
    Revoke {
        /// The key's id, as `fabric keys list` shows it.
        id: String,
    },
}

fn when(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), access::rfc3339)
}

fn tenant_rows(tenants: &Vec<TenantInfo>) -> Vec<Vec<String>> {
    let mut rows = vec![
        ["NAME", "CREATED", "APPS", "KEYS"]
            .map(String::from)
            .to_vec(),
    ];
    for t in tenants {
        rows.push(vec![
            t.name.clone(),
            when(t.created_ms),
            t.apps.to_string(),
            t.keys.to_string(),
        ]);
    }
    rows
}

fn key_rows(keys: &Vec<KeyInfo>) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "ID",
            "NAME",
            "PREFIX",
            "CREATED",
            "EXPIRES",
            "LAST USED",
            "",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for k in keys {
        let expires = match (k.expires_ms, k.expired) {
            (None, _) => "never".into(),
            (Some(at), true) => format!("{} (expired)", access::rfc3339(at)),
            (Some(at), false) => access::rfc3339(at),
        };
        rows.push(vec![
            k.id.clone(),
            k.name.clone().unwrap_or_else(|| "-".into()),
            k.prefix.clone().unwrap_or_else(|| "-".into()),
            when(k.created_ms),
            expires,
            when(k.last_used_ms),
            if k.current {
                "(this key)".into()
            } else {
                String::new()
            },
        ]);
    }
    rows
}

/// Runs a `tenants` command.
pub async fn tenants(target: Target, command: TenantsCommand) -> ExitCode {
    done(
        async {
            let client = target.client()?;
            match command {
                TenantsCommand::Create { name } => {
                    access::check_tenant_name(&name).map_err(|e| (exit::USAGE, e))?;
                    let made = client.new_tenant(&name).await.map_err(fail)?;
                    match target.output {
                        Output::Json => print(Output::Json, &made, |_| Vec::new()),
                        Output::Table => {
                            if made.created {
                                eprintln!(
                                    "Created tenant {}; its API key (id {}) is shown this once:",
                                    made.tenant, made.key_id
                                );
                            } else {
                                eprintln!(
                                    "Tenant {} exists already; a new API key for it (id {}) is shown this once:",
                                    made.tenant, made.key_id
                                );
                            }
                            println!("{}", made.api_key);
                        }
                    }
                }
                TenantsCommand::List => {
                    let list = client.tenants().await.map_err(fail)?;
                    print(target.output, &list, tenant_rows);
                }
                TenantsCommand::Delete { name, force } => {
                    access::check_tenant_name(&name).map_err(|e| (exit::USAGE, e))?;
                    let gone = client.delete_tenant(&name, force).await.map_err(fail)?;
                    match target.output {
                        Output::Json => print(Output::Json, &gone, |_| Vec::new()),
                        Output::Table => {
                            println!(
                                "tenant {} deleted: {} key(s) revoked",
                                gone.tenant, gone.keys_revoked
                            );
                            if !gone.apps_deleted.is_empty() {
                                println!(
                                    "  apps deleted, their data purged: {}",
                                    gone.apps_deleted.join(", ")
                                );
                            }
                            if !gone.purging.is_empty() {
                                println!(
                                    "  still being purged in the background: {}",
                                    gone.purging.join(", ")
                                );
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        .await,
    )
}

/// Runs a `keys` command.
pub async fn keys(target: Target, command: KeysCommand) -> ExitCode {
    done(
        async {
            let client = target.client()?;
            match command {
                KeysCommand::Create { name, expires } => {
                    // Checked here too, so a typo is told before anything is sent.
                    if let Some(n) = &name {
                        access::check_key_name(n).map_err(|e| (exit::USAGE, e))?;
                    }
                    if let Some(e) = &expires {
                        access::parse_expiry(e).map_err(|e| (exit::USAGE, e))?;
                    }
                    let made = client
                        .create_key(&NewKey { name, expires })
                        .await
                        .map_err(fail)?;
                    match target.output {
                        Output::Json => print(Output::Json, &made, |_| Vec::new()),
                        Output::Table => {
                            let expiry = made.info.expires_ms.map_or_else(
                                || "does not expire".to_string(),
                                |at| format!("expires at {}", access::rfc3339(at)),
                            );
                            eprintln!(
                                "New key {} for tenant {} ({expiry}); it is shown this once:",
                                made.info.id, made.info.tenant
                            );
                            println!("{}", made.api_key);
                        }
                    }
                }
                KeysCommand::List => {
                    let list = client.keys().await.map_err(fail)?;
                    print(target.output, &list, key_rows);
                }
                KeysCommand::Revoke { id } => {
                    client.revoke_key(&id).await.map_err(fail)?;
                    if target.output == Output::Table {
                        println!("key {id} revoked: it is refused from now on");
                    }
                }
            }
            Ok(())
        }
        .await,
    )
}
