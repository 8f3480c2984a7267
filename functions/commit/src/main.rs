//! The commit Lambda: wiring only. The state (configuration, storage clients, the optional Glue
//! client) is built once per cold start and lent to every invocation with its deadline.

use std::sync::Arc;

use commit::glue::Glue;
use commit::handler;
use dms2delta::catalog::CatalogSync;

#[tokio::main]
async fn main() -> Result<(), dms2delta_lambda::Error> {
    let mut state = handler::State::new(dms2delta_lambda::cold_start().await?);
    // Registration in the Glue Data Catalog is on when the stack names a database.
    if let Some(database) = std::env::var("GLUE_DATABASE").ok().filter(|d| !d.trim().is_empty()) {
        let aws = aws_config::load_from_env().await;
        let glue = Arc::new(Glue::new(aws_sdk_glue::Client::new(&aws)));
        state = state.with_catalog(CatalogSync::new(glue, database.trim()));
    }
    dms2delta_lambda::serve(&state, handler::handle_until).await
}
