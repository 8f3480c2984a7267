//! The decode Lambda: wiring only. Configuration and storage clients are built once per cold
//! start and handed to the handler by reference.

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

use decode::handler;

#[tokio::main]
async fn main() -> Result<(), Error> {
    dms2delta::bootstrap::init_tracing();
    let config = dms2delta::bootstrap::load_config_from_env().await?;
    let state = handler::State::new(Arc::new(config));
    let state = &state;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = dms2delta::deadline::Deadline::from_epoch_millis(event.context.deadline);
        handler::handle_until(state, event.payload, deadline).await
    }))
    .await
}
