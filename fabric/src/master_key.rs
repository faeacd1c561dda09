//! `fabric master-key add`: a new master key version from KMS, added to the fabric's wrapped keyring (a rotation).

use std::path::PathBuf;

/// What `fabric master-key` does.
#[derive(clap::Subcommand, Debug)]
pub enum MasterKeyCommand {
    /// Add a master key version made by KMS to the wrapped keyring (creating
    /// it when missing). Older versions stay readable; each component seals
    /// with the new one once restarted. Needs `kms:GenerateDataKey` and
    /// `kms:Decrypt` on the key under this fabric's context (an operator's
    /// rights; the components' roles only unwrap).
    Add {
        /// The KMS key (id, ARN or alias): the stack's `KeyArn`.
        #[arg(long, env = "FABRIC_KMS_KEY_ID")]
        kms_key_id: String,
        /// The fabric's name in the encryption context: the stack's `Prefix`.
        #[arg(long, env = "FABRIC_FABRIC_NAME", default_value = "fabric-")]
        fabric_name: String,
        /// The wrapped keyring file; by default `master.key.kms` in the data directory.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// Runs a `fabric master-key` command.
pub async fn run(command: MasterKeyCommand, data_dir: PathBuf) -> anyhow::Result<()> {
    match command {
        MasterKeyCommand::Add {
            kms_key_id,
            fabric_name,
            file,
        } => {
            let path = file.unwrap_or_else(|| data_dir.join(common::kms::WRAPPED_FILE));
            let kms = common::kms::Kms::new(&kms_key_id, &fabric_name).await;
            let version = kms.add_to_file(&path).await?;
            println!(
                "Added master key version {version} to {}; restart each component to seal with it.",
                path.display()
            );
            Ok(())
        }
    }
}
