//! The AWS SDK configuration, from aws-config's default chain.
//!
//! `AWS_ENDPOINT_URL_SQS` and `AWS_ENDPOINT_URL_DYNAMODB` point the clients at
//! the emulators; credentials and region come from the usual variables, files
//! or instance roles.

/// Loads the shared SDK configuration (region, credentials, endpoints).
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}
