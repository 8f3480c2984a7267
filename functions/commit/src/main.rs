//! The commit Lambda: wiring only. Configuration and storage clients are built once per cold
//! start and handed to the handler by reference.

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

use commit::handler;

#[tokio::main]
async fn main() -> Result<(), Error> {
    dms2delta::bootstrap::init_tracing();
    let config = dms2delta::bootstrap::load_config_from_env().await?;
    let state = handler::State::new(Arc::new(config));
    let state = &state;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        handler::handle(state, event.payload).await
    }))
    .await
}
