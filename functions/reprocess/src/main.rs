//! The reprocess Lambda: wiring only. Configuration, the SQS client and the settings are built
//! once per cold start and handed to the handler by reference.

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

use reprocess::handler::{self, Settings};
use reprocess::queues::Sqs;

#[tokio::main]
async fn main() -> Result<(), Error> {
    dms2delta::bootstrap::init_tracing();
    let config = dms2delta::bootstrap::load_config_from_env().await?;
    let settings = Settings::from_env(|k| std::env::var(k).ok())?;
    let aws = aws_config::load_from_env().await;
    let queues = Arc::new(Sqs::new(aws_sdk_sqs::Client::new(&aws)));
    let state = handler::State::new(Arc::new(config), queues, settings);
    let state = &state;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        handler::handle(state, event.payload).await
    }))
    .await
}
