//! The commit Lambda: wiring only. Configuration, storage clients and the optional Glue client
//! are built once per cold start and handed to the handler by reference.

use std::sync::Arc;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

use commit::glue::Glue;
use commit::handler;
use dms2delta::catalog::CatalogSync;

#[tokio::main]
async fn main() -> Result<(), Error> {
    dms2delta::bootstrap::init_tracing();
    let config = dms2delta::bootstrap::load_config_from_env().await?;
    let mut state = handler::State::new(Arc::new(config));
    // Registration in the Glue Data Catalog is on when the stack names a database.
    if let Some(database) = std::env::var("GLUE_DATABASE").ok().filter(|d| !d.trim().is_empty()) {
        let aws = aws_config::load_from_env().await;
        let glue = Arc::new(Glue::new(aws_sdk_glue::Client::new(&aws)));
        state = state.with_catalog(CatalogSync::new(glue, database.trim()));
    }
    let state = &state;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let deadline = dms2delta::deadline::Deadline::from_epoch_millis(event.context.deadline);
        handler::handle_until(state, event.payload, deadline).await
    }))
    .await
}
